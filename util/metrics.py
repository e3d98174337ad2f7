"""Synthesis-quality metrics: pure functions of numpy arrays (no I/O, no torch).

Conventions (those of the original HealthiVert evaluation, so numbers are comparable):

* Images are 2D sagittal slices ``(H, W)`` in any intensity scale (``[-1, 1]``, ``[0, 255]``,
  HU); ``pred`` and ``gt`` must share it. Rows run superior -> inferior.
* PSNR and SSIM use ``data_range = max(gt) - min(gt)`` of the region measured (the whole slice
  for "global", the row band for "patch"), unless ``data_range`` is given. A **constant ground
  truth** has no range: the functions raise ``ValueError`` (pass ``data_range`` explicitly);
  :func:`slice_metrics` records ``nan`` for that metric instead, and :func:`summarise` counts it
  as undefined.
* The "patch" is a band of rows ``[start, stop)`` (the vertebra's rows), all columns.
* Masks are binarised with ``> 0.5`` (bool masks as they are).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

#: SSIM window of the original (scikit-image's default), used when the region allows it.
SSIM_WIN_SIZE = 7
#: Smallest SSIM window: a window of 1 px has no variance, so SSIM would be luminance only.
SSIM_MIN_WIN_SIZE = 3

Rows = tuple[int, int]


def _pair(pred: np.ndarray, gt: np.ndarray, rows: Rows | None) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 2D arrays, cropped to ``rows`` when given."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    if gt.ndim != 2:
        raise ValueError(f"expected 2D slices (H, W), got shape {gt.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(gt).all()):
        raise ValueError("pred or gt contains NaN or infinite values")
    if rows is not None:
        start, stop = int(rows[0]), int(rows[1])
        if not 0 <= start < stop <= gt.shape[0]:
            raise ValueError(f"rows [{start}, {stop}) outside the {gt.shape[0]} rows of the slice")
        pred, gt = pred[start:stop], gt[start:stop]
    return pred, gt


def _data_range(gt: np.ndarray, data_range: float | None) -> float:
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        return float(data_range)
    rng = float(gt.max() - gt.min())
    if rng == 0.0:
        raise ValueError(
            "ground truth is constant, so data_range = max - min is 0 and PSNR/SSIM are "
            "undefined; pass data_range explicitly"
        )
    return rng


def psnr(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    rows: Rows | None = None,
    data_range: float | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(R^2 / MSE)``.

    Args:
        pred, gt: (H, W) images on the same scale.
        rows: optional band ``[start, stop)``; only those rows are compared ("patch" PSNR).
        data_range: ``R``; default ``max - min`` of ``gt`` over the compared region.

    Returns ``inf`` for identical images (MSE = 0).
    """
    pred, gt = _pair(pred, gt, rows)
    rng = _data_range(gt, data_range)
    if np.array_equal(pred, gt):
        return math.inf  # skimage would divide by zero with a warning
    return float(peak_signal_noise_ratio(gt, pred, data_range=rng))


def ssim_win_size(height: int, width: int) -> int:
    """SSIM window used for a region of ``height x width`` px.

    The original's 7 x 7 window when it fits; otherwise the largest odd size that fits the
    smaller side (a band of 5 rows gets 5, of 4 rows gets 3), so that small bands (e.g. a
    vertebra at 64 px) still have a defined SSIM. Below 3 px ``ValueError``.
    """
    side = min(int(height), int(width))
    if side < SSIM_MIN_WIN_SIZE:
        raise ValueError(f"SSIM needs a region of at least 3 x 3 px, got {height} x {width}")
    win = min(SSIM_WIN_SIZE, side)
    return win if win % 2 == 1 else win - 1


def ssim(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    rows: Rows | None = None,
    data_range: float | None = None,
) -> float:
    """Mean structural similarity (scikit-image, uniform window, see :func:`ssim_win_size`).

    Args as :func:`psnr`. Returns 1.0 for identical images.
    """
    pred, gt = _pair(pred, gt, rows)
    rng = _data_range(gt, data_range)
    win = ssim_win_size(*gt.shape)
    return float(structural_similarity(gt, pred, data_range=rng, win_size=win))


def _binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask > 0.5


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _binary(pred), _binary(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred mask shape {pred.shape} != gt mask shape {gt.shape}")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice ``2|P & G| / (|P| + |G|)`` of two masks (any shape). Both empty -> 1.0 (they agree)."""
    pred, gt = _masks(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union ``|P & G| / |P | G|``. Both empty -> 1.0 (they agree)."""
    pred, gt = _masks(pred, gt)
    union = int(np.logical_or(pred, gt).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred, gt).sum()) / union


def relative_volume_difference(pred: np.ndarray, gt: np.ndarray) -> float:
    """Signed relative volume difference ``(|P| - |G|) / |G|`` (0 = same size).

    Both empty -> 0.0; an empty ``gt`` with a non-empty ``pred`` -> ``inf``.
    """
    pred, gt = _masks(pred, gt)
    vp, vg = int(pred.sum()), int(gt.sum())
    if vg == 0:
        return 0.0 if vp == 0 else math.inf
    return (vp - vg) / vg


def rhdr(h_pred: float | np.ndarray, h_gt: float | np.ndarray) -> float | np.ndarray:
    """Relative height difference ratio in %: ``100 |h_pred - h_gt| / h_gt``, element-wise.

    Heights in any common unit (px or mm). Scalars give a float, arrays an array (broadcast).
    ``ValueError`` if any ``h_gt <= 0`` or a value is not finite.
    """
    hp = np.asarray(h_pred, dtype=np.float64)
    hg = np.asarray(h_gt, dtype=np.float64)
    if not (np.isfinite(hp).all() and np.isfinite(hg).all()):
        raise ValueError("heights must be finite")
    if (hg <= 0).any():
        raise ValueError("ground-truth heights must be > 0 for RHDR")
    out = 100.0 * np.abs(hp - hg) / hg
    return float(out) if out.ndim == 0 else out


def slice_metrics(
    pred_ct: np.ndarray,
    gt_ct: np.ndarray,
    pred_mask: np.ndarray,
    gt_mask: np.ndarray,
    rows: Rows,
    h_pred: float | None = None,
    h_gt: float | None = None,
    *,
    data_range: float | None = None,
) -> dict[str, float]:
    """Every per-slice metric in one dict, one row of ``metrics.csv``.

    Args:
        pred_ct, gt_ct: (H, W) synthesised and ground-truth CT, same scale.
        pred_mask, gt_mask: (H, W) synthesised and ground-truth vertebra masks.
        rows: the vertebra's row band ``[start, stop)`` (the "patch").
        h_pred, h_gt: predicted and true heights (px or mm); ``rhdr`` is added when both given.
        data_range: fixed PSNR/SSIM range; default the ground truth's ``max - min`` per region.

    Returns keys ``ssim_global, psnr_global, ssim_patch, psnr_patch, dice, iou, rvd``
    (and ``rhdr`` in %). A region whose ground truth is constant gets ``nan`` for its SSIM and
    PSNR (undefined without a range); identical images give ``psnr = inf``.
    """
    out: dict[str, float] = {}
    for region, region_rows in (("global", None), ("patch", rows)):
        _, gt_region = _pair(pred_ct, gt_ct, region_rows)
        if data_range is None and float(gt_region.max() - gt_region.min()) == 0.0:
            out[f"ssim_{region}"] = math.nan
            out[f"psnr_{region}"] = math.nan
            continue
        kw = {"rows": region_rows, "data_range": data_range}
        out[f"ssim_{region}"] = ssim(pred_ct, gt_ct, **kw)
        out[f"psnr_{region}"] = psnr(pred_ct, gt_ct, **kw)
    out["dice"] = dice(pred_mask, gt_mask)
    out["iou"] = iou(pred_mask, gt_mask)
    out["rvd"] = relative_volume_difference(pred_mask, gt_mask)
    if h_pred is not None and h_gt is not None:
        out["rhdr"] = float(rhdr(h_pred, h_gt))
    return out


def summarise(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation (population, ``ddof = 0``) and count of each numeric metric.

    ``rows`` are dicts such as those of :func:`slice_metrics`; non-numeric values (ids, names)
    and bools are skipped. Only finite values enter ``mean``/``std``/``count``; ``n_undefined``
    counts the ``nan``/``inf`` ones (e.g. PSNR of identical images), so they are never silently
    lost. A metric with no finite value has ``mean = std = nan``.
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, val in row.items():
            if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
                continue
            values.setdefault(key, []).append(float(val))
    summary: dict[str, dict[str, float]] = {}
    for key, vals in values.items():
        arr = np.asarray(vals)
        finite = arr[np.isfinite(arr)]
        summary[key] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std()) if finite.size else math.nan,
            "count": int(finite.size),
            "n_undefined": int(arr.size - finite.size),
        }
    return summary
