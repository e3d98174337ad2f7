"""Anterior, middle and posterior heights of a vertebral body, in mm.

Definition (robust: a single noisy voxel changes no result):

1. **Orientation.** Volumes are brought to (I, P, L) voxel order with nibabel's orientation
   tools (a permutation/flip, no resampling); the spacing of each axis comes from the affine
   (anisotropic spacing allowed; an oblique affine is taken at its nearest axis orientation).
2. **Body.** The voxels of the vertebra's label that are also vertebral body (body mask == 1).
   Without a body mask the body is estimated from the label alone (:func:`estimate_body`).
3. **Height axis** (``frame``). ``"image"``: the I axis of the volume (right for straightened
   volumes). ``"pca"`` (default): the direction of least spread of the body within the
   sagittal (I-P) plane, since vertebral bodies are deeper than tall; this undoes the sagittal
   tilt of native scans (lordosis tilts L5 by 30-40 deg). The body is then resampled onto a
   grid aligned with that axis (linear interpolation of the binary mask, threshold 0.5; the
   L-R slices are kept). Lateral (coronal) tilt is not corrected. When the two sagittal
   spreads are within ``PCA_ISOTROPY_RATIO`` of each other the axis is undefined and the I
   axis is used (``tilt_deg`` 0 in the result).
4. **Central slices.** Sagittal slices within the central ``lr_fraction`` (default 1/2) of the
   body's L-R extent.
5. **Columns.** In each central slice every A-P position holding body defines a column, a
   line along the height axis; its height = number of body samples on it x the step along
   the axis (holes count as missing bone; a stray voxel adds one voxel to one column).
6. **Thirds.** A slice's A-P extent runs from its most anterior to its most posterior column
   at least ``MIN_COLUMN_FRACTION`` (1/4) as tall as its tallest column (so stray voxels and
   partial-volume rims do not stretch it), and is split into thirds. A third's height =
   **median** of the heights of the columns in the central half of that third (away from the
   rounded corners and the cortical rim), pooled over all central slices. Precision is
   limited by the voxel size along the height axis.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from util.cli import run_main
from util.io import write_json_atomic
from util.labels import LABEL_MAP_NAMES, id_to_name_map
from util.nifti_io import load_nifti

#: Half width (mm) of the mid-sagittal slab in which the spinal canal separates the body from
#: the posterior arch (the lumbar canal is about 20-25 mm wide, the cervical about 25 mm).
CANAL_HALF_WIDTH_MM = 5.0
#: Components smaller than this fraction of the largest are noise in the body estimate.
MIN_COMPONENT_FRACTION = 0.1
#: Columns shorter than this fraction of a slice's tallest column do not define its A-P extent.
MIN_COLUMN_FRACTION = 0.25
#: Two spreads closer than this ratio leave the PCA height axis undefined (image axis used).
PCA_ISOTROPY_RATIO = 0.9


@dataclass(frozen=True)
class VertebraHeights:
    """Heights in mm of the three thirds of a vertebral body, and the height axis' tilt.

    ``tilt_deg``: angle in degrees between the height axis used and the volume's S-I axis
    (0 for ``frame="image"``).
    """

    anterior_mm: float
    middle_mm: float
    posterior_mm: float
    tilt_deg: float = 0.0

    def as_array(self) -> np.ndarray:
        """(3,) float64 array ``[anterior, middle, posterior]`` in mm."""
        return np.array([self.anterior_mm, self.middle_mm, self.posterior_mm])

    def as_dict(self) -> dict[str, float]:
        return {
            "anterior_mm": round(self.anterior_mm, 3),
            "middle_mm": round(self.middle_mm, 3),
            "posterior_mm": round(self.posterior_mm, 3),
            "tilt_deg": round(self.tilt_deg, 2),
        }


def _third_heights(stack: np.ndarray, row_mm: float) -> tuple[float, float, float]:
    """Steps 5-6 on a (H, W, K) bool stack: rows along the height axis, columns A -> P,
    ``K`` sagittal slices. Returns the median column height of each third in mm."""
    pooled: list[list[np.ndarray]] = [[], [], []]
    for k in range(stack.shape[2]):
        counts = stack[:, :, k].sum(axis=0)
        if not counts.any():
            continue
        # 6a. A-P extent from the columns at least MIN_COLUMN_FRACTION of the tallest one, so
        #     stray voxels and partial-volume rims do not stretch it.
        cols = np.flatnonzero(counts >= MIN_COLUMN_FRACTION * counts.max())
        c0, n = cols[0], cols[-1] - cols[0] + 1
        cols = np.arange(c0, cols[-1] + 1)
        cols = cols[counts[cols] > 0]
        rel = (cols - c0 + 0.5) / n  # column centres as a fraction of the extent
        for t in range(3):
            # 6b. The central half of each third: away from the rounded corners of the body.
            dist = np.abs(rel - (t + 0.5) / 3.0)
            sel = dist <= 1.0 / 12.0 + 1e-9
            if not sel.any():
                sel = dist == dist.min()  # too few columns: the one nearest the third's centre
            pooled[t].append(counts[cols[sel]] * row_mm)
    if not pooled[0]:
        raise ValueError("body mask is empty")
    return tuple(float(np.median(np.concatenate(p))) for p in pooled)  # type: ignore[return-value]


def heights_2d(mask: np.ndarray, *, row_mm: float = 1.0) -> VertebraHeights:
    """Heights of a vertebral body in one sagittal slice (steps 5-6, no tilt correction).

    Args:
        mask: (H, W) body mask (bool, or > 0.5), rows superior -> inferior, columns
            anterior -> posterior (the sagittal-slice convention of ``data/base_dataset.py``).
        row_mm: row spacing in mm (1.0 gives heights in px).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"heights_2d expects a (H, W) mask, got shape {mask.shape}")
    binary = mask if mask.dtype == bool else mask > 0.5
    return VertebraHeights(*_third_heights(binary[:, :, None], float(row_mm)))


def _central_slices(body: np.ndarray, lr_fraction: float) -> np.ndarray:
    """Step 4: indices along L of the slices in the central ``lr_fraction`` of the extent."""
    if not 0 < lr_fraction <= 1:
        raise ValueError(f"lr_fraction must be in (0, 1], got {lr_fraction}")
    ks = np.flatnonzero(body.any(axis=(0, 1)))
    centre = (ks[0] + ks[-1]) / 2.0
    half = max(lr_fraction * (ks[-1] - ks[0] + 1) / 2.0, 0.5)
    return ks[np.abs(ks - centre) <= half]


def _pca_axis(body: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, float]:
    """Step 3: unit height axis (I, P components, pointing inferior) and its tilt in degrees."""
    idx = np.argwhere(body)[:, :2] * spacing[:2]
    if idx.shape[0] < 3:
        return np.array([1.0, 0.0]), 0.0
    evals, evecs = np.linalg.eigh(np.cov(idx.T))
    if evals[1] <= 0 or evals[0] / evals[1] > PCA_ISOTROPY_RATIO:
        return np.array([1.0, 0.0]), 0.0  # round in the sagittal plane: no preferred axis
    axis = evecs[:, 0] if evecs[0, 0] >= 0 else -evecs[:, 0]
    return axis, math.degrees(math.acos(min(1.0, abs(axis[0]))))


def _resample_along(
    body: np.ndarray, spacing: np.ndarray, axis: np.ndarray, step: float, slices: np.ndarray
) -> np.ndarray:
    """Resample ``body[:, :, slices]`` onto a sagittal grid with rows along ``axis`` and
    columns along its posterior-pointing normal, at ``step`` mm. Returns (U, V, K) bool."""
    normal = np.array([-axis[1], axis[0]])  # P component = axis[0] >= 0: points posterior
    pts = np.argwhere(body[:, :, slices])[:, :2] * spacing[:2]
    # Grid anchored on a voxel centre with samples at half steps: with no tilt and a step
    # that divides half the spacing, each voxel gets exactly spacing / step samples and
    # voxel counting is reproduced exactly (interpolated value > 0.5 inside the voxel).
    centre = np.round(pts.mean(axis=0) / spacing[:2]) * spacing[:2]
    margin = float(spacing[:2].max())
    u = (pts - centre) @ axis
    v = (pts - centre) @ normal
    us = np.arange(np.floor((u.min() - margin) / step), np.ceil((u.max() + margin) / step)) + 0.5
    vs = np.arange(np.floor((v.min() - margin) / step), np.ceil((v.max() + margin) / step)) + 0.5
    us, vs = us * step, vs * step
    uu, vv = np.meshgrid(us, vs, indexing="ij")
    vox_i = (centre[0] + uu * axis[0] + vv * normal[0]) / spacing[0]
    vox_p = (centre[1] + uu * axis[1] + vv * normal[1]) / spacing[1]
    out = np.empty(uu.shape + (len(slices),), dtype=bool)
    for j, k in enumerate(slices):
        plane = body[:, :, k].astype(np.float32)
        out[:, :, j] = ndimage.map_coordinates(plane, [vox_i, vox_p], order=1, cval=0.0) > 0.5
    return out


def body_heights(
    body: np.ndarray,
    spacing: Sequence[float],
    *,
    frame: str = "pca",
    lr_fraction: float = 0.5,
    step_mm: float | None = None,
) -> VertebraHeights:
    """Heights of one vertebral body given as an (I, P, L) mask (steps 3-6).

    Args:
        body: (I, P, L) bool mask of the body; axis 0 runs superior -> inferior, 1 anterior ->
            posterior, 2 right -> left (e.g. a straightened volume, or a reoriented native one).
        spacing: voxel size in mm along (I, P, L).
        frame: ``"pca"`` (tilt-corrected height axis) or ``"image"`` (the I axis).
        lr_fraction: fraction of the body's L-R extent whose slices are measured.
        step_mm: resampling step of the ``"pca"`` frame; default half the smaller in-plane
            spacing.
    """
    body = np.asarray(body, dtype=bool)
    if body.ndim != 3:
        raise ValueError(f"body_heights expects an (I, P, L) volume, got shape {body.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not (sp > 0).all():
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing}")
    if not body.any():
        raise ValueError("body mask is empty")
    slices = _central_slices(body, lr_fraction)
    if frame == "image":
        return VertebraHeights(*_third_heights(body[:, :, slices], float(sp[0])))
    if frame != "pca":
        raise ValueError(f"unknown frame {frame!r}; choose 'pca' or 'image'")
    axis, tilt = _pca_axis(body, sp)
    step = float(step_mm) if step_mm is not None else float(sp[:2].min()) / 2.0
    local = _resample_along(body, sp, axis, step, slices)
    return VertebraHeights(*_third_heights(local, step), tilt_deg=tilt)


def estimate_body(vertebra: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Estimate the vertebral body from a whole-vertebra mask in (I, P, L) order.

    1. The midline is the L-R centroid of the vertebra (the spinal canal lies on it).
    2. In the sagittal slices within ``CANAL_HALF_WIDTH_MM`` of it, the canal separates the
       body from the posterior arch (laminae, spinous process).
    3. In each of those slices: 2D connected components (4-connectivity); components under
       ``MIN_COMPONENT_FRACTION`` of the largest are noise; the body is the remaining one with
       the most anterior centroid. A label that holds the body only (e.g. the straightened
       labels of the original project, whose arch is cut away) has one component: the body.

    Limitation: a segmentation that bridges the canal in the mid-sagittal slab merges the arch
    into the body; pass a body mask then. Returns an (I, P, L) bool mask, non-zero only in the
    mid-sagittal slab.
    """
    vert = np.asarray(vertebra, dtype=bool)
    sp = np.asarray(spacing, dtype=np.float64)
    if not vert.any():
        raise ValueError("vertebra mask is empty")
    ks = np.argwhere(vert)[:, 2]
    centre = int(round(ks.mean()))
    half = int(CANAL_HALF_WIDTH_MM // sp[2])
    body = np.zeros_like(vert)
    for k in range(max(0, centre - half), min(vert.shape[2], centre + half + 1)):
        comps, n = ndimage.label(vert[:, :, k])
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(comps), comps, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.max()) + 1
        cols = ndimage.mean(np.indices(comps.shape)[1], comps, index=keep)
        body[:, :, k] = comps == keep[int(np.argmin(cols))]
    if not body.any():
        raise ValueError("the vertebra has no voxel in its mid-sagittal slab")
    return body


def to_ipl(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip a 3D volume to (I, P, L) axes (no resampling) and return it with the voxel
    spacing (mm) of its new axes."""
    ornt = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("IPL"))
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    for src, (dst, _) in enumerate(transform):
        spacing[int(dst)] = zooms[src]
    return nib.orientations.apply_orientation(data, transform), spacing


def measure_heights(
    seg: np.ndarray,
    affine: np.ndarray,
    label_id: int,
    *,
    body: np.ndarray | None = None,
    body_value: int = 1,
    frame: str = "pca",
    lr_fraction: float = 0.5,
) -> VertebraHeights:
    """Heights of vertebra ``label_id`` of a label volume in any axis orientation.

    Args:
        seg: 3D integer label volume (any orientation), e.g. VerSe or TotalSegmentator ids.
        affine: its 4 x 4 voxel -> world (RAS mm) affine.
        label_id: the vertebra to measure.
        body: optional body mask on the same grid; voxels ``== body_value`` are vertebral body
            (TotalSegmentator ``vertebrae_body``: 1 body, 2 discs). Without it the body is
            estimated from the label (:func:`estimate_body`).
        frame, lr_fraction: see :func:`body_heights`.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"label volume must be 3D, got shape {seg.shape}")
    if body is not None and np.shape(body) != seg.shape:
        raise ValueError(f"body mask shape {np.shape(body)} != label shape {seg.shape}")
    vert = np.rint(seg) == label_id if seg.dtype.kind == "f" else seg == label_id
    if not vert.any():
        raise ValueError(f"label id {label_id} is absent from the label volume")
    vert, spacing = to_ipl(vert, affine)
    if body is not None:
        mask = to_ipl(np.asarray(body) == body_value, affine)[0] & vert
        if not mask.any():
            raise ValueError(f"label id {label_id} has no voxel of body value {body_value}")
    else:
        mask = estimate_body(vert, spacing)
    # A body cut by the volume's edge along I or P would give truncated heights.
    for ax in (0, 1):
        proj = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        if proj[0] == 0 or proj[-1] == mask.shape[ax] - 1:
            raise ValueError(f"the body of label id {label_id} touches the volume's edge")
    return body_heights(mask, spacing, frame=frame, lr_fraction=lr_fraction)


def measure_all(
    seg: np.ndarray,
    affine: np.ndarray,
    *,
    body: np.ndarray | None = None,
    label_map: str = "verse",
    label_ids: Sequence[int] | None = None,
    frame: str = "pca",
) -> tuple[dict[str, VertebraHeights], dict[str, str]]:
    """Heights of several vertebrae, keyed by name (``"L1"``).

    ``label_ids`` None: every id of ``label_map`` present in ``seg``; those that cannot be
    measured (cut by the edge, no body) are returned in the second dict ``{name: reason}``.
    Explicit ``label_ids``: each must be measurable, else ``ValueError``.
    """
    names = id_to_name_map(label_map)
    present = {int(v) for v in np.unique(np.rint(np.asarray(seg)))}
    if label_ids is None:
        ids, strict = sorted(i for i in present if i in names), False
    else:
        ids, strict = [int(i) for i in label_ids], True
        for i in ids:
            if i not in names:
                raise ValueError(f"label id {i} is not a vertebra in the {label_map} map")
    heights: dict[str, VertebraHeights] = {}
    skipped: dict[str, str] = {}
    for i in ids:
        try:
            heights[names[i]] = measure_heights(seg, affine, i, body=body, frame=frame)
        except ValueError as exc:
            if strict:
                raise
            skipped[names[i]] = str(exc)
    return heights, skipped


def load_seg_and_body(
    seg_path: str, body_path: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A label volume, its affine and, when ``body_path`` is given, the body mask, checked to
    lie on the label's grid (``ValueError`` naming both files otherwise)."""
    seg, affine, _ = load_nifti(seg_path)
    if not body_path:
        return seg, affine, None
    body, body_affine, _ = load_nifti(body_path)
    if body.shape != seg.shape:
        raise ValueError(f"{body_path} has shape {body.shape}, {seg_path} has {seg.shape}")
    if not np.allclose(body_affine, affine, atol=1e-3):
        raise ValueError(f"{body_path} and {seg_path} have different affines")
    return seg, affine, body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m util.heights",
        description="Anterior/middle/posterior vertebral body heights (mm) to a JSON file.",
    )
    parser.add_argument("--seg", required=True, help="vertebra label volume (NIfTI)")
    parser.add_argument("--body", help="vertebral-body mask on the same grid (1 = body)")
    parser.add_argument("--label_map", choices=LABEL_MAP_NAMES, default="verse")
    parser.add_argument("--labels", type=int, nargs="+", help="ids to measure (default: all)")
    parser.add_argument("--frame", choices=("pca", "image"), default="pca")
    parser.add_argument("--out", required=True, help="output JSON path")
    args = parser.parse_args(argv)

    seg, affine, body = load_seg_and_body(args.seg, args.body)
    try:
        heights, skipped = measure_all(
            seg,
            affine,
            body=body,
            label_map=args.label_map,
            label_ids=args.labels,
            frame=args.frame,
        )
    except ValueError as exc:
        raise ValueError(f"{args.seg}: {exc}") from exc
    for name, reason in skipped.items():
        print(f"warning: {name} not measured: {reason}", file=sys.stderr)
    if not heights:
        raise ValueError(f"{args.seg}: no vertebra could be measured")
    write_json_atomic(args.out, {name: h.as_dict() for name, h in heights.items()})
    return 0


if __name__ == "__main__":
    run_main(main)
