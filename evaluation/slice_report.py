"""What ``test.py`` runs: evaluate a split with a trained model and write its report, in one
process (:func:`evaluate_split`), as one shard of N (:func:`evaluate_split_shard`), or as the
merge of the N shards (:func:`merge_report`); :func:`run_test` chooses from the options.

The report in ``<results_dir>/<name>/<phase>_<epoch>/``: ``metrics.csv`` (one row per slice),
``summary.json`` (mean/std of every metric, counts, timing), ``index.html`` (input / output /
truth / difference / baseline / uncertainty per vertebra, worst band SSIM first) with
``images/``, ``test_opt.txt``/``test_opt.json`` and, with ``--save_volumes``, the synthesised
NIfTI volumes. One process writes the folder at once (it appears complete or not at all);
shards write their records into it (:mod:`evaluation.slice_shard`) and the merge writes the
same report files, each atomically, from them. Nothing is written into the checkpoint folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from data import find_dataset
from evaluation.slice_eval import EvalResult, evaluate
from evaluation.slice_shard import evaluate_shard, merge_shards, report_path
from models import create_model
from options.base_options import options_to_dict
from options.test_options import results_dir
from util.io import staged_dir, write_json_atomic
from util.metrics import summarise
from util.misc import seed_everything
from util.report import per_vertebra_means, write_html, write_metrics_csv
from util.shard import Shard, parse_shard, resolve_shard
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
#: Options that do not change a vertebra's rows: a shard restarted with other values of
#: these still skips what it finished.
_NOT_IN_FINGERPRINT = (
    "device",
    "gpu_ids",
    "num_workers",
    "max_cache_mb",
    "verbose",
    "results_dir",
    "shard",
    "merge",
)

SaveOptions = Callable[[argparse.Namespace, Path], None]


def run_test(opt: argparse.Namespace, save_options: SaveOptions) -> dict[str, Any]:
    """test.py: ``--merge`` merges the shards; ``--shard i/N`` with N > 1 (or ``RANK`` /
    ``WORLD_SIZE`` under torchrun) evaluates one shard; otherwise one process evaluates the
    whole split. ``save_options(opt, folder)`` writes ``test_opt.*``. Returns the summary
    (a shard: its report)."""
    if opt.merge:
        return merge_report(opt, save_options)
    shard = resolve_shard(parse_shard(opt.shard) if opt.shard else None)
    if shard.count > 1:
        return evaluate_split_shard(opt, shard)
    # the whole report appears at once, or not at all (a failed run leaves no half report)
    with staged_dir(results_dir(opt)) as out_dir:
        save_options(opt, out_dir)
        return evaluate_split(opt, out_dir)


def _load(opt: argparse.Namespace) -> tuple[Any, Any]:
    seed_everything(opt.seed)
    dataset = find_dataset(opt.dataset_mode).from_opt(opt)
    model = create_model(opt)
    model.setup(opt)
    model.eval()
    return model, dataset


def model_info(opt: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The summary's description of the model and run (a shard's report carries it)."""
    return {
        "name": opt.name,
        "netG_type": opt.netG_type,
        "phase": opt.phase,
        "checkpoint": str(model.checkpoint_path(str(opt.epoch))),
        "checkpoint_epoch": model.epoch,
        "ema": bool(model.use_ema),
        "num_samples": getattr(opt, "num_samples", 1),
        "device": opt.device,
    }


def _evaluation_args(opt: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``evaluate`` and ``evaluate_shard`` from the options."""
    return {
        "batch_size": opt.batch_size,
        "num_workers": opt.num_workers,
        "max_batches": opt.num_test,
        "keep_slices": opt.save_volumes,
        "seed": opt.seed,
        "extra_columns": lambda: {"netG_type": opt.netG_type},
    }


def evaluate_split(opt: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """One process: evaluate the split of ``opt`` and write the report into ``out_dir``."""
    model, dataset = _load(opt)
    result = evaluate(model, dataset, desc=f"{opt.name} {opt.phase}", **_evaluation_args(opt))
    summary = write_report(out_dir, result, model_info(opt, model), _title(opt))
    if opt.save_volumes:
        write_synthesised_volumes(dataset, result.slices, out_dir / "volumes")
    print(f"results in {results_dir(opt)} (index.html, metrics.csv, summary.json)")
    return summary


def evaluate_split_shard(opt: argparse.Namespace, shard: Shard) -> dict[str, Any]:
    """One shard: evaluate its vertebrae not yet recorded into the results folder."""
    model, dataset = _load(opt)
    out_dir = results_dir(opt)
    ckpt = Path(model.checkpoint_path(str(opt.epoch)))
    skip = set(_NOT_IN_FINGERPRINT)
    run = {k: v for k, v in options_to_dict(opt).items() if k not in skip}
    run["checkpoint_mtime_ns"] = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
    report = evaluate_shard(
        model,
        dataset,
        out_dir,
        shard,
        run=run,
        info=model_info(opt, model),
        desc=f"{opt.name} {opt.phase} {shard}",
        **_evaluation_args(opt),
    )
    n, new = len(report["vertebrae"]), len(report["evaluated"])
    print(
        f"shard {shard}: {n} vertebrae ({new} evaluated now, {n - new} already done) -> "
        f"{report_path(out_dir, shard)}; after every shard: test.py ... --merge"
    )
    return report


def merge_report(opt: argparse.Namespace, save_options: SaveOptions) -> dict[str, Any]:
    """Merge the shard records of the results folder into the report one process writes."""
    out_dir = results_dir(opt)
    result, info = merge_shards(out_dir)
    save_options(opt, out_dir)
    summary = write_report(out_dir, result, info, _title(opt))
    print(f"merged {summary['n_vertebrae']} vertebrae; results in {out_dir}")
    return summary


def _title(opt: argparse.Namespace) -> str:
    return f"{opt.name}: {opt.phase} (epoch {opt.epoch})"


def write_report(
    out_dir: Path, result: EvalResult, info: Mapping[str, Any], title: str
) -> dict[str, Any]:
    """Write ``metrics.csv``, ``summary.json`` and ``index.html`` of ``result`` into
    ``out_dir``, print the headline and return the summary (``info``: :func:`model_info`).
    ``wall_time_s`` is the evaluation time summed over the vertebrae (over the processes
    for merged shards)."""
    if not result.rows:
        raise ValueError(f"no slice of the {info['phase']} split passed the evaluation filter")
    write_metrics_csv(out_dir / "metrics.csv", result.rows)
    n = len(result.rows)
    summary = {
        **{k: info[k] for k in ("name", "netG_type", "phase", "checkpoint", "checkpoint_epoch")},
        "steps": result.steps,
        "ema": info["ema"],
        "num_samples": info["num_samples"],
        "n_slices": n,
        "n_vertebrae": len({r["id"] for r in result.rows}),
        "wall_time_s": result.seconds,
        "seconds_per_slice": result.seconds / n,
        "device": info["device"],
        "metrics": summarise(result.rows),
    }
    write_json_atomic(out_dir / "summary.json", summary)
    means = summary["metrics"]
    lines = [
        f"{info['netG_type']} | {info['phase']} | checkpoint epoch {info['checkpoint_epoch']} "
        f"| {n} slices of {summary['n_vertebrae']} vertebrae | "
        f"{summary['seconds_per_slice'] * 1e3:.1f} ms per slice"
    ]
    lines.append("  ".join(f"{k} {means[k]['mean']:.4g}" for k in HEADLINE if k in means))
    write_html(out_dir, title, lines, result.images, per_vertebra_means(result.rows))
    for line in lines:
        print(line)
    fill = {
        k: means[f"fill_{k}"]["mean"]
        for k in ("ssim_patch", "psnr_patch", "l1_patch")
        if f"fill_{k}" in means
    }
    if fill:
        print("  trivial fill baseline: " + "  ".join(f"{k} {v:.4g}" for k, v in fill.items()))
    return summary
