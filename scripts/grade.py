"""Genant grading from RHLV: a linear class-balanced SVM under stratified CV.

Example::

    python scripts/grade.py --heights heights.csv --out results/grading

See ``evaluation/grading.py`` for the features, the classifier and the file formats;
``--protocol healthivert --splits vertebra_data.json`` grades them the original HealthiVert-GAN's
way (``evaluation/healthivert_protocol.py``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from evaluation.grading import load_heights_table, run_grading, summary_lines
from evaluation.healthivert_protocol import PROTOCOLS
from util.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Genant grading from RHLV (linear SVM, CV).")
    parser.add_argument("--heights", required=True, help="per-vertebra heights (.csv or .json)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CV folds")
    parser.add_argument(
        "--protocol",
        default="ours",
        choices=list(PROTOCOLS),
        help="ours (out-of-fold CV) or the original HealthiVert-GAN's (val scored per fold)",
    )
    parser.add_argument("--splits", help="split file (vertebra_data.json): --protocol healthivert")
    args = parser.parse_args(argv)
    splits = json.loads(Path(args.splits).read_text(encoding="utf-8")) if args.splits else None
    table = load_heights_table(args.heights)
    result = run_grading(table, args.out, args.seed, protocol=args.protocol, splits=splits)
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    run_main(main)
