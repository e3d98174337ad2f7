"""Validate a data root before training; list every problem, not just the first.

Checks (see docs/ARCHITECTURE.md, "Data root layout", and ``data/check.py``): the split file
``vertebra_data.json`` (splits, grades, no id twice), and for every id readable 3D ``CT/``,
``label/`` and ``heatmap/`` volumes of one shape in (I, P, L) orientation with values in range
and the vertebra present in its label.

Exit status 0 when clean, 1 when there are problems (all printed).

Example::

    python scripts/check_dataset.py --dataroot datasets/real --require_splits train val
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from data.check import (
    SPLITS,
    VolumeInfo,
    check_dataset,
    format_table,
    problem_report,
    split_summary,
)
from util.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataroot", type=Path, required=True)
    p.add_argument(
        "--require_splits",
        nargs="*",
        default=[],
        choices=SPLITS,
        help="splits that must be non-empty (e.g. train val before training)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-id table, only the summary")
    args = p.parse_args(argv)
    infos: list[VolumeInfo] = []
    problems = check_dataset(args.dataroot, args.require_splits, infos, progress=True)
    if not args.quiet and infos:
        print(format_table(infos))
    print(split_summary(infos))
    if problems:
        print(problem_report(problems, args.dataroot), file=sys.stderr)
        return 1
    print(f"OK: {args.dataroot} passes every check")
    return 0


if __name__ == "__main__":
    run_main(main)
