"""Quality vs sampling steps: evaluate one trained diffusion model with each sampler at each
step count, through the test.py code path (:func:`evaluation.slice_eval.evaluate`).

Used by ``scripts/step_sweep.py``; the table in docs/BENCHMARKS.md ("Quality vs steps").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.slice_eval import evaluate, pooled_hf_ratio

#: Columns of a sweep row besides sampler and steps (means over slices; hf pooled).
SWEEP_METRICS = ("ssim_patch", "psnr_patch", "l1_patch", "dice", "rhdr", "rhdr_head")


def set_sampler(model: Any, name: str) -> None:
    """Point the model's diffusion generator (and its EMA copy) at sampler ``name``."""
    nets = [model.netG] + ([model.ema.module] if getattr(model, "ema", None) is not None else [])
    for net in nets:
        if not hasattr(net, "sampler_name"):
            raise ValueError(f"--netG_type {type(net).__name__} has no sampler to sweep")
        net.sampler_name = name


def summary_row(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means of :data:`SWEEP_METRICS` (finite values) and of the fill baseline, and the
    pooled texture ratios ``hf_ratio`` / ``fill_hf_ratio`` over ``rows`` of ``evaluate``."""
    out: dict[str, float] = {"n_slices": float(len(rows))}
    for key in (*SWEEP_METRICS, "fill_ssim_patch", "fill_psnr_patch", "fill_l1_patch"):
        vals = np.asarray([float(r[key]) for r in rows if key in r], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[key] = float(vals.mean()) if vals.size else float("nan")
    out["hf_ratio"] = pooled_hf_ratio(rows)
    out["fill_hf_ratio"] = pooled_hf_ratio(rows, "fill_")
    return out


def step_sweep(
    model: Any,
    dataset: Any,
    *,
    samplers: Sequence[str] = ("ddim", "dpmsolver++"),
    steps_list: Sequence[int] = (1, 2, 4, 8, 16, 25, 50),
    batch_size: int = 8,
    seed: int = 0,
    max_batches: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (sampler, steps): :func:`summary_row` plus ``sampler``, ``steps`` and
    ``seconds_per_slice``, on the first ``max_batches`` batches (None: all). The same seed
    (initial noise) for every row."""
    table = []
    for name in samplers:
        set_sampler(model, name)
        for steps in steps_list:
            res = evaluate(
                model, dataset, batch_size=batch_size, steps=int(steps), seed=seed,
                max_batches=max_batches, desc=f"{name} {steps} steps",
            )  # fmt: skip
            row = {"sampler": name, "steps": int(steps), **summary_row(res.rows)}
            row["seconds_per_slice"] = res.seconds / max(len(res.rows), 1)
            table.append(row)
    return table


def markdown_table(table: list[dict[str, Any]]) -> str:
    """The sweep as a markdown table (band SSIM / PSNR / L1, Dice, RHDR, texture, s/slice)."""
    head = "| sampler | steps | band SSIM | band PSNR | band L1 | Dice | RHDR % | hf_ratio "
    head += "| ms/slice |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['ssim_patch']:.3f} | {r['psnr_patch']:.2f} "
            f"| {r['l1_patch']:.4f} | {r['dice']:.3f} | {r['rhdr']:.1f} "
            f"| {r['hf_ratio']:.2f} | {1e3 * r['seconds_per_slice']:.0f} |"
        )
    return "\n".join(lines)


def plot_sweep(table: list[dict[str, Any]], path: str | Path) -> None:
    """Band SSIM, band L1 and texture (``hf_ratio``) against the steps, one line per sampler
    (log-scaled steps; the fill baseline dashed), written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (
        ("ssim_patch", "band SSIM"),
        ("l1_patch", "band L1"),
        ("hf_ratio", "texture (hf_ratio)"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for sampler in dict.fromkeys(r["sampler"] for r in table):
            rows = [r for r in table if r["sampler"] == sampler]
            ax.plot([r["steps"] for r in rows], [r[key] for r in rows], "o-", label=sampler)
        ax.axhline(table[0][f"fill_{key}"], color="k", ls="--", lw=1, label="fill")
        if key == "hf_ratio":
            ax.axhspan(0.8, 1.2, color="g", alpha=0.1, label="truth +- 20 %")
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
