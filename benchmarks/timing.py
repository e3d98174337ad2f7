"""How the benchmark measures: timed runs (median and minimum after warm-up, the device
synchronised around each run), bf16 autocast, and the machine and memory it reports."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


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


def sync(device: torch.device) -> None:
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
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        runs.append(1000.0 * (time.perf_counter() - t0))
    return summarize(runs)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``"bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    """CPU, torch build, threads, device and bf16 support, for the results' ``machine``."""
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


def memory(device: torch.device) -> dict[str, float]:
    """Peak resident memory of the process so far (MB) and, on CUDA, the peak allocated since
    the last call (the counter is reset)."""
    # Linux reports ru_maxrss in KiB: the process high-water mark so far.
    out = {"peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    return out
