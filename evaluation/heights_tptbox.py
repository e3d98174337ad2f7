"""Compare our vertebral body heights (``util.heights``) with TPTBox's six-point heights.

TPTBox (Torso Processing ToolBox, TUM; the landmark code behind SPINEPS, Apache-2.0) places
points of interest on a vertebra from an instance mask and a subregion mask. Four of them are
the corners of the body's central sagittal cut (anterior/posterior x superior/inferior
ligament attachment points, ids 101-104) and two the middle of the superior and inferior
endplates (ids 105 and 107): the six points of Genant's quantitative morphometry. Their
distances are the anterior, middle and posterior heights a spine report gives (Ha, Hm, Hp).

Ours are a different but related measure: the median column height in each third of the
body over its central sagittal slices (see ``util.heights``). The two agree to about a voxel;
the table shows where they do not.

Development tool: TPTBox is a test-only requirement (``requirements-dev.txt``). The library
behind ``scripts/compare_heights_tptbox.py``::

    python scripts/compare_heights_tptbox.py \
        --seg ../shared/data/totalseg_example/vertebrae_labels.nii.gz \
        --body ../shared/data/totalseg_example/vertebrae_body.nii.gz \
        --label_map totalseg [--out compare.json]
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from evaluation.grading import THIRDS
from util.heights import load_seg_and_body, measure_all
from util.labels import VERSE_ID_TO_NAME, totalseg_to_verse

#: TPTBox subregion ids (its ``Location`` enum): the body, and everything else of a vertebra.
CORPUS, ARCUS = 49, 41
#: Point pairs (TPTBox ``Location`` ids) whose distance is the anterior/middle/posterior height.
SIX_POINT_PAIRS = ((101, 103), (105, 107), (102, 104))


def tptbox_heights(
    seg: np.ndarray, affine: np.ndarray, body: np.ndarray, label_map: str = "verse"
) -> dict[str, np.ndarray]:
    """Six-point (anterior, middle, posterior) body heights in mm by TPTBox, keyed by name.

    Args:
        seg: (X, Y, Z) vertebra label volume (ids of ``label_map``), any orientation.
        affine: (4, 4) voxel-to-world affine of ``seg``.
        body: (X, Y, Z) vertebral-body mask on the same grid (non-zero = body).
        label_map: ``"verse"`` or ``"totalseg"``.

    Vertebrae TPTBox cannot place all six points on are left out.
    """
    try:
        from TPTBox import NII, calc_poi_from_subreg_vert
    except ImportError as exc:
        raise ImportError("TPTBox is not installed: pip install -r requirements-dev.txt") from exc
    seg = np.rint(np.asarray(seg)).astype(np.int16)
    verse = totalseg_to_verse(seg) if label_map == "totalseg" else seg
    verse = np.where(np.isin(verse, list(VERSE_ID_TO_NAME)), verse, 0).astype(np.int16)
    is_body = np.asarray(body) > 0
    subreg = np.where(verse > 0, np.where(is_body, CORPUS, ARCUS), 0).astype(np.int16)
    vert_nii = NII(nib.Nifti1Image(verse, affine), seg=True)
    subreg_nii = NII(nib.Nifti1Image(subreg, affine), seg=True)
    ids = sorted({pid for pair in SIX_POINT_PAIRS for pid in pair})
    # TPTBox logs every step to stdout and warns about its own enum lookups.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        poi = calc_poi_from_subreg_vert(vert_nii, subreg_nii, subreg_id=ids).to_global()
        out = {}
        for vid in sorted(int(v) for v in np.unique(verse) if v > 0):
            try:
                pts = {pid: np.asarray(poi[vid, pid], dtype=np.float64) for pid in ids}
            except (KeyError, ValueError):
                continue  # a point TPTBox could not place (vertebra cut by the scan)
            out[VERSE_ID_TO_NAME[vid]] = np.array(
                [np.linalg.norm(pts[a] - pts[b]) for a, b in SIX_POINT_PAIRS]
            )
    return out


def compare(
    ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, object]:
    """Per-vertebra differences (ours - reference, mm) of the names both measured, and a
    summary: mean and max absolute difference over all heights."""
    names = [n for n in ours if n in reference]
    if not names:
        raise ValueError("no vertebra was measured by both methods")
    rows = {
        n: {
            "ours_mm": [round(float(v), 2) for v in ours[n]],
            "tptbox_mm": [round(float(v), 2) for v in reference[n]],
            "diff_mm": [round(float(v), 2) for v in np.asarray(ours[n]) - reference[n]],
        }
        for n in names
    }
    diffs = np.abs([rows[n]["diff_mm"] for n in names])
    return {
        "vertebrae": rows,
        "thirds": list(THIRDS),
        "mean_abs_diff_mm": round(float(diffs.mean()), 2),
        "max_abs_diff_mm": round(float(diffs.max()), 2),
    }


def markdown(result: Mapping[str, object], voxel_mm: float) -> str:
    """The comparison as a Markdown table (A/M/P, ours vs TPTBox) with a summary line."""
    lines = [
        "| vertebra | ours A / M / P mm | TPTBox six-point A / M / P mm | difference mm |",
        "|---|---|---|---|",
    ]
    for name, row in result["vertebrae"].items():  # type: ignore[union-attr]
        cells = [" / ".join(f"{v:.1f}" for v in row[k]) for k in ("ours_mm", "tptbox_mm")]
        diff = " / ".join(f"{v:+.1f}" for v in row["diff_mm"])
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {diff} |")
    diffs = np.abs([row["diff_mm"] for row in result["vertebrae"].values()])  # type: ignore[union-attr]
    within = int((diffs <= voxel_mm + 1e-6).sum())
    lines.append(
        f"\nmean |difference| {result['mean_abs_diff_mm']} mm, max {result['max_abs_diff_mm']} mm; "
        f"{within} of {diffs.size} heights within one voxel ({voxel_mm:g} mm)"
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class TptboxComparison:
    """``result``: :func:`compare` of our heights with TPTBox's; ``voxel_mm``: the largest
    voxel size of the label volume; ``skipped``: ``{name: reason}`` of the vertebrae that
    ``util.heights`` could not measure."""

    result: dict[str, object]
    voxel_mm: float
    skipped: dict[str, str]


def compare_with_tptbox(
    seg_path: str | Path, body_path: str | Path, label_map: str = "verse"
) -> TptboxComparison:
    """Measure the vertebrae of a label volume and its body mask (same grid) with
    ``util.heights`` and with TPTBox, and compare them (the sacrum has no six-point
    morphometry: vertebrae only). ``ImportError`` naming ``requirements-dev.txt`` without
    TPTBox."""
    seg, affine, body = load_seg_and_body(seg_path, body_path)
    ours, skipped = measure_all(seg, affine, body=body, label_map=label_map)
    reference = tptbox_heights(seg, affine, body, label_map)
    result = compare({n: h.as_array() for n, h in ours.items() if n != "S1"}, reference)
    return TptboxComparison(result, float(np.max(nib.affines.voxel_sizes(affine))), skipped)
