"""Speed and size of the data pipeline and of both generators (CPU by default): the run.

The library behind ``scripts/benchmark.py``::

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

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.config import REFERENCE, SCHEMA_VERSION, Config, make_config
from benchmarks.dataset import bench_dataset
from benchmarks.generators import bench_diffusion, bench_gan
from benchmarks.report import report
from benchmarks.timing import machine_info, memory
from util.io import write_json_atomic
from util.misc import resolve_device

BENCHES: dict[str, Callable[[Config, dict[str, Any]], dict[str, Any]]] = {
    "dataset": bench_dataset,
    "gan": bench_gan,
    "diffusion": bench_diffusion,
}


def run_benchmarks(
    sections: Sequence[str],
    out: str | Path,
    *,
    quick: bool = False,
    repeats: int | None = None,
    direct_budget_s: float | None = None,
    threads: int = 2,
    gpu_ids: str = "-1",
    dataroot: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``sections`` (in the order of :data:`benchmarks.config.SECTIONS`, see
    ``parse_sections``), print a markdown table per section and write every number to
    ``out`` (rewritten after each section; ``"complete": true`` at the end). Returns the
    results. ``dataroot``: an existing data root for the dataset section (default: a phantom
    written to a temporary folder)."""
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    cfg = make_config(quick, repeats, direct_budget_s)
    if dataroot is not None and not Path(dataroot).is_dir():
        raise FileNotFoundError(f"--dataroot not found: {dataroot}")
    device = torch.device(resolve_device(gpu_ids)[0])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    machine = machine_info(threads, device)
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "complete": False, "quick": quick,
        "config": asdict(cfg), "machine": machine, "reference": REFERENCE,
        "loadavg_start": list(os.getloadavg()),
    }  # fmt: skip
    print(f"# benchmark on {machine['cpu_model']} ({threads} threads, {device}), "
          f"load average {results['loadavg_start']}")  # fmt: skip
    # Other processes on the cores make timings noisy (and multi-threaded ones much slower).
    results["busy_at_start"] = results["loadavg_start"][0] >= 1.0
    if results["busy_at_start"]:
        print("warning: the machine is busy (1-min load average >= 1): figures are provisional")
    with tempfile.TemporaryDirectory(prefix="benchmark_") as tmp:
        ctx = {"device": device, "gpu_ids": gpu_ids, "machine": machine, "tmp": Path(tmp),
               "threads": threads, "dataroot": dataroot, "results": results}  # fmt: skip
        for name in sections:
            print(f"[{name}] running ...", file=sys.stderr, flush=True)
            load0, t0 = list(os.getloadavg()), time.perf_counter()
            res = BENCHES[name](cfg, ctx)
            res.update(memory(device), wall_s=time.perf_counter() - t0,
                       loadavg={"start": load0, "end": list(os.getloadavg())})  # fmt: skip
            results[name] = res
            print("\n" + report(name, res, results) + "\n", flush=True)
            write_json_atomic(out, results)
    results["loadavg_end"] = list(os.getloadavg())
    results["complete"] = True
    write_json_atomic(out, results)
    print(f"wrote {out}; load average at the end {results['loadavg_end']}")
    return results
