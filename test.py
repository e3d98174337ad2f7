"""Evaluate a trained model on a split and write metric dumps and a visual report.

Example:
    python test.py --dataroot datasets/phantom --name gan_smoke --netG_type gan \
        --img_size 64 --gpu_ids -1 [--epoch latest|best|N] [--phase val|test]

Writes to ``<results_dir>/<name>/<phase>_<epoch>/``: ``metrics.csv`` (one row per slice),
``summary.json`` (mean/std of every metric, counts, timing), ``index.html`` (input / output /
truth / difference / baseline / uncertainty per vertebra, worst band SSIM first),
``test_opt.txt``/``test_opt.json`` and, with ``--save_volumes``, the synthesised NIfTI volumes
with the input's affine and header. The folder appears complete or not at all; nothing is
written into the checkpoint folder.

Sharded (``evaluation/slice_shard.py``): ``--shard i/N`` (or ``RANK``/``WORLD_SIZE`` under
``torchrun``) evaluates a disjoint share of the vertebrae and records them in the same
folder (a restarted shard skips those it finished); after all N, the same command with
``--merge`` instead writes the report one process would (``evaluation/slice_report.py``).
"""

from __future__ import annotations

import numpy as np

from evaluation.slice_report import run_test
from options.test_options import TestOptions
from util.cli import run_main


def main(argv: list[str] | None = None) -> int:
    options = TestOptions(argv)
    opt = options.parse()
    np.seterr(all="ignore")  # constant regions give nan metrics, counted in summary.json
    run_test(opt, options.save)
    return 0


if __name__ == "__main__":
    run_main(main)
