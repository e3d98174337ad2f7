"""Quality vs sampling steps of a trained diffusion model, for DDIM and DPM-Solver++.

Example::

    python scripts/step_sweep.py --dataroot datasets/phantom64 --name diff64 \
        --netG_type diffusion --img_size 64 --gpu_ids -1 --phase test \
        [--samplers ddim,dpmsolver++] [--steps 1,2,4,8,16,25,50] [--out sweep]

Every flag of ``test.py`` is accepted (``--num_test N``: the first N batches only). Writes
``<out>.json``, ``<out>.md``, ``<out>.png`` (the curves; default
``<results_dir>/<name>/step_sweep_<phase>``) and prints the table; library:
``evaluation/step_sweep.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from data import find_dataset
from evaluation.step_sweep import markdown_table, plot_sweep, step_sweep
from models import create_model
from options.test_options import TestOptions
from util.cli import run_main
from util.io import write_json_atomic
from util.misc import seed_everything


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] + " (+ every test.py flag)")
    p.add_argument("--samplers", default="ddim,dpmsolver++", help="comma-separated samplers")
    p.add_argument("--steps", type=_ints, default=[1, 2, 4, 8, 16, 25, 50], help="e.g. 1,4,16")
    p.add_argument("--out", default=None, help="output path without suffix")
    args, rest = p.parse_known_args(None if argv is None else list(argv))
    opt = TestOptions(list(rest)).parse(save=False)
    seed_everything(opt.seed)
    dataset = find_dataset(opt.dataset_mode).from_opt(opt)
    model = create_model(opt)
    model.setup(opt)
    table = step_sweep(
        model,
        dataset,
        samplers=[s.strip() for s in args.samplers.split(",") if s.strip()],
        steps_list=args.steps,
        batch_size=opt.batch_size,
        seed=opt.seed,
        max_batches=opt.num_test,
    )
    out = Path(args.out or Path(opt.results_dir) / opt.name / f"step_sweep_{opt.phase}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), {"name": opt.name, "rows": table})
    text = markdown_table(table)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    plot_sweep(table, out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    run_main(main)
