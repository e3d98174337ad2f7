"""``--netG_type gan``: HealthiVert's two-stage generator (coarse + fine with attention).

Layout (``ngf = 16``, about 1.0 M parameters, as the original):

* **CoarseGenerator**: input ``[masked CT, band mask, slice_ratio plane]``; a strided
  encoder to ``S/4``, atrous convs (dilation 2, 4, 8, 16), a decoder back to ``S`` with the
  inverted CAM injected at ``S/2`` and ``S`` (HGAM, :class:`CamModulation`, or
  :class:`CamConcat` as the original with ``--cam_injection concat``); a height head
  (global pool -> FC -> sigmoid) on the bottleneck and a segmentation head (sigmoid).
* **FineGenerator**: input ``[stage-1 result composed into the context, mask, ratio]``; a
  conv branch (encoder + atrous) and a contextual-attention branch (encoder + :func:`
  contextual_attention` at ``S/4``, matched at ``S/8``), merged and decoded; a second height
  head and segmentation head. The attention's argmax gives ``offset_flow``.

Every conv is an ELU conv with spectral normalisation. Decoders upsample with sub-pixel
convs (:class:`UpConv`) and have one full-resolution conv, the output conv: narrow layers
at full resolution are what makes a 1 M-parameter generator slow on a CPU (12.4 GFLOP per
256 px forward, against the original's 17.6). Images are ``tanh``-bounded, then
composed with the input (band generated, context kept) as ``GeneratorOutput`` requires.
The whole model runs under ``torch.autocast`` (bf16 on CPU); contextual attention is
computed in fp32 and the outputs are returned in the input's dtype.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from models.generator_base import (
    GENERATORS,
    Generator,
    GeneratorInput,
    GeneratorOutput,
    SampleOutput,
    TrainingOutput,
)


class EluConv(nn.Module):
    """Spectral-normalised conv (``same`` padding) followed by ELU (or nothing)."""

    def __init__(
        self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, act: bool = True
    ) -> None:
        super().__init__()
        pad = dilation * (k - 1) // 2
        self.conv = spectral_norm(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation))
        self.act = nn.ELU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


class UpConv(nn.Module):
    """x2 upsampling conv as a sub-pixel convolution: an :class:`EluConv` at the low
    resolution with 4x the channels, then ``pixel_shuffle(2)``.

    Same FLOPs and receptive field as "nearest upsample, then 3x3 conv" (which it
    generalises), but the conv runs on a quarter of the pixels with 4x the channels, which
    a CPU runs 1.5-2x faster for these narrow layers (measured at 256 px).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = EluConv(cin, 4 * cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class CamModulation(nn.Module):
    """HGAM: spatial feature modulation by the inverted CAM, ``f * (1 + a(cam)) + b(cam)``.

    ``a`` and ``b`` are per-channel affine maps of the CAM value (one 1x1 conv), zero at
    initialisation, so the decoder starts as if there were no CAM and learns how much to
    down-weight features where the fracture classifier looked (where ``1 - CAM`` is low).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.affine = nn.Conv2d(1, 2 * channels, 1)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, feat: Tensor, cam: Tensor) -> Tensor:
        cam = F.interpolate(cam.to(feat.dtype), size=feat.shape[-2:], mode="area")
        scale, shift = self.affine(cam).chunk(2, dim=1)
        return feat * (1.0 + scale) + shift


class CamConcat(nn.Module):
    """HGAM as the original injects it: the inverted CAM (resized by nearest sampling) is
    concatenated to the features as one more channel and an :class:`EluConv` maps them back
    to ``channels``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = EluConv(channels + 1, channels)

    def forward(self, feat: Tensor, cam: Tensor) -> Tensor:
        step = cam.shape[-1] // feat.shape[-1]
        return self.conv(torch.cat([feat, cam[..., ::step, ::step].to(feat.dtype)], dim=1))


#: HGAM injection of the CAM into the coarse decoder: ``modulation`` (ours) or ``concat`` (the
#: original's extra input channel).
CAM_INJECTIONS = {"modulation": CamModulation, "concat": CamConcat}


class GanHeightHead(nn.Module):
    """Global average pool -> FC -> sigmoid: (B, C, h, w) -> (B, 1) height in [0, 1] of h2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 1)

    def forward(self, feat: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(feat.mean(dim=(2, 3))))


def _encoder(cin: int, ngf: int) -> list[nn.Module]:
    """5x5 conv at S, stride-2 to S/2, stride-2 to S/4, two convs at S/4 (4 * ngf)."""
    return [
        EluConv(cin, ngf, 5),
        EluConv(ngf, 2 * ngf, 3, 2),
        EluConv(2 * ngf, 2 * ngf),
        EluConv(2 * ngf, 4 * ngf, 3, 2),
        EluConv(4 * ngf, 4 * ngf),
        EluConv(4 * ngf, 4 * ngf),
    ]


def _atrous(ngf: int) -> list[nn.Module]:
    return [EluConv(4 * ngf, 4 * ngf, 3, dilation=d) for d in (2, 4, 8, 16)]


class _Decoder(nn.Module):
    """S/4 -> S: two convs at S/4, up-conv, conv at S/2, up-conv, output conv at S; optional
    HGAM after each up-conv (at S/2 and S).

    Returns ``(bottleneck features, image logits, seg logits)``.
    """

    def __init__(self, cin: int, ngf: int, cam_injection: str | None) -> None:
        super().__init__()
        self.s4 = nn.Sequential(EluConv(cin, 4 * ngf), EluConv(4 * ngf, 4 * ngf))
        self.up2 = UpConv(4 * ngf, 2 * ngf)
        self.s2 = EluConv(2 * ngf, 2 * ngf)
        self.up1 = UpConv(2 * ngf, ngf)
        self.head = EluConv(ngf, 2, act=False)  # image and segmentation logits
        inject = None if cam_injection is None else CAM_INJECTIONS[cam_injection]
        self.cam2 = inject(2 * ngf) if inject else None
        self.cam1 = inject(ngf) if inject else None

    def forward(self, x: Tensor, cam: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        bottleneck = self.s4(x)
        y = self.up2(bottleneck)
        if self.cam2 is not None and cam is not None:
            y = self.cam2(y, cam)
        y = self.up1(self.s2(y))
        if self.cam1 is not None and cam is not None:
            y = self.cam1(y, cam)
        img, seg = self.head(y).chunk(2, dim=1)
        return bottleneck, img, seg


class CoarseGenerator(nn.Module):
    """Stage 1. ``forward(x, cam) -> (image logits, seg logits, height)`` at full size."""

    def __init__(self, in_nc: int, ngf: int, cam_injection: str = "modulation") -> None:
        super().__init__()
        self.body = nn.Sequential(*_encoder(in_nc, ngf), *_atrous(ngf))
        self.decoder = _Decoder(4 * ngf, ngf, cam_injection)
        self.height = GanHeightHead(4 * ngf)

    def forward(self, x: Tensor, cam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        bottleneck, img, seg = self.decoder(self.body(x), cam)
        return img, seg, self.height(bottleneck)


def _fuse(score: Tensor, hs: int, ws: int, fuse_k: int) -> Tensor:
    """DeepFill's score fusion: ``score`` (B, Lk, Lq) over keys and queries of an
    ``hs`` x ``ws`` grid (``Lk = hs * ws``; queries may be a band of whole rows) is summed along
    the diagonals of a ``fuse_k`` x ``fuse_k`` identity kernel, first with positions flattened
    row-major, then column-major, so that a match scores high when its neighbours match too."""
    b, lk, lq = score.shape
    qh = lq // ws
    eye = torch.eye(fuse_k, dtype=score.dtype, device=score.device)[None, None]
    pad = fuse_k // 2
    y = F.conv2d(score[:, None], eye, padding=pad)  # row-major diagonals
    y = y.reshape(b, hs, ws, qh, ws).permute(0, 2, 1, 4, 3).reshape(b, 1, lk, lq)
    y = F.conv2d(y, eye, padding=pad)  # column-major diagonals
    return y.reshape(b, ws, hs, ws, qh).permute(0, 2, 1, 4, 3).reshape(b, lk, lq)


def _paste(columns: Tensor, qa: int, qb: int, rate: int, h: int, w: int) -> Tensor:
    """Fold the pasted ``2 rate`` x ``2 rate`` patches of the query rows ``[qa, qb)`` (columns
    (B, C (2r)^2, Nq)) into a (B, C, h, w) map, divided by 4 as the original (zero where no
    query pastes). Query ``qy`` pastes feature rows ``qy r - r/2 + [0, 2r)``."""
    half = rate // 2
    top, out_rows = qa * rate - half, (qb - qa + 1) * rate
    pasted = F.fold(columns, (out_rows, w), kernel_size=2 * rate, stride=rate, padding=(0, half))
    recon = columns.new_zeros(columns.shape[0], pasted.shape[1], h, w)
    lo, hi = max(0, top), min(h, top + out_rows)
    recon[:, :, lo:hi] = pasted[:, :, lo - top : hi - top] / 4.0
    return recon


def _offsets(
    best: Tensor, qa: int, qb: int, grid: tuple[int, int], size: tuple[int, int]
) -> Tensor:
    """(B, 2, H, W) offsets (dy, dx) in image pixels from each query of rows ``[qa, qb)`` of
    the ``grid`` (hs, ws) to its best key (``best``: (B, Nq) key indices), nearest-upsampled to
    ``size`` (H, W); zero on the other rows."""
    (hs, ws), (big_h, big_w) = grid, size
    n_rows = qb - qa
    qy = torch.arange(qa, qb, device=best.device).repeat_interleave(ws)
    qx = torch.arange(ws, device=best.device).repeat(n_rows)
    dy = (torch.div(best, ws, rounding_mode="floor") - qy).float() * (big_h / hs)
    dx = (best % ws - qx).float() * (big_w / ws)
    flow_s = torch.zeros(best.shape[0], 2, hs, ws, device=best.device)
    flow_s[:, :, qa:qb] = torch.stack([dy, dx], 1).reshape(-1, 2, n_rows, ws)
    return F.interpolate(flow_s, size=size, mode="nearest")


def contextual_attention(
    feat: Tensor,
    mask: Tensor,
    *,
    rate: int = 2,
    ksize: int = 3,
    fuse_k: int = 3,
    softmax_scale: float = 10.0,
) -> tuple[Tensor, Tensor]:
    """Contextual attention as HealthiVert-GAN (DeepFill v1) computes it, batched, each sample
    with its own mask (the original uses sample 0's mask for the whole batch).

    1. Matching at ``1 / rate``: ``small = feat[..., ::rate, ::rate]``. The mask is sampled
       (nearest, the top-left pixel of each block) onto that grid; a key patch (``ksize`` x
       ``ksize``) is background when none of its pixels is masked.
    2. Score of query q and key l = <query patch, key patch / max(|key patch|, 1e-4)>: only
       the keys are normalised, so a textured query matches more sharply.
    3. Fusion (:func:`_fuse`) of the scores along ``fuse_k`` diagonals, twice.
    4. Softmax over the keys of ``scores * valid * softmax_scale``, times ``valid`` again (as
       the original: the masked keys take part in the normalisation with score 0).
    5. Each query pastes the attention-weighted ``2 rate`` x ``2 rate`` raw patches of ``feat``
       at stride ``rate`` (a transposed convolution, ``fold``), divided by 4.
    6. Feature pixels whose block touches the hole take the result, all others keep ``feat``
       (the original replaces every pixel); for speed only the query rows that paste onto
       hole rows are computed (with two rows of margin, exact for the fusion).
    7. The argmax key of each query gives the offset (dy, dx) in image pixels.

    Args:
        feat: (B, C, h, w) features at ``1 / f`` of the image, ``h, w`` divisible by ``rate``.
        mask: (B, 1, H, W) band mask in {0, 1} at image resolution, ``H = f h``, ``W = f w``.

    Returns:
        ``(out, offset)``: (B, C, h, w) in ``feat``'s dtype; (B, 2, H, W) float offsets
        (dy, dx) in image pixels, zero outside the mask. Computed in fp32 under autocast.
    """
    b, c, h, w = feat.shape
    big_h, big_w = mask.shape[-2:]
    if rate < 2 or rate % 2 or h % rate or w % rate or big_h % h or big_w % w:
        raise ValueError(
            f"contextual_attention needs an even rate, features ({h}x{w}) divisible by "
            f"rate={rate} and a mask ({big_h}x{big_w}) a whole multiple of the features"
        )
    with torch.autocast(device_type=feat.device.type, enabled=False):
        x, m = feat.float(), mask.float()
        hs, ws = h // rate, w // rate
        pad = ksize // 2
        # Step 1: background keys, from the mask sampled on the matching grid.
        m_small = m[:, :, :: big_h // hs, :: big_w // ws]
        valid = (F.max_pool2d(m_small, ksize, 1, pad).flatten(1) == 0).float()  # (B, L)
        hole_f = F.adaptive_max_pool2d(m, (h, w))
        rows_f = torch.nonzero(hole_f.amax(dim=(0, 1, 3)) > 0).flatten()
        if rows_f.numel() == 0:
            return feat, feat.new_zeros(b, 2, big_h, big_w, dtype=torch.float32)
        # Query rows pasting onto feature rows [y0, y1), plus two rows for the fusion.
        y0, y1 = int(rows_f[0]), int(rows_f[-1]) + 1
        half = rate // 2  # padding of the raw patches: query qy pastes rows qy r - half + [0, 2r)
        qa, qb = max(0, (y0 + half + rate) // rate - 2), min(hs, (y1 - 1 + half) // rate + 1)
        ca, cb = (qa - 2, qb + 2) if qa >= 2 and qb <= hs - 2 else (0, hs)
        small = x[:, :, ::rate, ::rate]
        keys = F.unfold(small, ksize, padding=pad)  # (B, C k k, L)
        keys = keys / keys.norm(dim=1, keepdim=True).clamp_min(1e-4)
        query = F.unfold(F.pad(small, (pad,) * 4)[:, :, ca : cb + 2 * pad], ksize)
        # Steps 2-4: scores (B, L, Nq), fusion, masked softmax over the keys.
        score = _fuse(torch.bmm(keys.transpose(1, 2), query), hs, ws, fuse_k)
        score = score[:, :, (qa - ca) * ws : (qb - ca) * ws]
        attn = torch.softmax(score * valid[:, :, None] * softmax_scale, dim=1)
        attn = attn * valid[:, :, None]
        # Step 5: paste raw patches (the transposed convolution of the original).
        raw = F.unfold(x, 2 * rate, padding=half, stride=rate)  # (B, C (2r)^2, L)
        recon = _paste(torch.bmm(raw, attn), qa, qb, rate, h, w)
        out = recon * hole_f + x * (1.0 - hole_f)
        # Step 7: argmax offsets at the matching grid, scaled to image pixels.
        has_bg = valid.amax(dim=1).reshape(b, 1, 1, 1)
        flow = _offsets(attn.argmax(dim=1), qa, qb, (hs, ws), (big_h, big_w)) * has_bg * m
    return out.to(feat.dtype), flow


class FineGenerator(nn.Module):
    """Stage 2. ``forward(x, mask) -> (image logits, seg logits, height, offset_flow)``."""

    def __init__(self, in_nc: int, ngf: int) -> None:
        super().__init__()
        self.conv_branch = nn.Sequential(*_encoder(in_nc, ngf), *_atrous(ngf))
        self.attn_encoder = nn.Sequential(*_encoder(in_nc, ngf))
        self.attn_decoder = nn.Sequential(EluConv(4 * ngf, 4 * ngf), EluConv(4 * ngf, 4 * ngf))
        self.decoder = _Decoder(8 * ngf, ngf, None)
        self.height = GanHeightHead(4 * ngf)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        attended, flow = contextual_attention(self.attn_encoder(x), mask)
        merged = torch.cat([self.conv_branch(x), self.attn_decoder(attended)], dim=1)
        bottleneck, img, seg = self.decoder(merged, None)
        return img, seg, self.height(bottleneck), flow


class GanNetwork(nn.Module):
    """Both stages with typed arguments; returns the seven outputs (A geometry).

    Args:
        ngf: base width (16 in the original).
        img_size: ``S``, a multiple of 16 (the encoder downsamples by 4 and the attention
            matches at ``S/8``).
        cam_injection: HGAM in the coarse decoder, a key of :data:`CAM_INJECTIONS`.
    """

    def __init__(
        self, *, ngf: int = 16, img_size: int = 256, cam_injection: str = "modulation"
    ) -> None:
        super().__init__()
        if ngf < 1:
            raise ValueError(f"--ngf must be a positive width, got {ngf}")
        if img_size < 16 or img_size % 16:
            raise ValueError(f"--img_size must be a multiple of 16, got {img_size}")
        if cam_injection not in CAM_INJECTIONS:
            raise ValueError(f"cam_injection must be one of {list(CAM_INJECTIONS)}")
        self.img_size = img_size
        self.coarse = CoarseGenerator(3, ngf, cam_injection)
        self.fine = FineGenerator(3, ngf)

    def forward(self, inp: GeneratorInput) -> GeneratorOutput:
        ct, mask = inp.masked_ct, inp.band_mask
        if ct.dim() != 4 or ct.shape[1] != 1 or ct.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"masked_ct must be (B, 1, {self.img_size}, {self.img_size}) for --img_size "
                f"{self.img_size}, got {tuple(ct.shape)}"
            )
        if inp.slice_ratio.numel() != ct.shape[0]:
            raise ValueError(
                f"slice_ratio needs {ct.shape[0]} values, got {inp.slice_ratio.numel()}"
            )
        ratio = inp.slice_ratio.reshape(-1, 1, 1, 1).to(ct.dtype).expand_as(ct)
        context = ct * (1.0 - mask)
        img1, seg1, h1 = self.coarse(torch.cat([ct, mask, ratio], 1), inp.cam)
        x1 = torch.tanh(img1.to(ct.dtype)) * mask + context
        img2, seg2, h2, flow = self.fine(torch.cat([x1, mask, ratio], 1), mask)
        x2 = torch.tanh(img2.to(ct.dtype)) * mask + context
        return GeneratorOutput(
            coarse_seg=torch.sigmoid(seg1.to(ct.dtype)),
            fine_seg=torch.sigmoid(seg2.to(ct.dtype)),
            x_stage1=x1,
            x_stage2=x2,
            offset_flow=flow.to(ct.dtype),
            pred1_h=h1.to(ct.dtype),
            pred2_h=h2.to(ct.dtype),
        )


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@GENERATORS.register("gan")
class GanGenerator(Generator):
    """HealthiVert-GAN's generator behind the :class:`Generator` interface."""

    def __init__(
        self, *, ngf: int = 16, img_size: int = 256, cam_injection: str = "modulation"
    ) -> None:
        super().__init__()
        self.net = GanNetwork(ngf=ngf, img_size=img_size, cam_injection=cam_injection)
        # Prior-probability init of the segmentation logits (Lin et al. 2017): starting at 0.5
        # everywhere, the Dice gradient on the background is ~1e-5 per pixel and the fine
        # Dice loss stayed at 0.97 for 150 steps; starting at the prior it fell to 0.60.
        with torch.no_grad():
            self.net.coarse.decoder.head.conv.bias[1] = _logit(0.12)  # normal vertebrae
            self.net.fine.decoder.head.conv.bias[1] = _logit(0.02)  # the target vertebra

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        parser.add_argument(
            "--ngf", type=int, default=16, help="base width of the GAN generator (original 16)"
        )
        parser.add_argument(
            "--cam_injection",
            default="modulation",
            choices=list(CAM_INJECTIONS),
            help="HGAM in the coarse decoder: a zero-initialised scale-shift of the features "
            "by the CAM, or the CAM as an extra input channel of a conv (the original's)",
        )
        return parser

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> GanGenerator:
        return cls(
            ngf=int(opt.ngf),
            img_size=int(opt.img_size),
            cam_injection=getattr(opt, "cam_injection", "modulation"),
        )

    def training_forward(self, inp: GeneratorInput, target: Tensor) -> TrainingOutput:
        """One pass with gradients; ``target`` is unused (the losses live in the model)."""
        outputs = self.net(inp)
        weight = torch.ones(inp.masked_ct.shape[0], device=inp.masked_ct.device)
        return TrainingOutput(outputs=outputs, aux_losses={}, x0_weight=weight)

    def sample(
        self,
        inp: GeneratorInput,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """Deterministic: the training forward without gradients (one pass: ``steps`` and
        ``generator`` are unused)."""
        with torch.no_grad():
            return SampleOutput(outputs=self.net(inp))
