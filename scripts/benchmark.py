"""Speed and size of the data pipeline and of both generators (CPU by default).

Usage::

    python scripts/benchmark.py [--only dataset,gan,diffusion] [--threads 2] [--repeats 3]
        [--quick] [--out results/benchmark.json] [--gpu_ids -1] [--dataroot ROOT]

Prints a markdown table per section and writes every number, the machine description and the
load average to ``--out`` (atomic JSON, rewritten after each section; ``"complete": true`` at
the end). The project's speed and memory targets live here and in docs/BENCHMARKS.md, never in
timed unit tests. Every time is ``time.perf_counter`` after warm-up runs, reported as the
median and the minimum over ``--repeats`` runs; on CUDA the device is synchronised around
each run. DDIM sampling configurations whose direct measurement would exceed
``--direct_budget_s`` are extrapolated from short runs (``"method": "extrapolated"``); the
whole-vertebra figure is always one full, measured run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import ConcatDataset, DataLoader  # noqa: E402

from data.phantom import generate_dataset  # noqa: E402
from data.vertebra_dataset import VertebraDataset  # noqa: E402
from data.vertebra_geometry import central_range  # noqa: E402
from models.generator_base import GeneratorInput  # noqa: E402
from models.pix2pix_model import Pix2PixModel  # noqa: E402
from options.train_options import TrainOptions  # noqa: E402
from util.geometry import band_px, band_rows  # noqa: E402
from util.io import write_json_atomic  # noqa: E402
from util.misc import resolve_device  # noqa: E402

SECTIONS = ("dataset", "gan", "diffusion")
SCHEMA_VERSION = 1
#: Figures of the original HealthiVert-GAN and of a generic diffusers U-Net (2-core CPU).
REFERENCE = {
    "gan_forward_ms_b1_fp32": 217.0,
    "gan_train_step_s_b4_fp32": 3.7,
    "gan_calls_per_vertebra": 130,
    "gan_pipeline_s_per_vertebra": 130 * 0.217,
    "diffusers_unet_step_ms_256": 259.0,
    "diffusers_s_per_slice_25_steps": 6.4,
    "vertebra_target_s": 60.0,
}


@dataclass(frozen=True)
class Config:
    """Sizes and counts of one benchmark run (the full one, or ``--quick``)."""

    img_size: int = 256
    repeats: int = 3  # timed runs of the expensive figures (train steps, sampling, epochs)
    cheap_repeats: int = 10  # timed runs of single batch-1 network calls
    warmup: int = 1
    phantom_patients: int = 5
    loader_workers: int = 2
    loader_batch: int = 4
    warm_items: int = 160  # items per warm-cache epoch (the data set repeated to reach it)
    skip_batches: int = 4  # batches not timed at the start of a warm epoch (prefetch)
    train_batch: int = 4
    sample_steps: tuple[int, ...] = (10, 25, 50)
    sample_batches: tuple[int, ...] = (1, 8, 64)
    probe_steps: int = 3  # DDIM steps of the short runs that give the per-step time
    direct_budget_s: float = 10.0  # measure directly when repeats would take less than this
    vertebra_steps: int = 25
    # chunks of 8 slices: larger batches fall out of cache on this CPU (per-slice cost at
    # batch 64 is ~1.5x that at batch 8; see the sampling table)
    vertebra_max_batch: int = 8


QUICK = Config(
    img_size=64,
    repeats=1,
    cheap_repeats=2,
    phantom_patients=3,
    sample_batches=(1, 8),
    warm_items=16,
    skip_batches=1,
    probe_steps=2,
    direct_budget_s=2.0,
    vertebra_max_batch=64,
)


# ----------------------------------------------------------------------------- timing
def summarize(runs_ms: list[float]) -> dict[str, Any]:
    """``{"median_ms", "min_ms", "n", "runs_ms"}`` of run times in milliseconds."""
    if not runs_ms:
        raise ValueError("summarize needs at least one run")
    return {
        "median_ms": float(statistics.median(runs_ms)),
        "min_ms": float(min(runs_ms)),
        "n": len(runs_ms),
        "runs_ms": [round(float(r), 3) for r in runs_ms],
    }


def scaled(stats: dict[str, Any], factor: float) -> dict[str, float]:
    """Median and min of ``stats`` times ``factor`` (per slice, per step, ...)."""
    return {"median_ms": stats["median_ms"] * factor, "min_ms": stats["min_ms"] * factor}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], object], *, repeats: int, warmup: int, device: torch.device
) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (ms)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        runs.append(1000.0 * (time.perf_counter() - t0))
    return summarize(runs)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- machine
def cpu_model(cpuinfo: str | None = None) -> str:
    """The ``model name`` line of /proc/cpuinfo (or ``platform.processor()``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown"


def bf16_support(device: torch.device) -> dict[str, Any]:
    """Whether bfloat16 autocast runs on ``device`` and whether the hardware makes it fast.

    CPU: autocast needs oneDNN's bf16 path; it is fast only with native bf16 dot products
    (AVX512-BF16 or AMX), otherwise bf16 is emulated and usually slower than fp32.
    """
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return {"autocast_supported": ok, "fast": ok}

    def probe(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)  # private helpers: absent in some versions
        return bool(fn()) if callable(fn) else False

    supported = torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    avx512_bf16, amx = probe("_is_avx512_bf16_supported"), probe("_is_amx_tile_supported")
    return {
        "autocast_supported": supported,
        "avx512_bf16": avx512_bf16,
        "amx": amx,
        "fast": supported and (avx512_bf16 or amx),
    }


def machine_info(threads: int, device: torch.device) -> dict[str, Any]:
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "threads": threads,
        "device": str(device),
        "bf16": bf16_support(device),
    }
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
    return info


def _memory(device: torch.device) -> dict[str, float]:
    # Linux reports ru_maxrss in KiB: the process high-water mark so far.
    out = {"peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return out


# ----------------------------------------------------------------------------- inputs
def synthetic_batch(batch_size: int, img_size: int, *, seed: int = 0) -> dict[str, Any]:
    """A batch with the keys, shapes, dtypes and value ranges of docs/ARCHITECTURE.md.

    Smooth random CT in [-1, 1] (B geometry), a vertebra of ``h < h2`` rows centred, the band
    ``mask``, ``A`` = B with the band zeroed. Timing does not depend on the pixel values.
    """
    g = torch.Generator().manual_seed(seed)
    s, h2 = img_size, band_px(img_size)
    b0, b1 = band_rows(s)
    low = torch.rand(batch_size, 1, max(2, s // 16), max(2, s // 16), generator=g) * 2 - 1
    real_b = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
    height = torch.randint(max(1, h2 // 2), h2, (batch_size,), generator=g)
    x1 = s // 2 - height // 2
    rows, cols = torch.arange(s), torch.arange(s)
    in_rows = (rows[None] >= x1[:, None]) & (rows[None] < (x1 + height)[:, None])
    in_cols = (cols >= s // 4) & (cols < 3 * s // 4)
    vert = (in_rows[:, None, :, None] & in_cols[None, None, None, :]).float()
    mask = torch.zeros(batch_size, 1, s, s)
    mask[..., b0:b1, :] = 1.0
    return {
        "A": real_b * (1 - mask),
        "B": real_b,
        "mask": mask,
        "vert_mask": vert,
        "normal_vert": vert.clone(),
        "CAM": torch.rand(batch_size, 1, s, s, generator=g) * mask,
        "height": height.float(),
        "x1": x1.long(),
        "x2": (x1 + height - 1).long(),
        "h2": torch.full((batch_size,), h2, dtype=torch.long),
        "slice_ratio": torch.linspace(0.0, 1.0, batch_size),
        "slice_index": torch.arange(batch_size),
        "grade": torch.zeros(batch_size, dtype=torch.long),
        "id": [f"synthetic_{i}" for i in range(batch_size)],
    }


def generator_input(batch: dict[str, Any], device: torch.device) -> GeneratorInput:
    """What the model feeds its generator (inverted CAM, as ``Pix2PixModel``)."""
    return GeneratorInput(
        batch["A"].to(device),
        batch["mask"].to(device),
        1.0 - batch["CAM"].to(device),
        batch["slice_ratio"].to(device),
    )


def build_model(
    netg: str, cfg: Config, precision: str, gpu_ids: str, ckpt_dir: Path
) -> Pix2PixModel:
    """A training Pix2PixModel built through the options, as train.py does (options not saved,
    their printout swallowed)."""
    argv = ["--gpu_ids", gpu_ids, "--img_size", str(cfg.img_size), "--netG_type", netg,
            "--checkpoints_dir", str(ckpt_dir), "--name", f"bench_{netg}_{precision}",
            "--batch_size", str(cfg.train_batch), "--precision", precision]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        opt = TrainOptions(argv).parse(save=False)
    return Pix2PixModel(opt)


def _size(module: torch.nn.Module) -> dict[str, float]:
    n = sum(p.numel() for p in module.parameters())
    return {"params_M": n / 1e6, "params": n, "size_mb_fp32": n * 4 / 2**20}


def _precisions(machine: dict[str, Any]) -> list[str]:
    return ["fp32", "bf16"] if machine["bf16"]["autocast_supported"] else ["fp32"]


def _train_steps(netg: str, cfg: Config, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """optimize_parameters (G + three Ds) at batch ``train_batch``, per precision."""
    batch = synthetic_batch(cfg.train_batch, cfg.img_size, seed=1)
    out = []
    for prec in _precisions(ctx["machine"]):
        model = build_model(netg, cfg, prec, ctx["gpu_ids"], ctx["tmp"])
        model.set_input(batch)
        stats = measure(
            model.optimize_parameters, repeats=cfg.repeats, warmup=cfg.warmup, device=ctx["device"]
        )
        out.append({"precision": prec, "batch": cfg.train_batch, **stats})
        del model
    return out


# ----------------------------------------------------------------------------- sections
def bench_dataset(cfg: Config, ctx: dict[str, Any]) -> dict[str, Any]:
    """Samples/s of VertebraDataset (random slices, phase train) through a DataLoader."""
    root, res = ctx["dataroot"], {"img_size": cfg.img_size, "workers": cfg.loader_workers}
    res["batch"] = cfg.loader_batch
    if root is None:
        root, t0 = ctx["tmp"] / "phantom", time.perf_counter()
        generate_dataset(
            root, cfg.phantom_patients, img_size=cfg.img_size, workers=ctx["threads"],
            progress=False,
        )  # fmt: skip
        res["dataroot"] = f"phantom, {cfg.phantom_patients} patients at {cfg.img_size} px"
        res["phantom_generation_s"] = time.perf_counter() - t0
    else:
        res["dataroot"] = str(root)
    ds = VertebraDataset.create(dataroot=root, phase="train", img_size=cfg.img_size)
    res["vertebrae"] = len(ds)

    def loader(dataset: torch.utils.data.Dataset, persistent: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=cfg.loader_batch, shuffle=True,
            num_workers=cfg.loader_workers, persistent_workers=persistent,
        )  # fmt: skip

    # 1. Cold: fresh workers with empty volume caches (the OS file cache is warm), one epoch
    #    (every vertebra once), timed from the loader's creation so worker start-up counts.
    cold, first = [], []
    for _ in range(cfg.repeats):
        t0, n, t_first = time.perf_counter(), 0, None
        for batch in loader(ds, persistent=False):
            t_first = t_first or time.perf_counter() - t0
            n += batch["A"].shape[0]
        cold.append(n / (time.perf_counter() - t0))
        first.append(t_first)
    res["cold"] = {**_rate(cold), "first_batch_s": statistics.median(first)}

    # 2. Warm: the data set repeated to about warm_items items per epoch, persistent workers;
    #    epoch 0 fills each worker's cache, each timed epoch skips its first batches.
    reps = max(1, math.ceil(cfg.warm_items / len(ds)))
    warm_loader = loader(ConcatDataset([ds] * reps), persistent=cfg.loader_workers > 0)
    if len(warm_loader) <= cfg.skip_batches:
        raise ValueError(
            f"a warm epoch of {len(warm_loader)} batches cannot skip {cfg.skip_batches}"
        )
    for _ in warm_loader:
        pass
    warm = []
    for _ in range(cfg.repeats):
        n, t0 = 0, time.perf_counter()
        for i, batch in enumerate(warm_loader):
            if i == cfg.skip_batches - 1:
                t0 = time.perf_counter()  # the clock starts once the skipped batches are in
            elif i >= cfg.skip_batches:
                n += batch["A"].shape[0]
        warm.append(n / (time.perf_counter() - t0))
    del warm_loader  # ends the persistent workers
    res["warm"] = {
        **_rate(warm),
        "items_per_epoch": reps * len(ds),
        "skipped_batches": cfg.skip_batches,
    }
    return res


def _rate(values: list[float]) -> dict[str, Any]:
    return {"samples_per_s_median": statistics.median(values), "samples_per_s_max": max(values),
            "n": len(values)}  # fmt: skip


def bench_gan(cfg: Config, ctx: dict[str, Any]) -> dict[str, Any]:
    """GAN generator: size, forward per slice (batch 1, eval, no_grad), training step."""
    dev = ctx["device"]
    net = build_model("gan", cfg, "fp32", ctx["gpu_ids"], ctx["tmp"]).netG.eval()
    inp = generator_input(synthetic_batch(1, cfg.img_size), dev)
    forward = []
    for prec in _precisions(ctx["machine"]):

        def run(prec: str = prec) -> None:
            with torch.no_grad(), _autocast(dev, prec):
                net.sample(inp)

        stats = measure(run, repeats=cfg.cheap_repeats, warmup=cfg.warmup, device=dev)
        forward.append({"precision": prec, "batch": 1, **stats})
    return {**_size(net), "forward": forward, "train_step": _train_steps("gan", cfg, ctx)}


def bench_diffusion(cfg: Config, ctx: dict[str, Any]) -> dict[str, Any]:
    """Diffusion U-Net: size, training step, DDIM sampling per slice, one whole vertebra."""
    dev, machine = ctx["device"], ctx["machine"]
    model = build_model("diffusion", cfg, "fp32", ctx["gpu_ids"], ctx["tmp"])
    gen = model.netG.eval()
    res: dict[str, Any] = {
        **_size(gen),
        "crop_rows": gen.crop_rows,
        "crop_at_256": model.opt.diffusion_crop,
        "unet_input": f"{gen.crop_rows} x {cfg.img_size} (central crop of the slice)",
        "bf16_via": "DiffusionGenerator.bf16_inference (--diffusion_bf16)",
    }
    # 1. Like-for-like with the diffusers reference: one U-Net call on a whole slice, batch 1.
    x = torch.zeros(1, 1, cfg.img_size, cfg.img_size, device=dev)
    t = torch.zeros(1, dtype=torch.long, device=dev)
    with torch.no_grad():
        res["unet_call_full_slice_fp32"] = measure(
            lambda: gen.unet(x, x, x, x, t, t.float()), repeats=cfg.cheap_repeats,
            warmup=cfg.warmup, device=dev,
        )  # fmt: skip

    def sample(inp: GeneratorInput, steps: int, repeats: int) -> dict[str, Any]:
        gen.num_inference_steps = steps
        seed = torch.Generator(device="cpu").manual_seed(0)
        return measure(lambda: gen.sample(inp, generator=seed), repeats=repeats, warmup=0,
                       device=dev)  # fmt: skip

    # 2. DDIM through the generator's own sample(): per-step time from short runs, then each
    #    step count measured directly when that fits the budget, else extrapolated.
    sampling, per_step = [], {}
    for batch in cfg.sample_batches:
        inp = generator_input(synthetic_batch(batch, cfg.img_size, seed=2), dev)
        for prec in _precisions(machine):
            gen.bf16_inference = prec == "bf16"
            for _ in range(cfg.warmup):  # one-step runs build the kernels for this shape
                sample(inp, 1, 1)
            step = scaled(sample(inp, cfg.probe_steps, cfg.repeats), 1.0 / cfg.probe_steps)
            per_step[(batch, prec)] = step
            for steps in cfg.sample_steps:
                if step["median_ms"] * steps * cfg.repeats / 1000.0 <= cfg.direct_budget_s:
                    stats, method = sample(inp, steps, cfg.repeats), "measured"
                else:
                    stats, method = scaled(step, steps), "extrapolated"
                sampling.append({
                    "batch": batch, "precision": prec, "steps": steps, "method": method,
                    "per_step_ms": step, "ms_per_call": scaled(stats, 1.0),
                    "ms_per_slice": scaled(stats, 1.0 / batch),
                })  # fmt: skip
    res["sampling"] = sampling
    res["sampling_note"] = (
        f"extrapolated = {cfg.probe_steps}-step runs of sample(), per step x steps; "
        f"measured = full runs (when the repeats take < {cfg.direct_budget_s:g} s)"
    )

    # 3. Whole vertebra: every slice of the central 4/5 of an S/4-slice volume, in batches of
    #    at most vertebra_max_batch, one full measured run; the other precision extrapolated.
    lo, hi = central_range(0, cfg.img_size // 4 - 1)
    n_slices = hi - lo + 1
    batch = min(cfg.vertebra_max_batch, n_slices)
    n_calls = math.ceil(n_slices / batch)
    prec = "bf16" if machine["bf16"]["fast"] else "fp32"
    gen.bf16_inference = prec == "bf16"
    inp = generator_input(synthetic_batch(batch, cfg.img_size, seed=3), dev)
    sample(inp, 1, 1)  # warm-up at this batch size (oneDNN plans per shape)
    seconds = sample(inp, cfg.vertebra_steps, 1)["median_ms"] * n_calls / 1000.0
    ref_b = batch if batch in cfg.sample_batches else max(cfg.sample_batches)
    estimates = {
        p: ms["median_ms"] * batch / ref_b * cfg.vertebra_steps * n_calls / 1000.0
        for (b, p), ms in per_step.items()
        if b == ref_b
    }
    gan_fwd = ctx["results"].get("gan", {}).get("forward", [])
    res["vertebra"] = {
        "slices": n_slices, "batch": batch, "calls": n_calls, "steps": cfg.vertebra_steps,
        "precision": prec, "method": "measured (one full run)", "seconds": seconds,
        "estimated_seconds": estimates, "target_s": REFERENCE["vertebra_target_s"],
        "meets_target": seconds < REFERENCE["vertebra_target_s"],
        # our GAN generator at the original's ~130 batch-1 calls per vertebra
        "gan_pipeline_s_ours": {f["precision"]: f["median_ms"] * REFERENCE[
            "gan_calls_per_vertebra"] / 1000.0 for f in gan_fwd},
    }  # fmt: skip
    gen.bf16_inference = False

    res["train_step"] = _train_steps("diffusion", cfg, ctx)
    return res


# ----------------------------------------------------------------------------- reporting
def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 3 significant digits below 10, else 1 decimal."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def report(name: str, res: dict[str, Any], results: dict[str, Any]) -> str:
    """Markdown tables of one section, with the reference figures beside."""
    ref = REFERENCE
    if name == "dataset":
        rows = [[k, res[k]["samples_per_s_median"], res[k]["samples_per_s_max"], res[k]["n"]]
                for k in ("cold", "warm")]  # fmt: skip
        return f"### dataset ({res['dataroot']}, {res['vertebrae']} vertebrae)\n" + md_table(
            ["volume cache", "samples/s median", "samples/s max", "epochs"], rows
        )
    if name == "gan":
        rows = [[f"forward b1 {f['precision']}", f["median_ms"], f["min_ms"],
                 ref["gan_forward_ms_b1_fp32"]] for f in res["forward"]]  # fmt: skip
        rows += [[f"train step b{s['batch']} {s['precision']}", s["median_ms"], s["min_ms"],
                  1000 * ref["gan_train_step_s_b4_fp32"]] for s in res["train_step"]]  # fmt: skip
        head = f"### gan generator: {res['params_M']:.2f} M params, {res['size_mb_fp32']:.1f} MB"
        return head + "\n" + md_table(["what", "median ms", "min ms", "original ms"], rows)
    gan = {s["precision"]: s["median_ms"] for s in results.get("gan", {}).get("train_step", [])}
    rows = [[f"train step b{s['batch']} {s['precision']}", s["median_ms"], s["min_ms"],
             gan.get(s["precision"])] for s in res["train_step"]]  # fmt: skip
    u = res["unet_call_full_slice_fp32"]
    rows.append(["U-Net call, whole slice, b1 fp32", u["median_ms"], u["min_ms"], None])
    samp = [[e["batch"], e["precision"], e["steps"], e["ms_per_slice"]["median_ms"],
             e["ms_per_slice"]["min_ms"], e["per_step_ms"]["median_ms"], e["method"]]
            for e in res["sampling"]]  # fmt: skip
    v = res["vertebra"]
    est = ", ".join(f"{p} {s:.1f} s" for p, s in v["estimated_seconds"].items())
    return "\n".join([
        f"### diffusion U-Net: {res['params_M']:.2f} M params, {res['size_mb_fp32']:.1f} MB, "
        f"U-Net input {res['unet_input']}",
        md_table(["what", "median ms", "min ms", "GAN ms"], rows),
        f"diffusers U-Net reference: {ref['diffusers_unet_step_ms_256']:g} ms per step at 256 px"
        f" ({ref['diffusers_s_per_slice_25_steps']:g} s per slice at 25 steps)\n",
        md_table(["batch", "precision", "steps", "ms/slice median", "ms/slice min", "ms/step",
                  "how"], samp),
        res["sampling_note"] + "\n",
        f"whole vertebra: {v['slices']} slices, {v['calls']} call(s) of batch {v['batch']}, "
        f"{v['steps']} steps, {v['precision']}: **{v['seconds']:.1f} s** measured "
        f"(target < {v['target_s']:g} s: {'met' if v['meets_target'] else 'NOT met'}); "
        f"extrapolated from the per-step figures: {est}; GAN pipeline (original): "
        f"~{ref['gan_pipeline_s_per_vertebra']:.1f} s ({ref['gan_calls_per_vertebra']} calls "
        f"of {ref['gan_forward_ms_b1_fp32']:g} ms); ours at 130 calls: "
        + (", ".join(f"{p} {s:.1f} s" for p, s in v["gan_pipeline_s_ours"].items()) or "-"),
    ])  # fmt: skip


# ----------------------------------------------------------------------------- main
def parse_sections(text: str) -> list[str]:
    """``"gan,diffusion"`` -> ``["gan", "diffusion"]`` (in run order); ValueError otherwise."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise ValueError(f"--only {text!r}: choose among {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sections = parse_sections(args.only)
        if args.threads < 1 or (args.repeats is not None and args.repeats < 1):
            raise ValueError("--threads and --repeats must be >= 1")
        if args.dataroot is not None and not Path(args.dataroot).is_dir():
            raise FileNotFoundError(f"--dataroot not found: {args.dataroot}")
        device = torch.device(resolve_device(args.gpu_ids)[0])
    except (ValueError, FileNotFoundError) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    cfg = QUICK if args.quick else Config()
    if args.repeats is not None:
        cfg = replace(cfg, repeats=args.repeats)
    if args.direct_budget_s is not None:
        cfg = replace(cfg, direct_budget_s=args.direct_budget_s)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    machine = machine_info(args.threads, device)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "complete": False, "quick": args.quick,
        "config": asdict(cfg), "machine": machine, "reference": REFERENCE,
        "loadavg_start": list(os.getloadavg()),
    }  # fmt: skip
    print(f"# benchmark on {machine['cpu_model']} ({args.threads} threads, {device}), "
          f"load average {results['loadavg_start']}")  # fmt: skip
    # Other processes on the cores make timings noisy (and multi-threaded ones much slower).
    results["busy_at_start"] = results["loadavg_start"][0] >= 1.0
    if results["busy_at_start"]:
        print("warning: the machine is busy (1-min load average >= 1): figures are provisional")
    benches = {"dataset": bench_dataset, "gan": bench_gan, "diffusion": bench_diffusion}
    with tempfile.TemporaryDirectory(prefix="benchmark_") as tmp:
        ctx = {"device": device, "gpu_ids": args.gpu_ids, "machine": machine, "tmp": Path(tmp),
               "threads": args.threads, "dataroot": args.dataroot, "results": results}  # fmt: skip
        for name in sections:
            print(f"[{name}] running ...", file=sys.stderr, flush=True)
            load0, t0 = list(os.getloadavg()), time.perf_counter()
            res = benches[name](cfg, ctx)
            res.update(_memory(device), wall_s=time.perf_counter() - t0,
                       loadavg={"start": load0, "end": list(os.getloadavg())})  # fmt: skip
            results[name] = res
            print("\n" + report(name, res, results) + "\n", flush=True)
            write_json_atomic(args.out, results)
    results["loadavg_end"] = list(os.getloadavg())
    results["complete"] = True
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}; load average at the end {results['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
