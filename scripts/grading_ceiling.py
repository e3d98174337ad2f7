"""How accurate must a synthesis be to grade better than the neighbour ratio?

Example::

    python scripts/grading_ceiling.py --dataroot datasets/phantom128_eval --phase test

See ``evaluation/grading_ceiling.py`` for the predictors (phantom roots with heights.json).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evaluation.grading_ceiling import grading_ceiling, markdown
from util.cli import run_main
from util.geometry import PHASES
from util.io import write_json_atomic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataroot", required=True, help="phantom root with heights.json")
    parser.add_argument("--phase", choices=list(PHASES), default="test")
    parser.add_argument("--noise", type=float, nargs="+", default=[1, 2, 3, 4, 6], help="%% errors")
    parser.add_argument("--repeats", type=int, default=5, help="draws per error level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="optional JSON file")
    args = parser.parse_args(argv)
    result = grading_ceiling(args.dataroot, args.phase, args.noise, args.repeats, args.seed)
    print(markdown(result))
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    run_main(main)
