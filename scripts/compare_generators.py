"""GAN vs diffusion at an equal wall-clock training budget (plus diffusion ablations).

Example (the 64 px check of docs/BENCHMARKS.md)::

    python scripts/compare_generators.py --dataroot datasets/phantom64 --img_size 64 \
        --minutes 3 --out results/compare64 [--ablation no_refine,no_gan,...]

Library and method: ``evaluation/compare_generators.py``. Writes ``compare.md``,
``compare.json`` and ``curves.png`` under ``--out`` (checkpoints in ``--out/ckpt``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from evaluation.compare_generators import ABLATIONS, compare_generators
from util.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataroot", required=True, help="phantom or data root")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--minutes", type=float, required=True, help="training budget per model")
    p.add_argument("--img_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--eval_batches", type=int, default=2, help="val batches per epoch (curves)")
    p.add_argument("--ablation", default="", help=f"comma-separated, from: {', '.join(ABLATIONS)}")
    p.add_argument("--no_train", action="store_true", help="score existing checkpoints only")
    a = p.parse_args(None if argv is None else list(argv))
    rows = compare_generators(
        dataroot=a.dataroot, out=Path(a.out), minutes=a.minutes, img_size=a.img_size,
        seed=a.seed, batch_size=a.batch_size, eval_batches=a.eval_batches,
        ablation=[s.strip() for s in a.ablation.split(",") if s.strip()], train=not a.no_train,
    )  # fmt: skip
    print((Path(a.out) / "compare.md").read_text(encoding="utf-8"))
    return 0 if rows else 1


if __name__ == "__main__":
    run_main(main)
