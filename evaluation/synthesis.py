"""Whole-vertebra synthesis: every valid sagittal slice of a vertebra, rebuilt in 3-D (the
library behind ``scripts/synthesize_volume.py``).

For each vertebra of the split(s):

1. every valid slice (``dataset.valid_slices``: the central 4/5 of the vertebra whose height
   fits the band) goes through the model's inference pipeline in batches
   (``Pix2PixModel.infer``: sample, then SHRM at the predicted height);
2. the composed slices and synthesised masks are put back into the native volume with
   ``util.volumes.write_synthesised_volumes`` (slice shifted so the vertebra's centre row
   stays, resized to the native in-plane size; the target's label replaced by the
   synthesised mask; other slices untouched; the input's affine and header);
3. ``<out>/CT/<id>.nii.gz``, ``<out>/label/<id>.nii.gz`` and ``<out>/synthesis.json`` (index
   of what was written) are written (:func:`synthesise_datasets`; from parsed options, with
   the default ``<out>`` ``<results_dir>/<name>/synthesis_<phase>_<epoch>/``:
   :func:`run_synthesis`).

Iterative synthesis (``--iterative``, the original's option): per patient, the fractured
vertebrae (grade > 0) are synthesised first, then the others; each vertebra's input sees the
fractured vertebrae of its patient synthesised before it as context (their pseudo-healthy
versions replace them; normal vertebrae are not replaced: they are healthy already and a
synthesis error would propagate). Each vertebra has its own volume centred on itself, so the
synthesised neighbour ``u`` lives in another file. It is carried over as follows:

* **Row offset.** The volumes are straightened crops of one spine, centred on different
  vertebrae, on the same in-plane grid: ``label_v[r] == label_u[r + o]`` for one integer
  row offset ``o``. ``o`` starts as the median over the label ids both volumes share of the
  difference of their centroid rows, and is refined by searching ``o - 2 .. o + 2`` for the
  best agreement of the two label volumes over their overlapping rows (fraction of voxels,
  labelled in either, with the same id).
* **Replacement.** In each slice that ``u`` was synthesised in, the rows of ``v``'s volume
  that hold ``u`` in the original or in the synthesised label (mapped by ``o``) take the
  synthesised CT and label rows of ``u``; rows that hold ``v`` itself are never touched, so
  ``v``'s geometry (rows, valid slices, height) is unchanged.
* **Limits.** Exact for the phantom and for crops of one straightened volume (integer row
  offset, same spacing and in-plane grid). Volumes straightened separately per vertebra, or
  resampled along a curved centreline, only approximately satisfy it: the agreement then
  drops, and below ``MIN_LABEL_AGREEMENT`` the neighbour is not used as context (a warning
  names the pair). The context changes only the model's input; the written volume starts
  from ``v``'s original input, so slices that were not synthesised keep the original
  neighbours.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate
from tqdm import tqdm

from data import find_dataset
from data.vertebra_dataset import load_splits, volume_to_slices
from data.vertebra_geometry import build_slice_sample
from evaluation.synthesis_shard import INDEX_FILE as INDEX_FILE  # re-exported
from evaluation.synthesis_shard import index_path, load_done, save_done, shard_order
from models import create_model
from util.geometry import PHASES, SPLIT_FILE, split_key
from util.io import write_json_atomic
from util.misc import item_generator
from util.nifti_io import load_nifti
from util.shard import Shard
from util.volumes import write_synthesised_volumes

#: Below this label agreement two volumes are not taken as crops of one spine.
MIN_LABEL_AGREEMENT = 0.9
#: Half width (rows) of the search around the centroid estimate of a row offset.
OFFSET_SEARCH = 2
#: Slices in ``(composed CT (S, S) in [-1, 1], synthesised mask (S, S) bool)`` per index.
SliceDict = dict[int, tuple[np.ndarray, np.ndarray]]


# ----------------------------------------------------------------------------- ordering
def iterative_order(keys: Sequence[str], grades: Mapping[str, int]) -> list[str]:
    """Synthesis order of ``--iterative``: patients in order of first appearance; within a
    patient its fractured vertebrae (grade > 0) first, then the others (grade 0 or unknown
    -1), each group in the order of ``keys``."""
    by_patient: dict[str, list[str]] = {}
    for key in keys:
        by_patient.setdefault(split_key(key)[0], []).append(key)
    out: list[str] = []
    for group in by_patient.values():
        out += [k for k in group if grades.get(k, -1) > 0]
        out += [k for k in group if grades.get(k, -1) <= 0]
    return out


# ----------------------------------------------------------------------------- context
def label_agreement(label_a: np.ndarray, label_b: np.ndarray, offset: int) -> float:
    """Agreement of ``label_a[r]`` and ``label_b[r + offset]`` over their overlapping rows:
    the fraction of voxels labelled in either volume whose ids are equal (0 if none)."""
    n = label_a.shape[0]
    lo, hi = max(0, -offset), min(n, label_b.shape[0] - offset)
    if hi <= lo:
        return 0.0
    a, b = label_a[lo:hi], label_b[lo + offset : hi + offset]
    either = (a > 0) | (b > 0)
    total = int(either.sum())
    return float((a[either] == b[either]).sum() / total) if total else 0.0


def estimate_row_offset(label_v: np.ndarray, label_u: np.ndarray) -> tuple[int, float]:
    """Row offset ``o`` with ``label_v[r] ~ label_u[r + o]`` between two (H, W, D) label
    volumes of one straightened spine, and the label agreement at it (see the module
    docstring): centroid estimate over the shared ids, refined by an agreement search.
    ``ValueError`` when the shapes differ or no label id is shared."""
    if label_v.shape != label_u.shape:
        raise ValueError(f"label volumes differ in shape: {label_v.shape} vs {label_u.shape}")
    shared = (set(np.unique(label_v)) & set(np.unique(label_u))) - {0}
    if not shared:
        raise ValueError("the two label volumes share no label id")
    rows = np.arange(label_v.shape[0], dtype=np.float64)

    def centre_row(label: np.ndarray, i: int) -> float:
        counts = (label == i).sum(axis=(1, 2))
        return float((rows * counts).sum() / counts.sum())

    # 1. Median of the per-id centroid differences (ids cut by a volume's edge are outliers).
    guess = int(round(np.median([centre_row(label_u, i) - centre_row(label_v, i) for i in shared])))
    # 2. Best agreement within +-OFFSET_SEARCH rows of it.
    candidates = range(guess - OFFSET_SEARCH, guess + OFFSET_SEARCH + 1)
    scores = {o: label_agreement(label_v, label_u, o) for o in candidates}
    best = max(candidates, key=lambda o: (scores[o], -abs(o - guess)))
    return best, scores[best]


def replace_context(
    ct_v: np.ndarray,
    label_v: np.ndarray,
    vid: int,
    *,
    syn_ct_u: np.ndarray,
    syn_label_u: np.ndarray,
    label_u: np.ndarray,
    uid: int,
    offset: int,
    slices: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Copy a synthesised neighbour ``uid`` into the volume of vertebra ``vid``.

    Args:
        ct_v, label_v: (H, W, D) input CT (uint8) and label volume of ``vid``.
        syn_ct_u, syn_label_u: (H, W, D) synthesised CT and label of ``uid`` (its own volume).
        label_u: (H, W, D) original label of ``uid``'s volume (its rows count as ``uid``'s).
        offset: ``o`` of :func:`estimate_row_offset` (row ``r`` of ``v`` is row ``r + o`` of
            ``u``).
        slices: the slices ``uid`` was synthesised in.

    Returns new ``(ct, label)`` arrays: in each slice of ``slices``, the rows of ``v``'s volume
    holding ``uid`` in ``label_v`` or in the mapped synthesised label take ``u``'s synthesised
    rows; rows holding ``vid`` are left alone.
    """
    ct, label = ct_v.copy(), label_v.copy()
    n = ct.shape[0]
    r = np.arange(n)
    src = r + offset
    inside = (src >= 0) & (src < syn_ct_u.shape[0])
    src_c = np.clip(src, 0, syn_ct_u.shape[0] - 1)
    for k in slices:
        has_u = (label_v[:, :, k] == uid).any(axis=1)
        has_u |= inside & (syn_label_u[src_c, :, k] == uid).any(axis=1)
        has_u |= inside & (label_u[src_c, :, k] == uid).any(axis=1)
        rows = has_u & inside & ~(label_v[:, :, k] == vid).any(axis=1)
        ct[rows, :, k] = syn_ct_u[src_c[rows], :, k]
        label[rows, :, k] = syn_label_u[src_c[rows], :, k]
    return ct, label


# ----------------------------------------------------------------------------- synthesis
def slice_samples(
    dataset: Any,
    key: str,
    *,
    ct: np.ndarray | None = None,
    label: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The model inputs of every valid slice of ``key`` (``dataset.get_sample``). With
    ``ct``/``label`` ((H, W, D) native volumes, e.g. from :func:`replace_context`) the image
    keys are rebuilt from them instead; slice ratio, CAM and grade stay the dataset's."""
    samples = [dataset.get_sample(key, k) for k in dataset.valid_slices(key)]
    if ct is None and label is None:
        return samples
    if ct is None or label is None:
        raise ValueError("pass both ct and label, or neither")
    size = dataset.img_size
    ct_s = volume_to_slices(ct, "ct", size, f"{key} (with context)")
    label_s = volume_to_slices(label, "label", size, f"{key} (with context)")
    vid = split_key(key)[1]
    normal = dataset.normal_ids(key)
    for sample in samples:
        k = int(sample["slice_index"])
        s = build_slice_sample(ct_s[k], label_s[k], None, vid, normal, **dataset.slice_options())
        for name in ("A", "B", "vert_mask", "normal_vert"):
            sample[name] = torch.from_numpy(s[name][None])
        sample["height"] = torch.tensor(s["height"], dtype=torch.float32)
        sample["x1"] = torch.tensor(s["x1"], dtype=torch.int64)
        sample["x2"] = torch.tensor(s["x2"], dtype=torch.int64)
    return samples


def synthesise_samples(
    model: Any,
    samples: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    steps: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[SliceDict, int | None]:
    """Run ``model.infer`` (a ``Pix2PixModel`` in eval mode) on ``samples`` in batches,
    ``steps`` sampling steps per slice (``None``: the model's default).

    Returns ``({slice index: (composed CT (S, S) float32 in [-1, 1], mask (S, S) bool)},
    steps run)``: ``fake_B`` and ``fine_seg > 0.5`` after SHRM at the predicted height, and
    ``InferenceOutput.steps`` (``None`` for a one-pass generator or no sample).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: SliceDict = {}
    steps_run = None
    for i in range(0, len(samples), batch_size):
        batch = default_collate(list(samples[i : i + batch_size]))
        result = model.infer(batch, steps=steps, generator=generator)
        steps_run = result.steps
        fake = result.fake_B[:, 0].float().cpu().numpy()
        seg = (result.fine_seg[:, 0] > 0.5).cpu().numpy()
        for j, k in enumerate(batch["slice_index"].tolist()):
            out[int(k)] = (fake[j], seg[j])
    return out, steps_run


def _context_volumes(
    dataset: Any, key: str, done: Mapping[str, dict[str, Any]], out_dir: Path
) -> tuple[np.ndarray | None, np.ndarray | None, list[dict[str, Any]]]:
    """``key``'s input with every already-synthesised fractured vertebra of its patient
    (present in its label volume) as context; ``(None, None, [])`` when there is none."""
    pid, vid = split_key(key)
    ct, _, _ = load_nifti(dataset.root / "CT" / f"{key}.nii.gz")
    label, _, _ = load_nifti(dataset.root / "label" / f"{key}.nii.gz")
    present = set(np.unique(label).tolist())
    used: list[dict[str, Any]] = []
    ct_ctx, label_ctx = ct, label
    for other, rec in done.items():
        opid, uid = split_key(other)
        if not rec["fractured"] or opid != pid or uid == vid or uid not in present:
            continue
        label_u, _, _ = load_nifti(rec["root"] / "label" / f"{other}.nii.gz")
        if label_u.shape != label.shape:
            warnings.warn(f"{other} and {key} differ in shape; not used as context", stacklevel=2)
            continue
        offset, agreement = estimate_row_offset(label, label_u)
        if agreement < MIN_LABEL_AGREEMENT:
            warnings.warn(
                f"{other} not used as context of {key}: label agreement {agreement:.3f} < "
                f"{MIN_LABEL_AGREEMENT} (not crops of one straightened spine?)",
                stacklevel=2,
            )
            continue
        syn_ct, _, _ = load_nifti(out_dir / "CT" / f"{other}.nii.gz")
        syn_label, _, _ = load_nifti(out_dir / "label" / f"{other}.nii.gz")
        ct_ctx, label_ctx = replace_context(
            ct_ctx,
            label_ctx,
            vid,
            syn_ct_u=syn_ct,
            syn_label_u=syn_label,
            label_u=label_u,
            uid=uid,
            offset=offset,
            slices=rec["slices"],
        )
        used.append({"id": other, "row_offset": offset, "agreement": round(agreement, 4)})
    if not used:
        return None, None, []
    return ct_ctx, label_ctx, used


def _synthesise_one(
    model: Any, ds: Any, key: str, *, done: dict, out_dir: Path, iterative: bool, **kw: Any
) -> tuple[dict[str, Any], int | None]:
    """Synthesise ``key`` into ``out_dir``; returns its index entry and the steps run."""
    ct_ctx, label_ctx, used = (
        _context_volumes(ds, key, done, out_dir) if iterative else (None, None, [])
    )
    samples = slice_samples(ds, key, ct=ct_ctx, label=label_ctx)
    slices, steps_run = synthesise_samples(model, samples, **kw)
    write_synthesised_volumes(ds, {key: slices}, out_dir)
    entry = {
        "phase": ds.phase,
        "grade": int(ds.grades.get(key, -1)),
        "slices": sorted(slices),
        "ct": f"CT/{key}.nii.gz",
        "label": f"label/{key}.nii.gz",
        "context": used,
    }
    return entry, steps_run


def synthesise_datasets(
    model: Any,
    datasets: Sequence[Any],
    out_dir: str | Path,
    *,
    keys: Sequence[str] | None = None,
    iterative: bool = False,
    batch_size: int = 8,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    shard: Shard | None = None,
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Synthesise every vertebra of ``datasets`` (``VertebraDataset``s of one data root, e.g.
    one per split), or only ``keys``, and write the volumes under ``out_dir``; ``steps``
    sampling steps per slice (``None``: the model's default), each vertebra seeded from
    ``seed`` and its id.

    ``shard`` (default 0/1: everything) runs only that share of the vertebrae, by patient
    when ``iterative`` (:mod:`evaluation.synthesis_shard`); a vertebra recorded as done by a
    run with the same fingerprint ``run`` (the caller's description of model and settings)
    is not synthesised again.

    Returns the index (also written to ``<out_dir>/synthesis.json``, or to the shard's file
    for N > 1, which ``merge_synthesis`` combines): ``order`` (of the whole run),
    ``iterative``, ``num_inference_steps`` (steps run per slice, ``None`` for a one-pass
    generator) and per vertebra ``{"phase", "grade", "slices", "ct", "label", "context"}``
    (paths relative to ``out_dir``; ``context`` lists the neighbours used with
    ``--iterative``). ``ValueError`` when a key of ``keys`` is in none of the datasets.
    """
    out_dir, shard = Path(out_dir), shard or Shard()
    run = {"seed": seed, "steps": steps, "iterative": iterative, **(run or {})}
    owner: dict[str, Any] = {}
    for ds in datasets:
        for key in ds.keys():
            owner.setdefault(key, ds)
    if keys is None:
        keys = list(owner)
    missing = [k for k in keys if k not in owner]
    if missing:
        raise ValueError(
            f"--ids not in the selected split(s) (or without a valid slice): {missing}"
        )
    grades = {k: int(owner[k].grades.get(k, -1)) for k in keys}
    order = iterative_order(keys, grades) if iterative else list(keys)
    device = getattr(model, "device", torch.device("cpu"))
    model.eval()
    done: dict[str, dict[str, Any]] = {}
    entries: dict[str, Any] = {}
    steps_run = None
    mine = shard_order(order, shard, iterative)
    for key in tqdm(mine, desc=f"synthesis {shard}", unit="vertebra", disable=not progress):
        rec = load_done(out_dir, key, run)
        if rec is None:
            gen = item_generator(seed, key, device)
            entry, steps_run = _synthesise_one(
                model, owner[key], key, done=done, out_dir=out_dir, iterative=iterative,
                batch_size=batch_size, steps=steps, generator=gen,
            )  # fmt: skip
            save_done(out_dir, key, run, entry, steps_run)
        else:
            entry, steps_run = rec["entry"], rec["steps"]
        entries[key] = entry
        fractured = grades[key] > 0
        done[key] = {"root": owner[key].root, "slices": entry["slices"], "fractured": fractured}
    index = {
        "iterative": iterative,
        "order": order,
        "num_inference_steps": steps_run,
        "vertebrae": entries,
    }
    write_json_atomic(index_path(out_dir, shard), index)
    return index


# ----------------------------------------------------------------------------- from options
def datasets_for(opt: argparse.Namespace, phase: str) -> list[Any]:
    """One dataset per split of ``phase`` (``PHASES``), built from ``opt``; splits without
    any vertebra in ``vertebra_data.json`` are left out (``ValueError`` if all are)."""
    if phase not in PHASES:
        raise ValueError(f"--phase {phase!r}: choose one of {list(PHASES)}")
    path = Path(opt.dataroot) / SPLIT_FILE
    listed = {k for k, v in load_splits(opt.dataroot).items() if v}
    splits = [s for s in PHASES[phase] if s in listed]
    if not splits:
        raise ValueError(f"{path} has no vertebra in the split(s) {PHASES[phase]}")
    out = []
    for split in splits:
        o = copy.copy(opt)
        o.phase = split
        out.append(find_dataset(opt.dataset_mode).from_opt(o))
    return out


def run_synthesis(
    opt: argparse.Namespace,
    *,
    phase: str,
    ids: Sequence[str] | None = None,
    iterative: bool = False,
    out: str | Path | None = None,
    shard: Shard | None = None,
) -> tuple[dict[str, Any], Path]:
    """Load the model of ``opt`` (test options) and synthesise the vertebrae of ``phase``
    (``PHASES``), or only ``ids``, with :func:`synthesise_datasets` into ``out`` (default
    ``<results_dir>/<name>/synthesis_<phase>_<epoch>/``), only ``shard``'s share of them
    when given. Returns the index, completed with the run's provenance (name, generator
    type, data root, checkpoint), and the folder."""
    datasets = datasets_for(opt, phase)
    model = create_model(opt)
    model.setup(opt)
    model.eval()
    out_dir = Path(out or Path(opt.results_dir) / opt.name / f"synthesis_{phase}_{opt.epoch}")
    provenance = {
        "name": opt.name,
        "netG_type": opt.netG_type,
        "phase": phase,
        "dataroot": str(opt.dataroot),
        "checkpoint": str(model.checkpoint_path(opt.epoch)),
        "checkpoint_epoch": model.epoch,
    }
    ckpt = Path(provenance["checkpoint"])
    # what makes a recorded vertebra this run's: the model, its weights file and settings
    run = {
        **provenance,
        "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns if ckpt.is_file() else None,
        "precision": getattr(opt, "precision", None),
        "num_inference_steps": getattr(opt, "num_inference_steps", None),
        "no_ema": getattr(opt, "no_ema", None),
    }
    shard = shard or Shard()
    index = synthesise_datasets(
        model,
        datasets,
        out_dir,
        keys=ids,
        iterative=iterative,
        batch_size=opt.batch_size,
        seed=opt.seed,
        shard=shard,
        run=run,
    )
    index.update(provenance)
    write_json_atomic(index_path(out_dir, shard), index)
    return index, out_dir
