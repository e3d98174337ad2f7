"""Sharded, resumable slice evaluation (``test.py --shard i/N``, then ``test.py --merge``).

* **Shards** (:func:`evaluate_shard`): the evaluation's batches are planned for the whole split
  (``evaluation.slice_eval.vertebra_batches``, ``--num_test`` applied there), then each of N
  processes takes a disjoint share of the planned vertebrae (:mod:`util.shard`). Every
  vertebra is evaluated in batches of its own slices with noise seeded from the seed and its
  id, so its rows are those one process computes.
* **Resume**: after a vertebra is evaluated, ``<out>/slice_work/<id>.npz`` (its report images)
  and then ``<id>.json`` (its rows, steps, seconds and the run's fingerprint) are written,
  each atomically. A restarted shard skips every vertebra whose record holds the same
  fingerprint (and whose images, and volumes with ``--save_volumes``, exist).
* **Merge** (:func:`merge_shards`): a shard writes ``<out>/slice_shard_<i>of<N>.json`` (the
  plan's order, its vertebrae, the fingerprint, the model's provenance); the merge of all N
  returns every vertebra's rows in the plan's order, as one process has them, with the
  statistics over all rows (``const_rhdr``) recomputed, and the report images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.slice_eval import (
    EvalResult,
    EvalSlices,
    add_const_rhdr,
    evaluate_vertebrae,
    vertebra_batches,
)
from util.geometry import inside
from util.io import atomic_path, read_json_record, write_json_atomic
from util.report import IMAGE_COLUMNS
from util.shard import Shard, shard_files, take_shard
from util.volumes import write_synthesised_volumes

WORK_DIR = "slice_work"
REPORT_PREFIX = "slice_shard_"
#: Scalars kept beside a vertebra's report images.
_IMAGE_SCALARS = ("ssim_patch", "slice_ratio")


def _work_path(out_dir: Path, key: str, suffix: str) -> Path:
    folder = out_dir / WORK_DIR
    return inside(folder / f"{key}{suffix}", folder)  # the key comes from data


def report_path(out_dir: str | Path, shard: Shard) -> Path:
    """``<out>/slice_shard_<i>of<N>.json``: what shard ``shard`` evaluated."""
    return Path(out_dir) / f"{REPORT_PREFIX}{shard.name}.json"


def save_vertebra(
    out_dir: Path, key: str, run: Mapping[str, Any], part: EvalResult, volumes: bool
) -> None:
    """Record ``key`` as evaluated by ``run``: its images, then its rows (the record)."""
    images = part.images.get(key) or {}
    arrays = {k: np.asarray(images[k]) for k in IMAGE_COLUMNS if images.get(k) is not None}
    with atomic_path(_work_path(out_dir, key, ".npz")) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    rec = {
        "run": dict(run),
        "rows": part.rows,
        "steps": part.steps,
        "seconds": part.seconds,
        "image": {k: images[k] for k in _IMAGE_SCALARS} if images else None,
        "volumes": volumes and bool(part.slices),
    }
    write_json_atomic(_work_path(out_dir, key, ".json"), rec)


def load_vertebra(out_dir: Path, key: str, run: Mapping[str, Any]) -> EvalResult | None:
    """``key``'s result when it was evaluated by ``run`` and its files exist, else None. Its
    rows lack ``const_rhdr`` (:func:`merge_shards` adds it)."""
    rec = read_json_record(_work_path(out_dir, key, ".json"))
    npz = _work_path(out_dir, key, ".npz")
    if rec is None or rec.get("run") != dict(run) or not npz.is_file():
        return None
    if rec["volumes"] and not all(
        (out_dir / "volumes" / kind / f"{key}.nii.gz").is_file() for kind in ("CT", "label")
    ):
        return None
    part = EvalResult(rows=rec["rows"], seconds=rec["seconds"], steps=rec["steps"])
    if rec["image"] is not None:
        with np.load(npz) as arrays:
            images: dict[str, Any] = {k: arrays[k] if k in arrays else None for k in IMAGE_COLUMNS}
        part.images[key] = {**images, **rec["image"]}
    return part


def evaluate_shard(
    model: Any,
    dataset: Any,
    out_dir: str | Path,
    shard: Shard,
    *,
    run: Mapping[str, Any],
    info: Mapping[str, Any],
    batch_size: int = 8,
    max_batches: int | None = None,
    keep_slices: bool = False,
    extra_columns: Callable[[], dict[str, Any]] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``shard``'s share of the vertebrae of ``dataset`` into ``out_dir`` (records
    under ``slice_work/``; with ``keep_slices`` also the volumes,
    ``volumes/CT|label/<id>.nii.gz``), skipping those recorded by the same ``run`` (the
    fingerprint of model and settings). The other arguments are those of
    ``evaluation.slice_eval.evaluate`` (``kwargs``: ``num_workers``, ``steps``, ``seed``,
    ``desc``). Writes and returns the shard's report: ``order`` (every planned vertebra),
    ``vertebrae`` (this shard's), ``evaluated`` (those run now), ``run`` and ``info`` (the
    model's provenance for the summary)."""
    out_dir = Path(out_dir)
    slices = EvalSlices(dataset)
    plan = vertebra_batches(slices.items, batch_size, max_batches)
    order = list(plan)
    mine = set(take_shard(order, shard))
    mine_ordered = [k for k in order if k in mine]
    todo = {k: plan[k] for k in mine_ordered if load_vertebra(out_dir, k, run) is None}
    extra = extra_columns() if extra_columns else {}
    for key, part in evaluate_vertebrae(
        model, slices, todo, keep_slices=keep_slices, extra=extra, **kwargs
    ):
        if keep_slices and part.slices:
            write_synthesised_volumes(dataset, part.slices, out_dir / "volumes")
        save_vertebra(out_dir, key, run, part, keep_slices)
    report = {
        "shard": str(shard),
        "order": order,
        "vertebrae": mine_ordered,
        "evaluated": list(todo),
        "run": dict(run),
        "info": dict(info),
    }
    write_json_atomic(report_path(out_dir, shard), report)
    return report


def merge_shards(
    out_dir: str | Path, count: int | None = None
) -> tuple[EvalResult, dict[str, Any]]:
    """The result one process gives, from the N shard reports of ``out_dir`` (``count``
    defaults to the N of the reports found; ``FileNotFoundError`` naming the missing ones):
    every vertebra's rows in the plan's order, ``const_rhdr`` over all rows, the report
    images, ``seconds`` summed over the vertebrae; and the ``info`` of shard 0. A shard of
    another run (other options or checkpoint) or a vertebra without its record is a
    ``ValueError``."""
    out_dir = Path(out_dir)
    paths = shard_files(out_dir, REPORT_PREFIX, count)
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    for path, part in zip(paths[1:], parts[1:], strict=True):
        if part["run"] != parts[0]["run"] or part["order"] != parts[0]["order"]:
            differ = sorted(k for k in part["run"] if part["run"][k] != parts[0]["run"].get(k))
            raise ValueError(
                f"{path.name} and {paths[0].name} are of different runs (differ in "
                f"{differ or 'the vertebrae'}): run every shard with the same options"
            )
    run = parts[0]["run"]
    result = EvalResult(rows=[])
    for key in parts[0]["order"]:
        part = load_vertebra(out_dir, key, run)
        if part is None:
            raise ValueError(f"{out_dir}: no shard has a finished record of {key}; rerun its shard")
        result.add(part)
    add_const_rhdr(result.rows)
    return result, parts[0]["info"]
