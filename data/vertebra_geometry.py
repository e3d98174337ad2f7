"""Pure geometry of one HealthiVert sample (numpy in, numpy out; no I/O).

Conventions in ``data/base_dataset.py``: rows run superior -> inferior; "A geometry" cuts the
vertebra out and closes the context on a band of ``h2`` rows centred on the slice; "B
geometry" centres the vertebra. Shared by the slice dataset, the evaluation and the
whole-vertebra synthesis.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from util.geometry import MIN_PIECE_PX_AT_256, band_px, band_rows, centred_rows, scaled_area_px

#: ``rows``: a vertebra on rows ``x1..x2`` is ``x2 - x1 + 1`` rows tall (ours); ``span``: it is
#: ``x2 - x1`` tall and its last row stays in the context below (the original's convention).
HeightConvention = Literal["rows", "span"]
HEIGHT_CONVENTIONS = ("rows", "span")
#: What the CAM holds in the band: the vertebra's CAM rows resized to it (ours), or 0 (the
#: original's, which only shifts the context rows).
CamInBand = Literal["resized", "zero"]
CAM_IN_BAND = ("resized", "zero")


def vertebra_rows(label_slice: np.ndarray, vid: int) -> tuple[int, int] | None:
    """First and last row (inclusive) of label ``vid`` in a ``(S, W)`` slice, or ``None``."""
    rows = np.flatnonzero((label_slice == vid).any(axis=1))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1])


def drop_small_pieces(mask: np.ndarray, min_px: float) -> np.ndarray:
    """``mask`` without its 8-connected pieces of fewer than ``min_px`` pixels, as the
    original does to the target's label before measuring it (stray voxels of a neighbour's
    segmentation error would otherwise stretch the vertebra's row extent).

    Args:
        mask: (S, W) bool, or (D, S, W) bool: then each slice ``mask[d]`` on its own.
        min_px: smallest piece kept, in pixels (``scaled_area_px(50, S)`` in the dataset).

    Returns:
        bool array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    if min_px <= 1 or not mask.any():
        return mask
    structure = np.ones((3, 3), bool)
    if mask.ndim == 3:
        structure = np.pad(structure[None], ((1, 1), (0, 0), (0, 0)))  # no links across slices
    pieces, _ = ndimage.label(mask, structure)
    keep = np.bincount(pieces.ravel()) >= min_px
    keep[0] = False
    return keep[pieces]


def vertebra_span(
    target: np.ndarray, convention: HeightConvention = "rows"
) -> tuple[int, int] | None:
    """Rows ``(x1, x2)`` (inclusive) that a sample cuts out for a target mask ``(S, W)``.

    ``rows``: first to last row of the mask. ``span`` (the original's ``height = x2 - x1``):
    first to last-but-one, so the mask's last row stays in the context below. ``None`` when
    nothing is left to cut.
    """
    if convention not in HEIGHT_CONVENTIONS:
        raise ValueError(f"height convention: one of {HEIGHT_CONVENTIONS}, not {convention!r}")
    rows = np.flatnonzero(np.asarray(target).any(axis=1))
    if rows.size == 0:
        return None
    x1, x2 = int(rows[0]), int(rows[-1]) - (convention == "span")
    return (x1, x2) if x2 >= x1 else None


def close_context_index(x1: int, x2: int, img_size: int) -> np.ndarray:
    """Source row of every output row in A geometry, ``(S,)`` int64; ``-1`` in the band.

    The vertebra occupies rows ``x1..x2`` (inclusive) of the source. Rows above it are shifted
    so they end where the band starts, rows below so they start where the band ends; source
    indices outside the image are clamped to the edge rows.
    """
    b0, b1 = band_rows(img_size)
    out = np.arange(img_size, dtype=np.int64)
    out[:b0] += x1 - b0  # out[b0 - 1] = src[x1 - 1]
    out[b1:] += x2 + 1 - b1  # out[b1] = src[x2 + 1]
    np.clip(out, 0, img_size - 1, out=out)
    out[b0:b1] = -1
    return out


def centre_index(x1: int, x2: int, img_size: int) -> np.ndarray:
    """Source row of every output row in B geometry, ``(S,)`` int64 (edge-clamped): the
    vertebra (rows ``x1..x2``, height ``h``) lands on rows ``[S//2 - h//2, S//2 - h//2 + h)``."""
    c0, _ = centred_rows(x2 - x1 + 1, img_size)
    return np.clip(np.arange(img_size, dtype=np.int64) + (x1 - c0), 0, img_size - 1)


def _check_rows(image: np.ndarray, x1: int, x2: int, img_size: int | None) -> int:
    size = image.shape[0]
    if img_size is not None and img_size != size:
        raise ValueError(f"image has {size} rows but img_size={img_size}")
    if not 0 <= x1 <= x2 < size:
        raise ValueError(f"vertebra rows {x1}..{x2} outside an image of {size} rows")
    if x2 - x1 + 1 >= band_px(size):
        raise ValueError(f"vertebra height {x2 - x1 + 1} >= band height {band_px(size)}")
    return size


def close_context(
    image: np.ndarray, x1: int, x2: int, img_size: int | None = None, fill: float = 0.0
) -> np.ndarray:
    """A geometry of a ``(S, W)`` slice (any dtype): vertebra rows ``x1..x2`` cut out, the
    context closed on the band, band rows set to ``fill`` (0 in [-1, 1] CT units)."""
    size = _check_rows(image, x1, x2, img_size)
    idx = close_context_index(x1, x2, size)
    out = image[np.maximum(idx, 0)]
    out[idx < 0] = fill
    return out


def centre_vertebra(image: np.ndarray, x1: int, x2: int, img_size: int | None = None) -> np.ndarray:
    """B geometry of a ``(S, W)`` slice: shifted so rows ``x1..x2`` are centred."""
    size = _check_rows(image, x1, x2, img_size)
    return image[centre_index(x1, x2, size)]


def resize_rows(image: np.ndarray, n_rows: int) -> np.ndarray:
    """Linear resize of a ``(h, W)`` array to ``(n_rows, W)`` float32 along rows only
    (pixel-centre alignment, like ``align_corners=False``)."""
    h = image.shape[0]
    pos = np.clip((np.arange(n_rows) + 0.5) * h / n_rows - 0.5, 0.0, h - 1.0)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, h - 1)
    t = (pos - i0).astype(np.float32)[:, None]
    img = image.astype(np.float32, copy=False)
    return img[i0] * (1.0 - t) + img[i1] * t


def cam_to_a_geometry(cam: np.ndarray, x1: int, x2: int, img_size: int | None = None) -> np.ndarray:
    """CAM ``(S, W)`` in A geometry: context as :func:`close_context`, and the band holds the
    vertebra's CAM rows ``x1..x2`` resized to ``h2`` rows. float32, range kept."""
    size = _check_rows(cam, x1, x2, img_size)
    out = close_context(cam.astype(np.float32, copy=False), x1, x2, size)
    b0, b1 = band_rows(size)
    out[b0:b1] = resize_rows(cam[x1 : x2 + 1], b1 - b0)
    return out


def central_range(z0: int, z1: int) -> tuple[int, int]:
    """Inclusive slice range ``(lo, hi)`` of the central 4/5 of the extent ``z0..z1``."""
    length = z1 - z0 + 1
    n = max(1, length * 4 // 5)  # integer arithmetic: no 0.8 * 15 = 11.999... surprises
    lo = z0 + (length - n) // 2
    return lo, lo + n - 1


def pyramid_weights(lo: int, hi: int, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised pyramid weights and ``slice_ratio`` of slices ``ks`` in ``lo..hi``.

    ``c = (lo + hi) / 2``, ``half = (hi - lo) / 2``; weight ``1 - |k - c| / (half + 1)``,
    ratio ``|k - c| / half`` (0 when the range is a single slice).
    """
    c, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    d = np.abs(np.asarray(ks, dtype=np.float64) - c)
    ratio = d / half if half > 0 else np.zeros_like(d)
    return 1.0 - d / (half + 1.0), ratio


def original_slice_weights(z0: int, z1: int, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The original's weights and ``slice_ratio`` of slices ``ks`` of a vertebra spanning
    ``z0..z1`` (``get_weighted_random_slice`` of its dataset).

    Over the central range ``lo..hi`` (:func:`central_range`) with integer centre ``c = (lo +
    hi) // 2``: weight ``1 - |k - c| / (hi - lo)``, ratio ``2 |k - c| / (z1 - z0 + 1)`` (the
    whole extent, so the edges of the central range get about 0.8, not 1).
    """
    lo, hi = central_range(z0, z1)
    d = np.abs(np.asarray(ks, dtype=np.float64) - (lo + hi) // 2)
    return 1.0 - d / max(hi - lo, 1), 2.0 * d / (z1 - z0 + 1)


def _ct_to_unit(ct: np.ndarray) -> np.ndarray:
    out = ct.astype(np.float32)  # uint8 window -> [-1, 1], in place after one copy
    out /= np.float32(127.5)
    out -= np.float32(1.0)
    return out


def build_slice_sample(
    ct: np.ndarray,
    label: np.ndarray,
    cam: np.ndarray | None,
    vid: int,
    normal_ids: Iterable[int],
    *,
    height_convention: HeightConvention = "rows",
    cam_in_band: CamInBand = "resized",
    band_fill: float = 0.0,
) -> dict[str, Any]:
    """The image part of one sample from one slice already at ``S = img_size``.

    The target's label loses its pieces under ``MIN_PIECE_PX_AT_256`` (scaled to ``S``) first
    (:func:`drop_small_pieces`); its rows follow ``height_convention`` (:func:`vertebra_span`).

    Args:
        ct: ``(S, S)`` uint8 CT window.
        label: ``(S, S)`` uint8 VerSe labels.
        cam: ``(S, S)`` float heatmap in [0, 1], or ``None`` for zeros.
        vid: label id of the target vertebra.
        normal_ids: label ids that count as normal in ``normal_vert``.
        height_convention: ``rows`` (ours) or ``span`` (the original's).
        cam_in_band: ``resized`` (ours) or ``zero`` (the original's).
        band_fill: value of A's band in [-1, 1] CT units (ours 0; the original's -1, uint8 0).

    Returns ``A, B, mask, vert_mask, normal_vert, normal_vert_context, CAM`` as ``(S, S)``
    float32 (``normal_vert_context``: the normal vertebrae in A geometry, band empty) and
    ``height`` (px), ``x1, x2`` (B geometry, ``x2 - x1 + 1 = height``), ``h2``, ``src_x1,
    src_x2`` (rows cut from the input slice). ``ValueError`` when the vertebra is absent or not
    below the band height.
    """
    size = ct.shape[0]
    if cam_in_band not in CAM_IN_BAND:
        raise ValueError(f"cam_in_band must be one of {CAM_IN_BAND}, got {cam_in_band!r}")
    target = drop_small_pieces(label == vid, scaled_area_px(MIN_PIECE_PX_AT_256, size))
    rows = vertebra_span(target, height_convention)
    if rows is None:
        raise ValueError(f"vertebra {vid} is absent from this slice")
    x1, x2 = rows
    _check_rows(ct, x1, x2, size)  # rejects h >= h2
    # Gather uint8 rows first, convert after: cheaper than converting the whole slice.
    ia = close_context_index(x1, x2, size)
    a = _ct_to_unit(ct[np.maximum(ia, 0)])
    a[ia < 0] = band_fill
    b0, b1 = band_rows(size)
    mask = np.zeros((size, size), np.float32)
    mask[b0:b1] = 1.0
    normal = np.zeros((size, size), bool)
    for i in normal_ids:  # a handful of ids per volume: faster than a lookup-table gather
        normal |= label == i
    if cam is None:
        cam_a = np.zeros_like(mask)
    elif cam_in_band == "zero":
        cam_a = close_context(cam.astype(np.float32, copy=False), x1, x2, size)
    else:
        cam_a = cam_to_a_geometry(cam, x1, x2, size)
    h = x2 - x1 + 1
    c0, _ = centred_rows(h, size)
    return {
        "A": a,
        "B": _ct_to_unit(ct[centre_index(x1, x2, size)]),
        "mask": mask,
        "vert_mask": centre_vertebra(target, x1, x2, size).astype(np.float32),
        "normal_vert": centre_vertebra(normal, x1, x2, size).astype(np.float32),
        "normal_vert_context": close_context(normal.astype(np.float32), x1, x2, size),
        "CAM": cam_a,
        "height": float(h),
        "x1": c0,
        "x2": c0 + h - 1,
        "h2": b1 - b0,
        "src_x1": x1,
        "src_x2": x2,
    }
