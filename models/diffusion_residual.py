"""What the diffusion generator diffuses: the band's residual to a deterministic mean.

Residual diffusion (CorrDiff, Mardani et al. 2024; ResShift, Yue et al. 2023): a deterministic
estimate ``mu`` of the band is computed first, and the diffusion models only
``z = (x0 - mu) / scale`` in the band, so that an early model already returns the conditional
mean and sampling adds detail. ``mu`` is one of (``--diffusion_residual``):

* ``none``: 0 (the band itself is diffused);
* ``fill``: :func:`fill_mean`, the context rows above and below the band interpolated (no
  parameters);
* ``stage1``: predict-then-refine: :class:`Stage1Net`, a small deterministic U-Net on the
  context, mask, CAM and slice ratio only, trained by the shared image losses (L1, GAN, Dice,
  edge, height); it also gives the segmentations and heights of the seven outputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.diffusion_unet import DiffusionUNet, UNetOutput
from util.geometry import band_rows

#: ``--diffusion_residual``: what the band's diffusion is a residual to.
RESIDUAL_MODES = ("none", "fill", "stage1")


def fill_mean(ctx: Tensor) -> Tensor:
    """Deterministic band mean from the context alone: every band column linearly interpolated
    between the row just above and the row just below the band (``band_rows``). (B, 1, H, W)
    with H the slice size (the band rows are those of a whole slice)."""
    h = ctx.shape[-2]
    b0, b1 = band_rows(h)
    top, bot = ctx[..., b0 - 1 : b0, :], ctx[..., b1 : b1 + 1, :]
    w = (torch.arange(h, device=ctx.device, dtype=ctx.dtype) - (b0 - 1)) / (b1 - b0 + 1)
    w = w.clamp(0.0, 1.0).reshape(1, 1, h, 1)
    return top + w * (bot - top)


class Stage1Output(NamedTuple):
    """The deterministic stage 1 on N slices (all (N, 1, H, W) unless said).

    * ``mean``: full-resolution band estimate (fill + learned correction), not clamped.
    * ``coarse``: half-resolution decoder's estimate (upsampled), not clamped.
    * ``coarse_seg``, ``fine_seg`` in [0, 1]; ``pred1_h``, ``pred2_h`` (N, 1) in [0, 1].
    """

    mean: Tensor
    coarse: Tensor
    coarse_seg: Tensor
    fine_seg: Tensor
    pred1_h: Tensor
    pred2_h: Tensor


class Stage1Net(nn.Module):
    """Predict-then-refine stage 1: a :class:`DiffusionUNet` without noise input, run at the
    fixed timestep 0 on (fill-composed context, masked context, band mask, CAM; slice ratio).
    Also the diffusion generator's segmenter (``--diffusion_heads segmenter``), on an x0
    estimate and the timestep it was estimated at.

    Its zero-initialised image heads are corrections to the fill, so an untrained stage 1
    returns :func:`fill_mean` in the band.
    """

    def __init__(self, cnum: int = 16) -> None:
        super().__init__()
        self.net = DiffusionUNet(cnum=cnum)

    def forward(
        self,
        fill: Tensor,
        masked_ct: Tensor,
        band_mask: Tensor,
        cam: Tensor,
        ratio: Tensor,
        t: Tensor | None = None,
    ) -> UNetOutput:
        """``fill``: (N, 1, H, W) image of the slice: as stage 1, the context with
        :func:`fill_mean` in the band; as the diffusion generator's segmenter, an x0 estimate
        (or the sample). ``t``: (N,) timestep of the denoiser call that estimated it (None: 0).
        The rest as :meth:`DiffusionUNet.forward`. The outputs' ``model_output`` /
        ``x0_coarse`` are the corrections to add to the fill (unused by the segmenter)."""
        if t is None:
            t = torch.zeros(fill.shape[0], dtype=torch.long, device=fill.device)
        return self.net(fill, masked_ct, band_mask, cam, t, ratio)
