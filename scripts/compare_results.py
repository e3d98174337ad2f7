"""Print one table comparing test.py summaries (and the trivial fill baseline beside them).

    python scripts/compare_results.py results/demo_gan/test_latest \
        results/demo_diffusion/test_latest \
        [--grading results/demo_gan/grading_all_eval results/demo_diffusion/grading_all_eval]

See ``evaluation/compare.py`` for the rows and the ``--grading`` column.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from evaluation.compare import comparison_report
from util.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "folders",
        nargs="+",
        type=Path,
        help="result folders of test.py (<results_dir>/<name>/<phase>_<epoch>)",
    )
    parser.add_argument(
        "--grading",
        nargs="+",
        type=Path,
        default=None,
        help="grading.json files (or their folders) of grade_synthesis.py, one per result folder",
    )
    args = parser.parse_args(argv)
    print(comparison_report(args.folders, args.grading))
    return 0


if __name__ == "__main__":
    run_main(main)
