"""Morphometry of the phantom's healthy vertebrae beside the published values it follows.

Example::

    python scripts/phantom_morphometry.py --dataroot datasets/phantom \
        --totalseg ../shared/data/totalseg_example --case0007 ../shared/data/healthivert_0007

Prints, per level T10-L5, Ha/Hp, Hc/Hp, wedging, Hp/Hp' and Hp/Hp'' as mean (SD) n: the
published (women) value, the phantom's women and men, and the real spines' single values.
See ``evaluation/morphometry.py`` for the definitions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data.phantom_anatomy import SAMPLE_VERTEBRAE
from evaluation.morphometry import phantom_measures, real_columns, summarise, table_rows
from util.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataroot", required=True, help="phantom root with heights.json")
    parser.add_argument(
        "--totalseg", help="TotalSegmentator example folder (vertebrae_labels, _body)"
    )
    parser.add_argument("--case0007", help="folder with raw_0007_msk.nii.gz (VerSe ids)")
    args = parser.parse_args(argv)
    measures = phantom_measures(args.dataroot)
    columns = {f"phantom {s}": summarise(v) for s, v in sorted(measures.items())}
    real = {}
    if args.totalseg:
        d = Path(args.totalseg)
        real["TotalSegmentator example"] = {
            "seg": str(d / "vertebrae_labels.nii.gz"),
            "body": str(d / "vertebrae_body.nii.gz"),
            "label_map": "totalseg",
        }
    if args.case0007:
        real["case 0007"] = {
            "seg": str(Path(args.case0007) / "raw_0007_msk.nii.gz"),
            "label_map": "verse",
        }
    columns.update(real_columns(real))
    print("\n".join(table_rows(SAMPLE_VERTEBRAE, columns)))
    return 0


if __name__ == "__main__":
    run_main(main)
