"""Speed and size of the data pipeline and of both generators (CPU by default).

Usage::

    python scripts/benchmark.py [--only dataset,gan,diffusion] [--threads 2] [--repeats 3]
        [--quick] [--out results/benchmark.json] [--gpu_ids -1] [--dataroot ROOT]

See ``benchmarks/runner.py`` for what is measured and how; the targets live in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks.config import SECTIONS, parse_sections
from benchmarks.runner import run_benchmarks
from util.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (64 px, 1 repeat)")
    p.add_argument("--out", default="results/benchmark.json", help="JSON file to write")
    p.add_argument("--gpu_ids", default="-1", help="-1 = CPU (the targets are CPU figures)")
    p.add_argument("--dataroot", default=None, help="existing data root (default: a phantom)")
    p.add_argument("--direct_budget_s", type=float, default=None,
                   help="longest direct DDIM measurement per configuration before "
                   "extrapolating (default 10 s, 2 s with --quick)")  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_benchmarks(
        parse_sections(args.only), args.out, quick=args.quick, repeats=args.repeats,
        direct_budget_s=args.direct_budget_s, threads=args.threads, gpu_ids=args.gpu_ids,
        dataroot=args.dataroot,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    run_main(main)
