"""Straighten spine CTs into a data root: one 256 x 256 x 64 (I, P, L) volume per vertebra.

Inputs (one of):

* ``--verse_root DIR``: VerSe layout (``rawdata/``, ``derivatives/``); the patient id is the
  subject folder name (``sub-verse007`` -> ``sub-verse007_20``).
* ``--cases_root DIR``: one folder per case (the folder name is the patient id) holding a
  vertebra label NIfTI (TotalSegmentator's ``vertebrae_labels.nii.gz``, or ``vertebrae``,
  ``seg``, ``label`` ``.nii.gz``) and the CT as ``ct.nii.gz`` or as a DICOM series in ``ct/``.
* ``--seg SEG [--ct CT] [--centroids JSON] [--pid PID]``: one patient. Without ``--ct`` only
  labels are written (no ``CT/``, no ``heatmap/``): a label-only output is no training root.

The output is a ``--dataroot`` (``CT/``, ``label/``, ``heatmap/`` all zeros until
``scripts/make_heatmaps.py``, ``vertebra_data.json`` with the new ids in ``--split``, and
``straighten_report.json``); see ``data/straighten_root.py``.

A cohort (``--verse_root`` or ``--cases_root``) runs sharded and resumable
(``data/cohort.py``): ``--shard i/N`` (or ``RANK``/``WORLD_SIZE`` under ``torchrun``) takes a
disjoint subset of the cases, a case whose outputs are complete is skipped, and a failing case
is reported and does not stop the run. With one shard the index is merged at the end; with N
shards run ``--merge`` once after all of them. ``straighten_cohort.json`` lists every case
done, skipped (why) or failed (the error); the exit status is 1 when a case failed.

Example::

    python scripts/straighten.py --ct ct.nii.gz --seg vertebrae.nii.gz --label_map totalseg \\
        --pid s0001 --out datasets/real
    # a job array of 4 shards over a TotalSegmentator cohort, then one merge
    python scripts/straighten.py --cases_root cohort/ --label_map totalseg --out datasets/real \\
        --shard 0/4        # ... 1/4, 2/4, 3/4
    python scripts/straighten.py --out datasets/real --merge
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data.check import SPLITS
from data.cohort import folder_cases, format_summary, merge_shards, straighten_shard
from data.straighten_root import (
    StraightenSettings,
    read_grades,
    single_case,
    straighten_to_root,
    verse_cases,
)
from util.cli import run_main
from util.shard import resolve_shard, shard_arg
from util.straighten import DEFAULT_SMOOTHING_MM3


def _vertebrae(text: str) -> tuple[int, ...]:
    """'18-23' or '20,21,28' -> the VerSe ids."""
    ids: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            ids.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"cannot parse {text!r} (use e.g. '18-23' or '20,21')"
        ) from None
    return tuple(ids)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("--verse_root", type=Path, help="VerSe folder (rawdata/, derivatives/)")
    src.add_argument(
        "--cases_root", type=Path, help="one folder per case: label NIfTI + ct.nii.gz or ct/"
    )
    src.add_argument("--seg", type=Path, help="vertebra label NIfTI of one patient")
    src.add_argument("--ct", type=Path, help="CT NIfTI in HU (optional: labels only without it)")
    src.add_argument("--centroids", type=Path, help="VerSe centroid JSON (voxel X, Y, Z)")
    src.add_argument("--pid", help="patient id for --seg (default: file name of --seg)")
    src.add_argument("--label_map", choices=("verse", "totalseg"), default="verse")
    p.add_argument("--out", type=Path, required=True, help="output data root")
    p.add_argument(
        "--shard",
        type=shard_arg,
        help="'i/N': this process's share of a cohort (default: RANK/WORLD_SIZE, else 0/1)",
    )
    p.add_argument("--merge", action="store_true", help="merge the shard reports of --out and stop")
    p.add_argument("--split", choices=SPLITS, default="test", help="split for the new ids")
    p.add_argument("--grades", type=Path, help="CSV of id,grade (Genant 0-3; -1 unknown)")
    p.add_argument(
        "--vertebrae", type=_vertebrae, help="VerSe ids to write, e.g. '18-23' or '20,21'"
    )
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
    inputs = [x for x in (args.verse_root, args.cases_root, args.seg) if x is not None]
    if args.merge:
        if inputs:
            p.error("--merge reads the shard reports of --out; give no input")
        return args
    if len(inputs) != 1:
        p.error("give exactly one of --verse_root, --cases_root or --seg")
    if args.seg is None and (args.ct or args.centroids or args.pid):
        p.error("--ct, --centroids and --pid go with --seg")
    if args.seg is not None and args.shard is not None:
        p.error("--shard goes with a cohort (--verse_root or --cases_root)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        cohort = merge_shards(args.out)
        print(format_summary(cohort))
        return 1 if cohort["summary"]["failed"] else 0
    grades = read_grades(args.grades) if args.grades else {}
    settings = StraightenSettings(
        vertebrae=args.vertebrae,
        label_map=args.label_map,
        min_volume_mm3=args.min_volume_mm3,
        min_inside=args.min_inside,
        smoothing_mm3=args.smoothing_mm3,
        rigid_fraction=args.rigid_fraction,
    )
    if args.seg is None:
        cases = verse_cases(args.verse_root) if args.verse_root else folder_cases(args.cases_root)
        shard = resolve_shard(args.shard)
        rep = straighten_shard(
            cases, args.out, settings, shard=shard, split=args.split, grades=grades
        )
        if shard.count > 1:
            n = sum(r["status"] == "failed" for r in rep["cases"].values())
            print(f"shard {shard}: {len(rep['cases'])} cases, {n} failed; then run --merge")
            return 1 if n else 0
        cohort = merge_shards(args.out, count=1)
        print(format_summary(cohort))
        return 1 if cohort["summary"]["failed"] else 0
    case = single_case(args.seg, args.ct, args.centroids, args.pid)
    report = straighten_to_root([case], args.out, settings, split=args.split, grades=grades)
    n_flag = sum(r["flagged"] for r in report.values())
    print(f"wrote {len(report)} vertebrae to {args.out} (split {args.split}; {n_flag} flagged)")
    return 0


if __name__ == "__main__":
    run_main(main)
