"""The HealthiVert image losses, as pure functions, and their weights.

Every function returns the *unweighted* loss: a scalar with ``reduction="mean"`` (mean over
the batch) or one value per sample, shape (B,), with ``reduction="none"`` (the diffusion
path weights samples by their signal-to-noise ratio). The weights of the original live in
:class:`LossWeights`; :func:`add_loss_options` exposes each as a command-line option.

How the original's total generator loss is assembled from these (HealthiVert, REFERENCE 6)::

    w.lambda_GAN * gan                                        # discriminators.py, sum / 6
  + w.lambda_L1 * two_stage_l1_loss(x1, x2, gt, band_mask)    # band-normalised, x2 included
  + w.lambda_dice_coarse * dice_loss(coarse_seg, normal_vert)
  + w.lambda_dice_fine * dice_loss(fine_seg, vert_mask)
  + w.lambda_edge * sobel_edge_loss(fine_seg, vert_mask)
  + w.lambda_height * (relative_height_loss(pred1_h, h) + relative_height_loss(pred2_h, h))
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Reduction = Literal["mean", "none"]


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the original HealthiVert-GAN (REFERENCE section 6)."""

    lambda_GAN: float = 1.0
    lambda_L1: float = 200.0
    lambda_dice_coarse: float = 10.0
    lambda_dice_fine: float = 15.0
    lambda_edge: float = 800.0
    lambda_height: float = 40.0

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> LossWeights:
        """Read the weights added by :func:`add_loss_options` (missing ones keep defaults)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: float(getattr(opt, n)) for n in names if hasattr(opt, n)})


_HELP = {
    "lambda_GAN": "weight of the generator GAN loss (sum over D_1, D_2, D_3, divided by 6)",
    "lambda_L1": "weight of the two-stage band-normalised L1 loss",
    "lambda_dice_coarse": "weight of the Dice loss of the coarse seg vs the normal vertebrae",
    "lambda_dice_fine": "weight of the Dice loss of the fine seg vs the target vertebra mask",
    "lambda_edge": "weight of the EEM Sobel edge loss on the fine segmentation",
    "lambda_height": "weight of the relative height loss (applied to each stage)",
}


def add_loss_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--lambda_GAN``, ``--lambda_L1``, ... with the original defaults; return parser."""
    for field in dataclasses.fields(LossWeights):
        parser.add_argument(
            f"--{field.name}",
            type=float,
            default=field.default,
            help=f"{_HELP[field.name]} (default {field.default:g})",
        )
    return parser


def _reduce(per_sample: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _check_same_shape(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def masked_l1_loss(
    pred: Tensor, target: Tensor, band_mask: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    """L1 distance normalised by the band area: ``sum |pred - target| / sum band_mask``.

    This is the original's whole-image mean L1 times (image area / band area). Where the
    two images agree outside the band (stage outputs composed with the input context) it is
    exactly the mean L1 inside the band; after SHRM it also counts context that SHRM placed
    differently from the ground truth, as the original does.

    Args:
        pred, target: (B, C, H, W) images in [-1, 1].
        band_mask: (B, 1, H, W) or (B, C, H, W) in {0, 1}, 1 = band; at least one pixel.
        reduction: ``"mean"`` -> scalar, ``"none"`` -> (B,).
    """
    _check_same_shape(pred, target, "pred and target")
    band_area = band_mask.flatten(1).sum(1) * (pred.shape[1] / band_mask.shape[1])
    if bool((band_area <= 0).any()):
        raise ValueError("band_mask is empty for at least one sample")
    per_sample = (pred - target).abs().flatten(1).sum(1) / band_area
    return _reduce(per_sample, reduction)


def two_stage_l1_loss(
    x_stage1: Tensor,
    x_stage2: Tensor,
    target: Tensor,
    band_mask: Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    """Original L1 term without lambda_L1: mean of the two stages' :func:`masked_l1_loss`,
    times 2 (the factor the original applies on top of lambda_L1 and the area ratio).

    Shapes as :func:`masked_l1_loss`; returns a scalar or (B,).
    """
    l1 = masked_l1_loss(x_stage1, target, band_mask, reduction="none")
    l2 = masked_l1_loss(x_stage2, target, band_mask, reduction="none")
    return _reduce(0.5 * (l1 + l2) * 2.0, reduction)


def dice_loss(
    pred: Tensor, target: Tensor, *, smooth: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """Soft Dice loss ``1 - (2 sum(p t) + smooth) / (sum p + sum t + smooth)`` per sample.

    Args:
        pred: (B, C, H, W) probabilities in [0, 1].
        target: (B, C, H, W) masks in {0, 1}.
        smooth: added to numerator and denominator (an empty target and prediction give 0).
    """
    _check_same_shape(pred, target, "pred and target")
    p, t = pred.flatten(1), target.to(pred.dtype).flatten(1)
    dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return _reduce(1.0 - dice, reduction)


def sobel_edges(seg: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Sobel gradient magnitude ``sqrt(gx^2 + gy^2 + eps)`` of each channel.

    Borders are replicated so an object touching the image edge gets no artificial edge.

    Args:
        seg: (B, C, H, W) segmentation in [0, 1].
        eps: keeps the square root differentiable where the image is flat.

    Returns:
        (B, C, H, W), 0 (well, ``sqrt(eps)``) on flat regions, up to 4 * sqrt(2) on a step.
    """
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernel = torch.stack([kx, kx.t()])[:, None].to(device=seg.device, dtype=seg.dtype)
    b, c, h, w = seg.shape
    padded = F.pad(seg.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    grad = F.conv2d(padded, kernel)  # (B*C, 2, H, W): d/dx (columns), d/dy (rows)
    return torch.sqrt(grad.pow(2).sum(1) + eps).reshape(b, c, h, w)


def sobel_edge_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """EEM edge loss: MSE between the Sobel magnitudes of two segmentations.

    Args:
        pred: (B, C, H, W) generated segmentation in [0, 1].
        target: (B, C, H, W) real segmentation in {0, 1}.
    """
    _check_same_shape(pred, target, "pred and target")
    diff = sobel_edges(pred) - sobel_edges(target.to(pred.dtype))
    return _reduce(diff.pow(2).flatten(1).mean(1), reduction)


def hard_sobel_edge_loss(pred: Tensor, target: Tensor, *, reduction: Reduction = "mean") -> Tensor:
    """The original's EEM edge loss, for exact reproduction: ``pred`` thresholded at 0.5,
    Sobel magnitudes (no epsilon) clipped at 1, MSE to the target's. The threshold has no
    gradient, so this term never trains the generator (the original's bug).

    Shapes as :func:`sobel_edge_loss`.
    """
    _check_same_shape(pred, target, "pred and target")
    hard = (pred.detach() > 0.5).to(pred.dtype)
    edges = [sobel_edges(x, eps=0.0).clamp(max=1.0) for x in (hard, target.to(pred.dtype))]
    return _reduce((edges[0] - edges[1]).pow(2).flatten(1).mean(1), reduction)


def relative_height_loss(
    pred_h: Tensor, target_h: Tensor, *, reduction: Reduction = "mean"
) -> Tensor:
    """Relative height error ``|pred_h - h| / h`` per sample (one stage).

    Args:
        pred_h: (B,) or (B, 1) predicted height.
        target_h: (B,) or (B, 1) true height, > 0, in the *same units* as ``pred_h`` (both
            fractions of h2, or both rows).
    """
    p, t = pred_h.reshape(-1), target_h.reshape(-1).to(pred_h.dtype)
    if p.shape != t.shape:
        raise ValueError(f"pred_h has {p.numel()} values but target_h has {t.numel()}")
    if bool((t <= 0).any()):
        raise ValueError("target_h must be positive (a vertebra of zero height)")
    return _reduce((p - t).abs() / t, reduction)
