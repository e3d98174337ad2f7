"""Sharded, resumable whole-vertebra synthesis (used by :mod:`evaluation.synthesis`).

* **Shards** (:func:`shard_order`): each of N processes takes a disjoint share of the run's
  order (:mod:`util.shard`). With ``--iterative`` the unit is the patient, so every patient's
  vertebrae run in one process in the single-process order (the fractured ones first, the
  later ones reading them as context).
* **Resume**: after a vertebra's volumes are written (atomically), its record
  ``<out>/synthesis_work/<id>.json`` is written (atomically) with its index entry and the run's
  fingerprint (model, checkpoint, seed, steps, iterative). A restarted process skips a vertebra
  whose record has the same fingerprint and whose two volumes exist.
* **Merge** (:func:`merge_synthesis`): a shard writes ``<out>/synthesis_shard_<i>of<N>.json``,
  never ``synthesis.json``; the merge of all N gives exactly the ``synthesis.json`` one process
  writes (vertebrae in the run's order). Each vertebra is seeded from the seed and its id, so
  its volumes do not depend on the shard it ran in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from util.geometry import split_key
from util.io import read_json_record, write_json_atomic
from util.shard import Shard, shard_files, take_shard

INDEX_FILE = "synthesis.json"
WORK_DIR = "synthesis_work"


def shard_order(order: Sequence[str], shard: Shard, iterative: bool) -> list[str]:
    """The ids of ``order`` that ``shard`` runs, in ``order``'s order; by patient when
    ``iterative``."""
    if shard.count == 1:
        return list(order)
    if iterative:
        pids = list(dict.fromkeys(split_key(k)[0] for k in order))
        mine = set(take_shard(pids, shard))
        return [k for k in order if split_key(k)[0] in mine]
    mine = set(take_shard(order, shard))
    return [k for k in order if k in mine]


def _record_path(out_dir: Path, key: str) -> Path:
    return out_dir / WORK_DIR / f"{key}.json"


def load_done(out_dir: Path, key: str, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"entry", "steps"}`` of ``key`` when it was synthesised by this run (same
    fingerprint ``run``) and its volumes exist, else None."""
    rec = read_json_record(_record_path(out_dir, key))
    if rec is None or rec.get("run") != dict(run):
        return None
    entry = rec["entry"]
    if not all((out_dir / entry[f]).is_file() for f in ("ct", "label")):
        return None
    return rec


def save_done(
    out_dir: Path, key: str, run: Mapping[str, Any], entry: Mapping[str, Any], steps: int | None
) -> None:
    """Record ``key`` as done (after its volumes are written)."""
    rec = {"run": dict(run), "entry": dict(entry), "steps": steps}
    write_json_atomic(_record_path(out_dir, key), rec)


def index_path(out_dir: str | Path, shard: Shard) -> Path:
    """``synthesis.json`` for one process, ``synthesis_shard_<i>of<N>.json`` for a shard."""
    name = INDEX_FILE if shard.count == 1 else f"synthesis_shard_{shard.name}.json"
    return Path(out_dir) / name


def merge_synthesis(out_dir: str | Path, count: int | None = None) -> dict[str, Any]:
    """Combine the shard indexes of ``out_dir`` into ``synthesis.json`` (returned): the
    fields of shard 0, ``vertebrae`` from every shard in the run's ``order``, and the steps
    run. ``count`` defaults to the N of the shard files found; all of 0..N-1 must exist."""
    out_dir = Path(out_dir)
    paths = shard_files(out_dir, "synthesis_shard_", count)
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    entries: dict[str, Any] = {}
    for part in parts:
        entries.update(part["vertebrae"])
    index = dict(parts[0])
    absent = [k for k in index["order"] if k not in entries]
    if absent:
        raise ValueError(f"{out_dir}: no shard synthesised {absent[:5]}")
    index["vertebrae"] = {k: entries[k] for k in index["order"]}
    steps = [p["num_inference_steps"] for p in parts if p["num_inference_steps"] is not None]
    index["num_inference_steps"] = steps[0] if steps else None
    write_json_atomic(out_dir / INDEX_FILE, index)
    return index
