"""Benchmark section ``dataset``: samples/s of VertebraDataset through a DataLoader."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader

from benchmarks.config import Config
from data.phantom import generate_dataset
from data.vertebra_dataset import VertebraDataset


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
    ds = VertebraDataset(dataroot=root, phase="train", img_size=cfg.img_size, seed=0)
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
