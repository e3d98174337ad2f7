"""Genant grading from RHLV: a linear class-balanced SVM under stratified CV.

Example::

    python scripts/grade.py --heights heights.csv --out results/grading

See ``evaluation/grading.py`` for the features, the classifier and the file formats.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evaluation.grading import load_heights_table, run_grading, summary_lines
from util.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Genant grading from RHLV (linear SVM, CV).")
    parser.add_argument("--heights", required=True, help="per-vertebra heights (.csv or .json)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CV folds")
    args = parser.parse_args(argv)
    result = run_grading(load_heights_table(args.heights), args.out, args.seed)
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    run_main(main)
