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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data import find_dataset
from evaluation.slice_eval import evaluate
from models import create_model
from options.test_options import TestOptions, results_dir
from util.cli import run_main
from util.io import staged_dir, write_json_atomic
from util.metrics import summarise
from util.misc import seed_everything
from util.report import per_vertebra_means, write_html, write_metrics_csv
from util.volumes import write_synthesised_volumes

#: Metrics printed at the end (and shown first in summary.json readers).
HEADLINE = (
    "ssim_patch",
    "psnr_patch",
    "l1_patch",
    "ssim_global",
    "psnr_global",
    "dice",
    "iou",
    "rhdr",
    "rhdr_head",
    "hf_ratio",
)


def run(opt, out_dir: Path | None = None) -> dict:
    """Evaluate and write the report into ``out_dir`` (default: :func:`results_dir`)."""
    seed_everything(opt.seed)
    dataset = find_dataset(opt.dataset_mode).from_opt(opt)
    model = create_model(opt)
    model.setup(opt)
    model.eval()
    epoch_label = str(opt.epoch)
    final_dir = results_dir(opt)  # --name checked to stay below --results_dir
    out_dir = out_dir or final_dir
    columns = {"netG_type": opt.netG_type}

    result = evaluate(
        model,
        dataset,
        batch_size=opt.batch_size,
        num_workers=opt.num_workers,
        max_batches=opt.num_test,
        keep_slices=opt.save_volumes,
        seed=opt.seed,
        desc=f"{opt.name} {opt.phase}",
        extra_columns=lambda: columns,
    )
    if not result.rows:
        raise ValueError(
            f"no slice of {opt.dataroot} ({opt.phase}) passed the evaluation "
            "filter; nothing to report"
        )
    write_metrics_csv(out_dir / "metrics.csv", result.rows)
    n = len(result.rows)
    summary = {
        "name": opt.name,
        "netG_type": opt.netG_type,
        "phase": opt.phase,
        "checkpoint": str(model.checkpoint_path(epoch_label)),
        "checkpoint_epoch": model.epoch,
        "steps": result.steps,
        "ema": bool(model.use_ema),
        "num_samples": getattr(opt, "num_samples", 1),
        "n_slices": n,
        "n_vertebrae": len({r["id"] for r in result.rows}),
        "wall_time_s": result.seconds,
        "seconds_per_slice": result.seconds / n,
        "device": opt.device,
        "metrics": summarise(result.rows),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    means = summary["metrics"]
    lines = [
        f"{opt.netG_type} | {opt.phase} | checkpoint epoch {model.epoch} | {n} slices of "
        f"{summary['n_vertebrae']} vertebrae | {summary['seconds_per_slice'] * 1e3:.1f} "
        "ms per slice"
    ]
    lines.append("  ".join(f"{k} {means[k]['mean']:.4g}" for k in HEADLINE if k in means))
    write_html(
        out_dir,
        f"{opt.name}: {opt.phase} (epoch {epoch_label})",
        lines,
        result.images,
        per_vertebra_means(result.rows),
    )
    if opt.save_volumes:
        write_synthesised_volumes(dataset, result.slices, out_dir / "volumes")
    for line in lines:
        print(line)
    fill = {
        k: means[f"fill_{k}"]["mean"]
        for k in ("ssim_patch", "psnr_patch", "l1_patch")
        if f"fill_{k}" in means
    }
    if fill:
        print("  trivial fill baseline: " + "  ".join(f"{k} {v:.4g}" for k, v in fill.items()))
    print(f"results in {final_dir} (index.html, metrics.csv, summary.json)")
    return summary


def main(argv: list[str] | None = None) -> int:
    options = TestOptions(argv)
    opt = options.parse()
    np.seterr(all="ignore")  # constant regions give nan metrics, counted in summary.json
    # the whole report appears at once, or not at all (a failed run leaves no half report)
    with staged_dir(results_dir(opt)) as out_dir:
        options.save(opt, out_dir)
        run(opt, out_dir)
    return 0


if __name__ == "__main__":
    run_main(main)
