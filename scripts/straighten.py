"""Straighten spine CTs into a data root: one 256 x 256 x 64 (I, P, L) volume per vertebra.

Inputs (one of):

* ``--verse_root DIR``: VerSe layout, ``rawdata/<sub>/<sub>*_ct.nii.gz``,
  ``derivatives/<sub>/<sub>*_seg-vert_msk.nii.gz`` and ``derivatives/<sub>/*_ctd*.json``;
  the patient id is the subject folder name (``sub-verse007`` -> ``sub-verse007_20``).
* ``--seg SEG [--ct CT] [--centroids JSON] [--pid PID]``: one patient. Without ``--ct`` only
  labels are written (no ``CT/``, no ``heatmap/``): a label-only output is no training root.

``--label_map totalseg`` converts TotalSegmentator v2 ids to VerSe ids (S1 becomes 26 and is
kept as context, without a volume of its own). Centroids default to the labels' centres of
mass. The output is a ``--dataroot``: ``CT/``, ``label/``, ``heatmap/`` (all zeros, a
provisional uniform attention that ``scripts/make_heatmaps.py`` replaces),
``vertebra_data.json`` (merged with an existing one; all new ids go to ``--split``, grades
from ``--grades CSV`` or -1) and ``straighten_report.json`` (per id: centroid, share of the
box inside the scan, ``flagged`` when under ``--min_inside``; flagged volumes are still
written, outside = air).

Example::

    python scripts/straighten.py --ct ct.nii.gz --seg vertebrae.nii.gz --label_map totalseg \\
        --pid s0001 --out datasets/real
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from util.io import write_json_atomic  # noqa: E402
from util.labels import totalseg_to_verse  # noqa: E402
from util.nifti_io import ipl_affine, load_nifti, save_nifti  # noqa: E402
from util.straighten import (  # noqa: E402
    DEFAULT_SMOOTHING_MM3,
    OUT_SHAPE,
    OUT_SPACING_MM,
    load_centroid_json,
    straighten_case,
)

SPLITS = ("train", "val", "test")
GRADES = (-1, 0, 1, 2, 3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--verse_root", type=Path, help="VerSe folder (rawdata/, derivatives/)")
    src.add_argument("--seg", type=Path, help="vertebra label NIfTI of one patient")
    src.add_argument("--ct", type=Path, help="CT NIfTI in HU (optional: labels only without it)")
    src.add_argument("--centroids", type=Path, help="VerSe centroid JSON (voxel X, Y, Z)")
    src.add_argument("--pid", help="patient id for --seg (default: file name of --seg)")
    src.add_argument("--label_map", choices=("verse", "totalseg"), default="verse")
    p.add_argument("--out", type=Path, required=True, help="output data root")
    p.add_argument("--split", choices=SPLITS, default="test", help="split for the new ids")
    p.add_argument("--grades", type=Path, help="CSV of id,grade (Genant 0-3; -1 unknown)")
    p.add_argument("--vertebrae", help="VerSe ids to write, e.g. '18-23' or '20,21'")
    p.add_argument(
        "--min_volume_mm3",
        type=float,
        default=1000.0,
        help="labels smaller than this give no centroid (border fragments)",
    )
    p.add_argument(
        "--min_inside",
        type=float,
        default=0.5,
        help="flag volumes with a smaller share of their box inside the scan",
    )
    p.add_argument(
        "--smoothing_mm3",
        type=float,
        default=DEFAULT_SMOOTHING_MM3,
        help="centreline smoothing (0 = interpolate the centroids)",
    )
    p.add_argument(
        "--rigid_fraction",
        type=float,
        default=0.0,
        help="keep each vertebra rigid over this share of the gap to its neighbours "
        "(0 = planes perpendicular to the curve, as the original; 0.4 keeps native "
        "heights within 1 mm)",
    )
    args = p.parse_args(argv)
    if not 0.0 <= args.rigid_fraction < 0.5:
        p.error("--rigid_fraction must lie in [0, 0.5)")
    if (args.verse_root is None) == (args.seg is None):
        p.error("give exactly one of --verse_root or --seg")
    if args.verse_root is not None and (args.ct or args.centroids or args.pid):
        p.error("--ct, --centroids and --pid go with --seg, not --verse_root")
    return args


def parse_vertebrae(text: str | None) -> list[int] | None:
    """'18-23' or '20,21,28' -> list of ids (``None`` for all)."""
    if text is None:
        return None
    ids: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            ids.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(
            f"--vertebrae: cannot parse {text!r} (use e.g. '18-23' or '20,21')"
        ) from None
    return ids


def read_grades(path: Path) -> dict[str, int]:
    """CSV ``id,grade`` (an optional header row is skipped) -> {id: grade}."""
    if not path.is_file():
        raise FileNotFoundError(f"--grades file not found: {path}")
    grades: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{path}, line {n}: expected 'id,grade', got {row}")
            try:
                grade = int(row[1])
            except ValueError:
                if n == 1:
                    continue  # header
                raise ValueError(f"{path}, line {n}: grade {row[1]!r} is not an integer") from None
            if grade not in GRADES:
                raise ValueError(f"{path}, line {n}: grade {grade} not in {GRADES}")
            grades[row[0].strip()] = grade
    return grades


def _one(folder: Path, pattern: str, what: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if not hits:
        raise FileNotFoundError(f"no {what} ({pattern}) in {folder}")
    return hits[0]


def verse_cases(root: Path) -> list[dict]:
    """One dict (pid, ct, seg, centroids) per subject of a VerSe folder."""
    raw = root / "rawdata"
    if not raw.is_dir():
        raise FileNotFoundError(f"--verse_root: no rawdata/ folder in {root}")
    cases = []
    for sub in sorted(p for p in raw.iterdir() if p.is_dir()):
        deriv = root / "derivatives" / sub.name
        cases.append(
            {
                "pid": sub.name,
                "ct": _one(sub, "*_ct.nii.gz", "CT"),
                "seg": _one(deriv, "*_msk.nii.gz", "vertebra mask"),
                "centroids": _one(deriv, "*_ctd*.json", "centroid file"),
            }
        )
    if not cases:
        raise FileNotFoundError(f"--verse_root: no subject folders in {raw}")
    return cases


def _pid_from(path: Path) -> str:
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    for tail in ("_seg-vert_msk", "_msk", "_seg", "_label", "_labels"):
        name = name.removesuffix(tail)
    return name


def straighten_one(case: dict, args: argparse.Namespace, vertebrae: list[int] | None) -> dict:
    """Straighten one patient into ``args.out``; returns {id: report entry}."""
    seg, seg_aff, _ = load_nifti(case["seg"])
    if seg.ndim != 3:
        raise ValueError(f"{case['seg']}: expected a 3D label volume, got shape {seg.shape}")
    if not np.array_equal(seg, np.round(seg)):
        raise ValueError(f"{case['seg']}: label volume holds non-integer values")
    seg = seg.astype(np.int64)
    if args.label_map == "totalseg":
        seg = totalseg_to_verse(seg)
    if seg.max() <= 0:
        raise ValueError(f"{case['seg']}: no vertebra labels (label map {args.label_map})")
    ct = ct_aff = None
    if case.get("ct") is not None:
        ct, ct_aff, _ = load_nifti(case["ct"], dtype=np.float32)
    centroids = None
    if case.get("centroids") is not None:
        centroids = load_centroid_json(case["centroids"], seg.shape, seg_aff)
    out, pid = Path(args.out), case["pid"]
    affine = ipl_affine(OUT_SPACING_MM)
    report = {}
    vols = straighten_case(
        seg,
        seg_aff,
        ct=ct,
        ct_affine=ct_aff,
        centroids=centroids,
        vertebrae=vertebrae,
        min_volume_mm3=args.min_volume_mm3,
        out_shape=OUT_SHAPE,
        spacing_mm=OUT_SPACING_MM,
        smoothing_mm3=args.smoothing_mm3,
        rigid_fraction=args.rigid_fraction,
    )
    for vol in tqdm(vols, desc=pid, unit="vertebra", leave=False):
        vid = f"{pid}_{vol.vid}"
        save_nifti(out / "label" / f"{vid}.nii.gz", vol.label, affine)
        if vol.ct is not None:
            save_nifti(out / "CT" / f"{vid}.nii.gz", vol.ct, affine)
            heat = np.zeros(OUT_SHAPE, dtype=np.float32)
            save_nifti(out / "heatmap" / f"{vid}.nii.gz", heat, affine)
        flagged = vol.inside_fraction < args.min_inside
        if flagged:
            tqdm.write(
                f"warning: {vid}: only {vol.inside_fraction:.0%} of its box is inside "
                "the scan (written, outside = air)"
            )
        report[vid] = {
            "centroid_world_mm": [round(float(x), 2) for x in vol.centroid_world_mm],
            "inside_fraction": round(vol.inside_fraction, 4),
            "flagged": bool(flagged),
            "source_seg": str(case["seg"]),
        }
    return report


def update_index(out: Path, report: dict, split: str, grades: dict[str, int]) -> dict:
    """Merge the new ids into ``out/vertebra_data.json`` (an id lives in one split only)."""
    path = out / "vertebra_data.json"
    data = {s: {} for s in SPLITS}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for s in SPLITS:
            data[s].update(old.get(s, {}))
    for vid in report:
        for s in SPLITS:
            data[s].pop(vid, None)
        data[split][vid] = grades.get(vid, -1)
    write_json_atomic(path, data)
    rep_path = out / "straighten_report.json"
    old_rep = json.loads(rep_path.read_text(encoding="utf-8")) if rep_path.is_file() else {}
    old_rep.update(report)
    write_json_atomic(rep_path, old_rep)
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        vertebrae = parse_vertebrae(args.vertebrae)
        grades = read_grades(args.grades) if args.grades else {}
        if args.verse_root is not None:
            cases = verse_cases(args.verse_root)
        else:
            for flag in ("seg", "ct", "centroids"):
                f = getattr(args, flag)
                if f is not None and not f.is_file():
                    raise FileNotFoundError(f"--{flag}: file not found: {f}")
            cases = [
                {
                    "pid": args.pid or _pid_from(args.seg),
                    "ct": args.ct,
                    "seg": args.seg,
                    "centroids": args.centroids,
                }
            ]
        report: dict = {}
        for case in tqdm(cases, desc="patients", unit="patient", disable=len(cases) < 2):
            try:
                report.update(straighten_one(case, args, vertebrae))
            except ValueError as exc:
                raise ValueError(f"{case['pid']}: {exc}") from exc
        update_index(args.out, report, args.split, grades)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_flag = sum(r["flagged"] for r in report.values())
    print(f"wrote {len(report)} vertebrae to {args.out} (split {args.split}; {n_flag} flagged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
