"""Benchmark sections ``gan`` and ``diffusion``: network sizes, forward and training-step
times, DDIM sampling per slice and one whole vertebra."""

from __future__ import annotations

import math
from typing import Any

import torch

from benchmarks.config import REFERENCE, Config
from benchmarks.inputs import (
    build_model,
    generator_input,
    model_size,
    precisions,
    synthetic_batch,
)
from benchmarks.timing import autocast, measure, scaled
from data.vertebra_geometry import central_range
from models.generator_base import GeneratorInput


def train_steps(netg: str, cfg: Config, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """optimize_parameters (G + three Ds) at batch ``train_batch``, per precision."""
    batch = synthetic_batch(cfg.train_batch, cfg.img_size, seed=1)
    out = []
    for prec in precisions(ctx["machine"]):
        model = build_model(netg, cfg, prec, ctx["gpu_ids"], ctx["tmp"])
        model.set_input(batch)
        stats = measure(
            model.optimize_parameters, repeats=cfg.repeats, warmup=cfg.warmup, device=ctx["device"]
        )
        out.append({"precision": prec, "batch": cfg.train_batch, **stats})
        del model
    return out


def bench_gan(cfg: Config, ctx: dict[str, Any]) -> dict[str, Any]:
    """GAN generator: size, forward per slice (batch 1, eval, no_grad), training step."""
    dev = ctx["device"]
    net = build_model("gan", cfg, "fp32", ctx["gpu_ids"], ctx["tmp"]).netG.eval()
    inp = generator_input(synthetic_batch(1, cfg.img_size), dev)
    forward = []
    for prec in precisions(ctx["machine"]):

        def run(prec: str = prec) -> None:
            with torch.no_grad(), autocast(dev, prec):
                net.sample(inp)

        stats = measure(run, repeats=cfg.cheap_repeats, warmup=cfg.warmup, device=dev)
        forward.append({"precision": prec, "batch": 1, **stats})
    return {**model_size(net), "forward": forward, "train_step": train_steps("gan", cfg, ctx)}


def _time_sample(
    gen: torch.nn.Module,
    inp: GeneratorInput,
    steps: int,
    repeats: int,
    device: torch.device,
    prec: str = "fp32",
) -> dict[str, Any]:
    """Timed ``gen.sample`` runs of ``steps`` DDIM steps (no warm-up), seeded noise, under
    the autocast of ``prec`` (as the model's ``--precision``)."""
    seed = torch.Generator(device="cpu").manual_seed(0)

    def run() -> None:
        with autocast(device, prec):
            gen.sample(inp, steps=steps, generator=seed)

    return measure(run, repeats=repeats, warmup=0, device=device)


def _sampling(
    gen: torch.nn.Module, cfg: Config, ctx: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[tuple[int, str], dict[str, float]]]:
    """DDIM through the generator's own sample(): per-step time from short runs, then each
    step count measured directly when that fits the budget, else extrapolated. Returns the
    table's rows and the per-step time of each (batch, precision)."""
    dev = ctx["device"]
    sampling, per_step = [], {}
    for batch in cfg.sample_batches:
        inp = generator_input(synthetic_batch(batch, cfg.img_size, seed=2), dev)
        for prec in precisions(ctx["machine"]):
            for _ in range(cfg.warmup):  # one-step runs build the kernels for this shape
                _time_sample(gen, inp, 1, 1, dev, prec)
            probe = _time_sample(gen, inp, cfg.probe_steps, cfg.repeats, dev, prec)
            step = scaled(probe, 1.0 / cfg.probe_steps)
            per_step[(batch, prec)] = step
            for steps in cfg.sample_steps:
                if step["median_ms"] * steps * cfg.repeats / 1000.0 <= cfg.direct_budget_s:
                    stats = _time_sample(gen, inp, steps, cfg.repeats, dev, prec)
                    method = "measured"
                else:
                    stats, method = scaled(step, steps), "extrapolated"
                sampling.append({
                    "batch": batch, "precision": prec, "steps": steps, "method": method,
                    "per_step_ms": step, "ms_per_call": scaled(stats, 1.0),
                    "ms_per_slice": scaled(stats, 1.0 / batch),
                })  # fmt: skip
    return sampling, per_step


def _whole_vertebra(
    gen: torch.nn.Module,
    cfg: Config,
    ctx: dict[str, Any],
    per_step: dict[tuple[int, str], dict[str, float]],
) -> dict[str, Any]:
    """Every slice of the central 4/5 of an S/4-slice volume, in batches of at most
    ``vertebra_max_batch``, with the generator's default sampler and steps (unless
    ``vertebra_steps``), one full measured run; the other precision extrapolated from
    ``per_step`` (:func:`_sampling`)."""
    dev, machine = ctx["device"], ctx["machine"]
    lo, hi = central_range(0, cfg.img_size // 4 - 1)
    n_slices = hi - lo + 1
    batch = min(cfg.vertebra_max_batch, n_slices)
    n_calls = math.ceil(n_slices / batch)
    prec = "bf16" if machine["bf16"]["fast"] else "fp32"
    inp = generator_input(synthetic_batch(batch, cfg.img_size, seed=3), dev)
    _time_sample(gen, inp, 1, 1, dev, prec)  # warm-up at this batch size (oneDNN plans per shape)
    steps = gen.default_steps if cfg.vertebra_steps is None else cfg.vertebra_steps
    run = _time_sample(gen, inp, steps, 1, dev, prec)
    seconds = run["median_ms"] * n_calls / 1000.0
    ref_b = batch if batch in cfg.sample_batches else max(cfg.sample_batches)
    estimates = {
        p: ms["median_ms"] * batch / ref_b * steps * n_calls / 1000.0
        for (b, p), ms in per_step.items()
        if b == ref_b
    }
    gan_fwd = ctx["results"].get("gan", {}).get("forward", [])
    return {
        "slices": n_slices, "batch": batch, "calls": n_calls, "steps": steps,
        "precision": prec, "method": "measured (one full run)", "seconds": seconds,
        "estimated_seconds": estimates, "target_s": REFERENCE["vertebra_target_s"],
        "meets_target": seconds < REFERENCE["vertebra_target_s"],
        # our GAN generator at the original's ~130 batch-1 calls per vertebra
        "gan_pipeline_s_ours": {f["precision"]: f["median_ms"] * REFERENCE[
            "gan_calls_per_vertebra"] / 1000.0 for f in gan_fwd},
    }  # fmt: skip


def bench_diffusion(cfg: Config, ctx: dict[str, Any]) -> dict[str, Any]:
    """Diffusion U-Net: size, training step, DDIM sampling per slice, one whole vertebra."""
    dev = ctx["device"]
    model = build_model("diffusion", cfg, "fp32", ctx["gpu_ids"], ctx["tmp"])
    gen = model.netG.eval()
    res: dict[str, Any] = {
        **model_size(gen),
        "crop_rows": gen.crop_rows,
        "crop_at_256": model.opt.diffusion_crop,
        "unet_input": f"{gen.crop_rows} x {cfg.img_size} (central crop of the slice)",
        "bf16_via": "autocast around sample(), as the model's --precision bf16",
    }
    # 1. Like-for-like with the diffusers reference: one U-Net call on a whole slice, batch 1.
    x = torch.zeros(1, 1, cfg.img_size, cfg.img_size, device=dev)
    t = torch.zeros(1, dtype=torch.long, device=dev)
    with torch.no_grad():
        res["unet_call_full_slice_fp32"] = measure(
            lambda: gen.unet(x, x, x, x, t, t.float()), repeats=cfg.cheap_repeats,
            warmup=cfg.warmup, device=dev,
        )  # fmt: skip
    # 2. DDIM sampling per slice; 3. one whole vertebra.
    res["sampling"], per_step = _sampling(gen, cfg, ctx)
    res["sampling_note"] = (
        f"extrapolated = {cfg.probe_steps}-step runs of sample(), per step x steps; "
        f"measured = full runs (when the repeats take < {cfg.direct_budget_s:g} s)"
    )
    res["vertebra"] = _whole_vertebra(gen, cfg, ctx, per_step)
    res["train_step"] = train_steps("diffusion", cfg, ctx)
    return res
