"""Slice evaluation shared by test.py and ``train.py --eval_freq``.

For every valid slice of every vertebra of a split: run the model's inference pipeline
(``Pix2PixModel.infer``: sample, then SHRM) and score the result against the ground truth
with ``util.metrics``. Where the data root holds
the healthy volume of a fractured vertebra (phantom ``healthy_CT/``), the synthesis is scored
against that healthy truth (pseudo-healthy synthesis); otherwise against the slice itself.
A trivial baseline (the band filled with the mean of the rows just above and below it,
composed at the measured height) is scored beside it on the same slices (``fill_*``), and a
constant height predictor beside the height measures (``const_rhdr``).

Texture: ``hf_ratio`` is the band's high-frequency energy relative to the truth's (the mean
squared Laplacian inside the truth's band rows; a Laplacian-energy sharpness measure, cf. the
variance-of-Laplacian focus measure of Pech-Pacheco et al. 2000): 1 = truth-like texture,
<< 1 = blurred (a posterior mean), >> 1 = noise; :func:`pooled_hf_ratio` pools it over slices.

Heights: ``rhdr`` compares the synthesised vertebra mask's height with the truth (as the
original measures it); ``rhdr_head`` the height SHRM restored from the height head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.shrm import restored_height_rows, shrm_compose
from util.geometry import REFERENCE_SIZE, band_px, band_rows, split_key
from util.metrics import rhdr, slice_metrics
from util.misc import item_generator

#: The original's evaluation keeps slices with more than 400 label voxels at 256 px.
MIN_VOXELS_AT_256 = 400
#: Keys copied from the truth sample when a healthy truth replaces the slice itself.
_TRUTH_KEYS = ("B", "vert_mask", "height", "x1", "x2")


class EvalSlices(Dataset):
    """Wrap a ``VertebraDataset`` in ``slice_mode='all'``: each item is the model input of
    one slice plus its truth (``truth_*`` keys, from the healthy volume where there is one).
    Slices with fewer truth voxels than the original's threshold are skipped."""

    def __init__(self, dataset: Any, min_voxels_at_256: int = MIN_VOXELS_AT_256) -> None:
        self.dataset = dataset
        size = dataset.img_size
        min_voxels = min_voxels_at_256 * (size / REFERENCE_SIZE) ** 2
        self.items: list[tuple[str, int, bool]] = []
        for key in dataset.keys():
            healthy = dataset.has_healthy(key)
            healthy_ok = set(dataset.valid_slices(key, healthy=True)) if healthy else set()
            for k in dataset.valid_slices(key):
                use_healthy = healthy and k in healthy_ok
                self.items.append((key, k, use_healthy))
        self.min_voxels = min_voxels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, k, healthy = self.items[index]
        sample = self.dataset.get_sample(key, k)
        truth = self.dataset.get_sample(key, k, healthy=True) if healthy else sample
        for name in _TRUTH_KEYS:
            sample[f"truth_{name}"] = truth[name]
        sample["truth_kind"] = "healthy" if healthy else "self"
        sample["keep"] = torch.tensor(bool(truth["vert_mask"].sum() > self.min_voxels))
        return sample


def fill_baseline(masked_ct: Tensor, band_mask: Tensor, height: Tensor, h2: int) -> Tensor:
    """Trivial baseline, SHRM-composed at the measured height.

    Args:
        masked_ct: (B, 1, S, S) input in A geometry, band = 0.
        band_mask: (B, 1, S, S), 1 = band.
        height: (B,) measured vertebra height in rows.
    Returns:
        (B, 1, S, S): each band column filled with the mean of the rows just above and just
        below the band, then composed like the model's output.
    """
    b0, b1 = band_rows(masked_ct.shape[-2])
    fill = 0.5 * (masked_ct[..., b0 - 1 : b0, :] + masked_ct[..., b1 : b1 + 1, :])
    filled = band_mask * fill + (1 - band_mask) * masked_ct
    rows = restored_height_rows(torch.zeros_like(height), height, h2)
    return shrm_compose(filled, masked_ct, rows, h2)


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    #: per vertebra id, the images of its most central evaluated slice (H, W) float arrays
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: per vertebra id, {slice index: (composed CT (S, S) in [-1, 1], mask (S, S) bool)}
    slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    seconds: float = 0.0
    #: sampling steps per slice (``InferenceOutput.steps``; None for a one-pass generator)
    steps: int | None = None

    def add(self, part: EvalResult) -> None:
        """Append the result of further vertebrae (rows after these rows)."""
        self.rows.extend(part.rows)
        self.images.update(part.images)
        self.slices.update(part.slices)
        self.seconds += part.seconds
        if part.steps is not None:
            self.steps = part.steps


class _BatchArrays(NamedTuple):
    """One evaluated batch as numpy arrays: outputs (N, S, S) and their truth."""

    fake: np.ndarray  # composed CT in [-1, 1]
    seg: np.ndarray  # synthesised vertebra mask, bool
    base: np.ndarray  # fill baseline in [-1, 1]
    std: np.ndarray | None  # per-pixel sample std, or None
    h_std: np.ndarray | None  # (N,) height std as a fraction of h2, or None
    rows_pred: np.ndarray  # (N,) restored height in rows (SHRM, stage 2)
    truth_b: np.ndarray  # truth CT in [-1, 1]
    truth_m: np.ndarray  # truth vertebra mask, bool
    h2: int  # band rows


def _batch_arrays(out: Any, batch: dict[str, Any]) -> _BatchArrays:
    """``model.infer``'s output and the fill baseline of ``batch``, as numpy arrays."""
    h2 = band_px(batch["A"].shape[-2])
    baseline = fill_baseline(batch["A"], batch["mask"], batch["height"].float().reshape(-1), h2)
    return _BatchArrays(
        fake=out.fake_B[:, 0].cpu().numpy(),
        seg=(out.fine_seg[:, 0] > 0.5).cpu().numpy(),
        base=baseline[:, 0].numpy(),
        std=None if out.std is None else out.std[:, 0].cpu().numpy(),
        h_std=None if out.height_std is None else out.height_std.reshape(-1).cpu().numpy(),
        rows_pred=out.rows2.cpu().numpy(),
        truth_b=batch["truth_B"][:, 0].numpy(),
        truth_m=batch["truth_vert_mask"][:, 0].numpy() > 0.5,
        h2=h2,
    )


def _slice_row(
    batch: dict[str, Any], j: int, arr: _BatchArrays, columns: dict[str, Any]
) -> dict[str, Any]:
    """The metrics row of slice ``j`` of ``batch`` (``columns`` follow the identity keys)."""
    key = batch["id"][j]
    x1, x2 = int(batch["truth_x1"][j]), int(batch["truth_x2"][j])
    h_gt = float(batch["truth_height"][j])
    band = (x1, x2 + 1)
    pid, vid = split_key(key)
    fake, truth_b, truth_m, seg = arr.fake[j], arr.truth_b[j], arr.truth_m[j], arr.seg[j]
    row: dict[str, Any] = {
        "id": key,
        "patient": pid,
        "vertebra": vid,
        "slice_index": int(batch["slice_index"][j]),
        "slice_ratio": float(batch["slice_ratio"][j]),
        "grade": int(batch["grade"][j]),
        "truth": batch["truth_kind"][j],
        **columns,
    }
    h_seg = mask_height(seg)
    row.update(slice_metrics(fake, truth_b, seg, truth_m, band, h_seg, h_gt))
    row["l1_patch"] = float(np.abs(fake - truth_b)[x1 : x2 + 1].mean())
    row["height_seg_px"] = h_seg
    row["height_head_px"] = float(arr.rows_pred[j])
    row["rhdr_head"] = float(rhdr(float(arr.rows_pred[j]), h_gt))
    row["height_gt_px"] = h_gt
    if arr.h_std is not None:
        row["height_std_px"] = float(arr.h_std[j] * arr.h2)
    e_truth = hf_energy(truth_b, x1, x2)
    row["hf_energy_truth"] = e_truth
    for prefix, img in (("", fake), ("fill_", arr.base[j])):
        row[f"{prefix}hf_energy"] = hf_energy(img, x1, x2)
        row[f"{prefix}hf_ratio"] = row[f"{prefix}hf_energy"] / max(e_truth, 1e-12)
    fill = slice_metrics(arr.base[j], truth_b, truth_m, truth_m, band)
    for k in ("ssim_patch", "psnr_patch", "ssim_global", "psnr_global"):
        row[f"fill_{k}"] = fill[k]
    row["fill_l1_patch"] = float(np.abs(arr.base[j] - truth_b)[x1 : x2 + 1].mean())
    return row


def vertebra_batches(
    items: Sequence[tuple[str, int, bool]], batch_size: int, max_batches: int | None = None
) -> dict[str, list[list[int]]]:
    """The batches of an evaluation: per vertebra id (in the order of ``items``, e.g.
    ``EvalSlices.items``), the indices into ``items`` of its slices, at most ``batch_size``
    per batch. A batch never mixes vertebrae; only the first ``max_batches`` batches
    (None: all) are kept, so a vertebra may keep only its first batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    slices: dict[str, list[int]] = {}
    for i, (key, _, _) in enumerate(items):
        slices.setdefault(key, []).append(i)
    plan: dict[str, list[list[int]]] = {}
    left = math.inf if max_batches is None else max_batches
    for key, idx in slices.items():
        for b in range(0, len(idx), batch_size):
            if left <= 0:
                return plan
            plan.setdefault(key, []).append(idx[b : b + batch_size])
            left -= 1
    return plan


def _add_batch(
    part: EvalResult, batch: dict[str, Any], out: Any, extra: Mapping[str, Any], keep: bool
) -> None:
    """Score the slices of ``batch`` (``model.infer``'s ``out``) into ``part``: rows, the
    images of the most central slice, and with ``keep`` the composed slices."""
    part.steps = out.steps
    arr = _batch_arrays(out, batch)
    columns = {**extra, "steps": "" if out.steps is None else out.steps}
    for j, key in enumerate(batch["id"]):
        if not bool(batch["keep"][j]):
            continue
        row = _slice_row(batch, j, arr, columns)
        part.rows.append(row)
        best = part.images.get(key)
        if best is None or row["slice_ratio"] < best["slice_ratio"]:
            part.images[key] = {
                "input": batch["A"][j, 0].numpy(),
                "output": arr.fake[j],
                "truth": arr.truth_b[j],
                "difference": np.abs(arr.fake[j] - arr.truth_b[j]),
                "baseline": arr.base[j],
                "uncertainty": None if arr.std is None else arr.std[j],
                "ssim_patch": row["ssim_patch"],
                "slice_ratio": row["slice_ratio"],
            }
        if keep:
            part.slices.setdefault(key, {})[row["slice_index"]] = (arr.fake[j], arr.seg[j])


def evaluate_vertebrae(
    model: Any,
    slices: EvalSlices,
    plan: Mapping[str, Sequence[Sequence[int]]],
    *,
    num_workers: int = 0,
    keep_slices: bool = False,
    steps: int | None = None,
    seed: int = 0,
    desc: str = "evaluating",
    extra: Mapping[str, Any] | None = None,
) -> Iterator[tuple[str, EvalResult]]:
    """Evaluate the vertebrae of ``plan`` (:func:`vertebra_batches`, or a subset of it) one
    after the other, yielding ``(id, its EvalResult)`` as each is finished.

    Each vertebra's sampling noise comes from its own generator, seeded from ``seed`` and
    its id (``util.misc.item_generator``), and its batches hold no other vertebra: its rows
    do not depend on which other vertebrae are evaluated, in which process or order. They do
    depend on the batch split for a stochastic (diffusion) sampler. ``const_rhdr`` needs
    every row: :func:`add_const_rhdr` after the last vertebra.
    """
    flat = [(key, list(b)) for key, batches in plan.items() for b in batches]
    # own generator: iterating a DataLoader draws its workers' base seed from it, not from
    # torch's global RNG (training validation must leave the training stream alone)
    loader = DataLoader(
        slices,
        batch_sampler=[b for _, b in flat],
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    device = getattr(model, "device", torch.device("cpu"))
    model.eval()
    key, part, gen = None, EvalResult(rows=[]), None
    last = time.perf_counter()
    batches = tqdm(loader, desc=desc, unit="batch", leave=False)
    for (batch_key, _), batch in zip(flat, batches, strict=True):
        if batch_key != key:
            if key is not None:
                yield key, part
                last = time.perf_counter()
            key, part = batch_key, EvalResult(rows=[])
            gen = item_generator(seed, key, device)
        out = model.infer(batch, steps=steps, generator=gen)
        _add_batch(part, batch, out, extra or {}, keep_slices)
        now = time.perf_counter()
        part.seconds += now - last
        last = now
    if key is not None:
        yield key, part


def add_const_rhdr(rows: Sequence[dict[str, Any]]) -> None:
    """Trivial height predictor beside ``rhdr``: the mean true height of all ``rows``, in
    each row's ``const_rhdr`` (it even knows the test set's mean, so beating it is a
    conservative claim). A function of every row: computed once all are there."""
    if rows:
        mean_h = float(np.mean([r["height_gt_px"] for r in rows]))
        for r in rows:
            r["const_rhdr"] = float(rhdr(mean_h, r["height_gt_px"]))


def evaluate(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    max_batches: int | None = None,
    keep_slices: bool = False,
    steps: int | None = None,
    seed: int = 0,
    desc: str = "evaluating",
    extra_columns: Callable[[], dict[str, Any]] | None = None,
) -> EvalResult:
    """Run ``model.infer`` (a ``Pix2PixModel``, put in eval mode here) over every valid slice
    of ``dataset``, ``steps`` sampling steps per slice (``None``: the model's default), in
    batches of at most ``batch_size`` slices of one vertebra, the first ``max_batches``
    batches only (:func:`vertebra_batches`), each vertebra seeded from ``seed`` and its id
    (:func:`evaluate_vertebrae`; torch's global RNG is not used).

    Returns one metrics row per kept slice (see ``util.metrics.slice_metrics`` for the metric
    keys; ``fill_*`` columns hold the trivial baseline; ``steps`` the sampling steps, empty
    for a one-pass generator), images of the central slice of each vertebra for the report,
    and with ``keep_slices`` the composed slices for volumes.
    """
    slices = EvalSlices(dataset)
    plan = vertebra_batches(slices.items, batch_size, max_batches)
    extra = extra_columns() if extra_columns else {}
    result = EvalResult(rows=[])
    for _, part in evaluate_vertebrae(
        model, slices, plan, num_workers=num_workers, keep_slices=keep_slices, steps=steps,
        seed=seed, desc=desc, extra=extra,
    ):  # fmt: skip
        result.add(part)
    add_const_rhdr(result.rows)
    return result


def hf_energy(img: np.ndarray, x1: int, x2: int) -> float:
    """High-frequency energy of the band of a (H, W) slice: the mean squared Laplacian
    (``scipy.ndimage.laplace``) on rows ``x1 + 1 .. x2 - 1`` and columns ``1 .. W - 2`` (inside
    the band, away from its borders and the image edge)."""
    lap = ndimage.laplace(img.astype(np.float64))
    return float((lap[x1 + 1 : x2, 1:-1] ** 2).mean())


def pooled_hf_ratio(rows: list[dict[str, Any]], prefix: str = "") -> float:
    """Band high-frequency energy of the output (``prefix="fill_"``: of the fill baseline)
    summed over slices, over the truth's: the texture measure of docs/BENCHMARKS.md."""
    truth = sum(r["hf_energy_truth"] for r in rows)
    return sum(r[f"{prefix}hf_energy"] for r in rows) / truth if truth > 0 else math.nan


def mask_height(mask: np.ndarray) -> float:
    """Row extent (px) of the largest connected part of a (H, W) bool mask; 0 when empty.

    The synthesised vertebra's height, measured like the dataset's ``height`` (first to last
    row); stray blobs elsewhere in the slice do not stretch it.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return 0.0
    largest = 1 + int(np.argmax(ndimage.sum_labels(mask, labels, index=range(1, n + 1))))
    rows = np.flatnonzero((labels == largest).any(axis=1))
    return float(rows[-1] - rows[0] + 1)
