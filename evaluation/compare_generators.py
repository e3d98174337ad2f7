"""GAN vs diffusion at an equal wall-clock training budget, plus diffusion ablations.

Every variant is trained by ``train.py`` (a subprocess, ``--max_train_minutes``; constant
learning rate, since the epoch count is open) on the same data root and seed, then scored on
the val split through the test.py code path (``Pix2PixModel.infer`` via
:func:`evaluation.slice_eval.evaluate`, the generator's default sampler and steps). Writes
``compare.json``, ``compare.md`` (one row per variant plus the fill baseline) and
``curves.png`` (validation band SSIM and L1 against training minutes). CLI:
``scripts/compare_generators.py``; results: docs/BENCHMARKS.md ("GAN vs diffusion").
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import find_dataset
from evaluation.slice_eval import evaluate
from evaluation.step_sweep import summary_row
from models import create_model
from options.test_options import TestOptions
from util.io import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One trained model: a name, its ``--netG_type`` and extra train flags."""

    name: str
    netg: str
    flags: tuple[str, ...] = field(default_factory=tuple)


#: The two generators with their defaults.
BASE = (Variant("gan", "gan"), Variant("diffusion", "diffusion"))
#: ``--ablation`` names: one diffusion component switched off (or, ``stage1``, the opt-in
#: predict-then-refine mean switched on; ``probe_heads``, the segmenter replaced by the
#: denoiser's own heads) each.
ABLATIONS = {
    "no_cam": Variant("diffusion_no_cam", "diffusion", ("--no_cam",)),
    "no_gan": Variant("diffusion_no_gan", "diffusion", ("--lambda_GAN", "0")),
    "no_edge": Variant("diffusion_no_edge", "diffusion", ("--lambda_edge", "0")),
    "no_minsnr": Variant("diffusion_no_minsnr", "diffusion", ("--snr_gamma", "0")),
    "no_shrm": Variant("diffusion_no_shrm", "diffusion", ("--shrm", "off")),
    "stage1": Variant("diffusion_stage1", "diffusion", ("--diffusion_residual", "stage1")),
    "probe_heads": Variant("diffusion_probe_heads", "diffusion", ("--diffusion_heads", "denoiser")),
}


def variants_for(ablation: Sequence[str]) -> list[Variant]:
    """GAN, diffusion and the named ablations; a clear error for an unknown name."""
    unknown = [a for a in ablation if a not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown --ablation {unknown}; choose from: {', '.join(ABLATIONS)}")
    return [*BASE, *(ABLATIONS[a] for a in ablation)]


def _common(dataroot: str, img_size: int, seed: int, batch_size: int, ckpt: Path) -> list[str]:
    return [
        "--dataroot", dataroot, "--img_size", str(img_size), "--gpu_ids", "-1",
        "--seed", str(seed), "--batch_size", str(batch_size), "--num_workers", "0",
        "--checkpoints_dir", str(ckpt),
    ]  # fmt: skip


def train_variant(v: Variant, common: list[str], minutes: float, eval_batches: int) -> None:
    """``train.py`` for ``minutes`` of wall clock (validated every epoch on a few batches)."""
    argv = [
        sys.executable, str(REPO / "train.py"), *common, "--name", v.name, "--netG_type", v.netg,
        "--n_epochs", "100000", "--n_epochs_decay", "0", "--max_train_minutes", str(minutes),
        "--eval_freq", "1", "--eval_max_batches", str(eval_batches), "--no_html", *v.flags,
    ]  # fmt: skip
    log = Path(common[common.index("--checkpoints_dir") + 1]) / f"{v.name}.train.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as out:
        subprocess.run(argv, check=True, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def evaluate_variant(v: Variant, common: list[str], phase: str = "val") -> dict[str, Any]:
    """Score the ``latest`` checkpoint of ``v`` on ``phase`` like test.py does."""
    argv = [*common, "--name", v.name, "--netG_type", v.netg, "--phase", phase, *v.flags]
    opt = TestOptions(_test_flags(argv)).parse(save=False)
    dataset = find_dataset(opt.dataset_mode).from_opt(opt)
    model = create_model(opt)
    model.setup(opt)
    res = evaluate(model, dataset, batch_size=opt.batch_size, seed=opt.seed, desc=v.name)
    return {"name": v.name, "netG_type": v.netg, "flags": " ".join(v.flags),
            "epochs": model.epoch, **summary_row(res.rows)}  # fmt: skip


def _test_flags(argv: list[str]) -> list[str]:
    """Drop training-only flags (the loss weights) that test.py does not know."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--lambda_GAN", "--lambda_edge"):
            skip = True
            continue
        out.append(a)
    return out


def validation_curves(ckpt: Path, name: str) -> list[dict[str, float]]:
    """``(epoch, minutes, val_ssim_patch, val_l1_patch...)`` of a run's loss_history.json;
    minutes are estimated from the epoch count (training is cut at the budget)."""
    path = ckpt / name / "web" / "loss_history.json"
    if not path.exists():
        return []
    return json.loads(path.read_text(encoding="utf-8")).get("val", [])


def write_outputs(out: Path, rows: list[dict[str, Any]], curves: dict[str, list], meta: dict):
    """``compare.json``, ``compare.md`` and ``curves.png`` under ``out``."""
    write_json_atomic(out / "compare.json", {**meta, "rows": rows, "curves": curves})
    head = "| model | flags | epochs | band SSIM | band PSNR | band L1 | Dice | RHDR % | hf_ratio |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['flags'] or '-'} | {r['epochs']} | {r['ssim_patch']:.3f} "
            f"| {r['psnr_patch']:.2f} | {r['l1_patch']:.4f} | {r['dice']:.3f} "
            f"| {r['rhdr']:.1f} | {r['hf_ratio']:.2f} |"
        )
    f = rows[0]
    lines.append(
        f"| fill baseline | - | - | {f['fill_ssim_patch']:.3f} | {f['fill_psnr_patch']:.2f} "
        f"| {f['fill_l1_patch']:.4f} | - | - | {f['fill_hf_ratio']:.2f} |"
    )
    (out / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, pts in curves.items():
        pts = [p for p in pts if "val_ssim_patch" in p]
        ep = [p["epoch"] for p in pts]
        axes[0].plot(ep, [p["val_ssim_patch"] for p in pts], label=name)
        axes[1].plot(ep, [p["val_l1_patch"] for p in pts], label=name)
    for ax, key, label in (
        (axes[0], "fill_ssim_patch", "band SSIM"),
        (axes[1], "fill_l1_patch", "band L1"),
    ):
        ax.axhline(f[key], color="k", ls="--", label="fill")
        ax.set_xlabel("epoch (equal wall-clock budget)")
        ax.set_ylabel(f"val {label} (first batches)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def compare_generators(
    *,
    dataroot: str,
    out: Path,
    minutes: float,
    img_size: int = 64,
    seed: int = 0,
    batch_size: int = 8,
    ablation: Sequence[str] = (),
    eval_batches: int = 2,
    train: bool = True,
) -> list[dict[str, Any]]:
    """Train (unless ``train=False``: reuse ``out/ckpt``) and score every variant; returns
    the table rows (see :func:`evaluate_variant`) and writes the outputs."""
    variants = variants_for(ablation)
    ckpt = out / "ckpt"
    common = _common(dataroot, img_size, seed, batch_size, ckpt)
    for v in variants if train else ():
        train_variant(v, common, minutes, eval_batches)
    rows = [evaluate_variant(v, common) for v in variants]
    curves = {v.name: validation_curves(ckpt, v.name) for v in variants}
    meta = {"dataroot": dataroot, "img_size": img_size, "minutes_per_model": minutes,
            "seed": seed, "batch_size": batch_size, "split": "val"}  # fmt: skip
    write_outputs(out, rows, curves, meta)
    return rows
