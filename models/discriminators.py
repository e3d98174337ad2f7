"""PatchGAN discriminators, the GAN objective, and HealthiVert's three discriminators.

HealthiVert judges each generated slice three times (REFERENCE section 6):

* ``D_1`` sees the whole CT slice;
* ``D_2`` sees the segmentation, binarised at 0.5 with a straight-through estimator: the
  forward pass shows D a hard {0, 1} mask like the real ones (so it cannot tell fakes by
  their soft edges), the backward pass treats the threshold as the identity so the
  generator's segmentation head still receives the adversarial gradient;
* ``D_3`` sees the vertebral body: by default the central ``d3_band_px(img_size)`` rows of
  the CT (70 at 256 px, a crop); with ``d3_region="band_columns"`` the original's region, the
  CT times the synthesis band (40 rows at 256 px) times the ``d3_band_px`` central columns,
  zero elsewhere, at full size.

As in the original, the generator's adversarial loss is the *sum of the three divided by
6* and each discriminator's loss is ``(fake + real) / 2``. Each D optionally also sees a
condition image concatenated on the channels (pix2pix's conditional D), e.g. the masked
input.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from util.geometry import band_rows, centred_rows, d3_band_px

GanMode = Literal["lsgan", "vanilla", "hinge"]
NormType = Literal["batch", "instance", "none"]
D3Region = Literal["rows", "band_columns"]
D3_REGIONS = ("rows", "band_columns")
SegRange = Literal["signed", "unit"]
SEG_RANGES = ("signed", "unit")
INIT_TYPES = ("default", "normal")


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """pix2pix's ``normal`` init (the original's discriminators): conv and linear weights
    N(0, gain), biases 0, BatchNorm scales N(1, gain) and shifts 0. ``default`` keeps
    PyTorch's. Returns ``net``."""
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type must be one of {INIT_TYPES}, got {init_type!r}")
    if init_type == "default":
        return net
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.normal_(m.weight, 0.0, gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, gain)
                nn.init.zeros_(m.bias)
    return net


def _norm_layer(norm: NormType, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")


class NLayerDiscriminator(nn.Module):
    """PatchGAN (pix2pix): ``n_layers`` stride-2 4x4 convs, one stride-1 conv, a 1-channel
    4x4 conv of logits; each output pixel judges one receptive-field patch (70 px for 3 layers).

    Args:
        input_nc: input channels.
        ndf: channels of the first conv (doubled per layer, capped at 8 * ndf).
        n_layers: stride-2 convs; the input needs at least ``3 * 2**n_layers`` rows/cols.
        norm: normalisation after every conv but the first and the last.
        use_spectral_norm: wrap every conv in spectral normalisation.
    """

    def __init__(
        self,
        *,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: NormType = "batch",
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        bias = norm != "batch"  # BatchNorm has its own shift

        def conv(cin: int, cout: int, stride: int, with_bias: bool = True) -> nn.Module:
            layer = nn.Conv2d(cin, cout, 4, stride, 1, bias=with_bias)
            return spectral_norm(layer) if use_spectral_norm else layer

        layers: list[nn.Module] = [conv(input_nc, ndf, 2), nn.LeakyReLU(0.2, True)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                conv(ndf * prev, ndf * mult, stride, bias),
                _norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(conv(ndf * mult, 1, 1))
        self.model = nn.Sequential(*layers)

    @staticmethod
    def min_input_size(n_layers: int) -> int:
        """Smallest height/width that leaves at least one output pixel."""
        # Each stride-2 conv (k4, p1) maps n -> floor(n / 2); the two stride-1 convs n -> n - 1.
        size = 3
        for _ in range(n_layers):
            size *= 2
        return size

    def forward(self, x: Tensor) -> Tensor:
        """(B, input_nc, H, W) -> (B, 1, H', W') logits (one per patch)."""
        return self.model(x)


def straight_through_binarise(prob: Tensor, threshold: float = 0.5) -> Tensor:
    """Forward: ``(prob > threshold)`` as {0, 1}; backward: identity (gradient 1).

    Args:
        prob: (B, C, H, W) probabilities in [0, 1].
    """
    hard = (prob > threshold).to(prob.dtype)
    return hard + prob - prob.detach()


class GANLoss(nn.Module):
    """The GAN objective with pix2pix semantics: ``loss(prediction, target_is_real)``.

    * ``lsgan``: MSE of the logits to 1 (real) or 0 (fake);
    * ``vanilla``: binary cross-entropy with logits;
    * ``hinge``: for D, ``relu(1 - x)`` on reals and ``relu(1 + x)`` on fakes; for G,
      ``-x`` (``target_is_real`` must then be True).

    ``reduction="none"`` returns one value per sample (mean over its patches), shape (B,).
    """

    def __init__(self, gan_mode: GanMode = "lsgan") -> None:
        super().__init__()
        if gan_mode not in ("lsgan", "vanilla", "hinge"):
            raise ValueError(f"gan_mode must be 'lsgan', 'vanilla' or 'hinge', got {gan_mode!r}")
        self.gan_mode = gan_mode

    def forward(
        self,
        prediction: Tensor,
        target_is_real: bool,
        *,
        for_discriminator: bool,
        reduction: Literal["mean", "none"] = "mean",
    ) -> Tensor:
        """Loss of (B, 1, H', W') logits; a scalar, or (B,) with ``reduction="none"``."""
        x = prediction.float()  # the loss in fp32 also under autocast
        if self.gan_mode == "lsgan":
            per_pixel = (x - float(target_is_real)).pow(2)
        elif self.gan_mode == "vanilla":
            target = torch.full_like(x, float(target_is_real))
            per_pixel = nn.functional.binary_cross_entropy_with_logits(x, target, reduction="none")
        elif for_discriminator:
            per_pixel = torch.relu(1.0 - x) if target_is_real else torch.relu(1.0 + x)
        else:
            if not target_is_real:
                raise ValueError("the hinge generator loss is defined for target_is_real=True")
            per_pixel = -x
        per_sample = per_pixel.flatten(1).mean(1)
        if reduction == "mean":
            return per_sample.mean()
        if reduction == "none":
            return per_sample
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _layers_that_fit(size: int, n_layers: int) -> int:
    while n_layers > 1 and size < NLayerDiscriminator.min_input_size(n_layers):
        n_layers -= 1
    if size < NLayerDiscriminator.min_input_size(n_layers):
        raise ValueError(f"an input of {size} px is too small for a PatchGAN discriminator")
    return n_layers


class HealthiVertDiscriminators(nn.Module):
    """D_1 (full CT), D_2 (binarised segmentation), D_3 (vertebral-body region of the CT).

    Args:
        img_size: ``S``.
        cond_nc: channels of an optional condition image concatenated to every D's input
            (0 = unconditional). D_3 sees the same region of it.
        ndf, n_layers, norm, use_spectral_norm: as :class:`NLayerDiscriminator`. D_3 uses
            fewer layers when its crop is too short for ``n_layers`` (e.g. 2 at 64 px).
        d3_region: ``rows`` crops ``d3_band_px(S)`` rows centred on ``S // 2``;
            ``band_columns`` keeps the band rows times ``d3_band_px(S)`` central columns,
            zero elsewhere, at full size (the original's).
        seg_range: D_2's input range: ``signed`` maps the binarised mask to {-1, 1} like
            the CT, ``unit`` keeps {0, 1} (the original's).
    """

    def __init__(
        self,
        *,
        img_size: int,
        cond_nc: int = 0,
        ndf: int = 64,
        n_layers: int = 3,
        norm: NormType = "batch",
        use_spectral_norm: bool = False,
        d3_region: D3Region = "rows",
        seg_range: SegRange = "signed",
    ) -> None:
        super().__init__()
        if d3_region not in D3_REGIONS:
            raise ValueError(f"d3_region must be one of {D3_REGIONS}, got {d3_region!r}")
        if seg_range not in SEG_RANGES:
            raise ValueError(f"seg_range must be one of {SEG_RANGES}, got {seg_range!r}")
        self.img_size = img_size
        self.cond_nc = cond_nc
        self.d3_region = d3_region
        self.seg_range = seg_range
        self.d3_rows = centred_rows(d3_band_px(img_size), img_size)
        region = torch.zeros(img_size, img_size)
        b0, b1 = band_rows(img_size)
        region[b0:b1, self.d3_rows[0] : self.d3_rows[1]] = 1.0
        self.register_buffer("d3_mask", region, persistent=False)
        d3_size = d3_band_px(img_size) if d3_region == "rows" else img_size
        kw = dict(ndf=ndf, norm=norm, use_spectral_norm=use_spectral_norm)
        self.D_1 = NLayerDiscriminator(
            input_nc=1 + cond_nc, n_layers=_layers_that_fit(img_size, n_layers), **kw
        )
        self.D_2 = NLayerDiscriminator(
            input_nc=1 + cond_nc, n_layers=_layers_that_fit(img_size, n_layers), **kw
        )
        self.D_3 = NLayerDiscriminator(
            input_nc=1 + cond_nc, n_layers=_layers_that_fit(d3_size, n_layers), **kw
        )

    def crop_band(self, x: Tensor) -> Tensor:
        """What D_3 sees of (B, C, S, S): (B, C, d3_band_px(S), S) rows, or the full-size
        image zero outside the band rows x central columns (``d3_region``)."""
        if x.shape[-2] != self.img_size:
            raise ValueError(f"expected {self.img_size} rows (img_size), got {x.shape[-2]}")
        if self.d3_region == "band_columns":
            return x * self.d3_mask.to(x.dtype)
        return x[..., self.d3_rows[0] : self.d3_rows[1], :]

    def _with_cond(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if (cond is None) != (self.cond_nc == 0):
            raise ValueError(f"these discriminators take cond_nc={self.cond_nc} condition channels")
        return x if cond is None else torch.cat([x, cond.to(x.dtype)], 1)

    def forward(
        self, ct: Tensor, seg: Tensor, cond: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits of D_1, D_2, D_3.

        Args:
            ct: (B, 1, S, S) CT in [-1, 1] (B geometry, after SHRM).
            seg: (B, 1, S, S) segmentation in [0, 1]; binarised here (straight-through).
            cond: (B, cond_nc, S, S) condition image, or None when ``cond_nc == 0``.
        """
        seg_hard = straight_through_binarise(seg)
        if self.seg_range == "signed":
            seg_hard = seg_hard * 2.0 - 1.0  # same [-1, 1] range as the CT
        return (
            self.D_1(self._with_cond(ct, cond)),
            self.D_2(self._with_cond(seg_hard, cond)),
            self.D_3(self.crop_band(self._with_cond(ct, cond))),
        )


def generator_gan_loss(
    discriminators: HealthiVertDiscriminators,
    criterion: GANLoss,
    fake_ct: Tensor,
    fake_seg: Tensor,
    cond: Tensor | None = None,
    *,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Generator adversarial loss: (G loss of D_1 + D_2 + D_3) / 6, as the original.

    Gradients flow into ``fake_ct`` and ``fake_seg`` (through the straight-through
    binarisation); the discriminators' parameters receive gradients too, so freeze them
    (``requires_grad_(False)``) during the generator step as pix2pix does.
    """
    logits = discriminators(fake_ct, fake_seg, cond)
    losses = [criterion(x, True, for_discriminator=False, reduction=reduction) for x in logits]
    return (losses[0] + losses[1] + losses[2]) / 6.0


def discriminator_losses(
    discriminators: HealthiVertDiscriminators,
    criterion: GANLoss,
    *,
    real_ct: Tensor,
    real_seg: Tensor,
    fake_ct: Tensor,
    fake_seg: Tensor,
    cond: Tensor | None = None,
) -> dict[str, Tensor]:
    """Each discriminator's loss ``(fake + real) / 2``: ``{"D_1": ..., "D_2": ..., "D_3": ...}``.

    The fakes are detached here (a D step must not reach the generator). Backpropagate
    ``sum(losses.values())``: the three Ds have disjoint parameters, so one optimiser over
    all of them is equivalent to three.
    """
    fake = discriminators(fake_ct.detach(), fake_seg.detach(), cond)
    real = discriminators(real_ct, real_seg, cond)
    names = ("D_1", "D_2", "D_3")
    return {
        n: 0.5
        * (criterion(f, False, for_discriminator=True) + criterion(r, True, for_discriminator=True))
        for n, f, r in zip(names, fake, real)
    }
