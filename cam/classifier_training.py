"""Training of the small normal-vs-fractured slice classifier whose Grad-CAM++ maps feed HGAM.

The library behind ``scripts/train_classifier.py`` (phantom at 64 px: about 30 s with one
thread, under 3 min at 128 px; on a busy shared CPU, --num_threads 1 is several times faster
than more threads)::

    python scripts/train_classifier.py --dataroot datasets/phantom --img_size 64 --epochs 10 \
        --out checkpoints/classifier/classifier.pth

Data: for every vertebra of the train split (val split for the metrics), the whole, unmasked
sagittal slices ``CT/<key>[:, :, k]`` over the central 4/5 of the target's L-R extent
(``data.vertebra_dataset.central_range``) where the target label is present, resized to
``--img_size`` like the dataset does, then cut to the central ``window`` rows
(``--window``, default 1/4 of ``S``: 64 mm of a 256 mm field, the target's body, its discs and
the rims of its neighbours). Label: 1 (fractured) when the vertebra's grade in
``vertebra_data.json`` is > 0, else 0.

Why a row window: a whole slice of the straightened volume shows about eight vertebrae, and a
normal target often has a fractured neighbour; with whole slices the label would depend on
which body sits in the centre, not on what a fracture looks like (a first try on the phantom
stayed at chance). The network is fully convolutional with global average pooling, so
``cam.heatmaps`` applies it to whole slices unchanged: its map then marks fractured-looking
bone wherever it is, neighbours included, which is what HGAM wants.

Training: class-weighted cross-entropy (weights ``N / (2 N_c)``: fractures are about 20 % of
the slices), Adam with a cosine learning-rate decay, and light augmentation (a random shift of
up to 1/32 of the window per axis, +-10 % contrast, +-0.1 brightness). After every epoch the
val slice accuracy / balanced accuracy and the vertebra-level balanced accuracy (mean
fractured probability over a vertebra's slices > 0.5) are reported; the checkpoint with the
best val slice balanced accuracy is kept (the last one when there is no val split). It is one
dict (``util.checkpoint``) with ``classifier`` (state dict), ``config`` (rebuilds the model,
``img_size`` included), ``optimizer``, ``epoch``, ``metrics``, ``history``, ``options`` and the
RNG states.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.vertebra_dataset import load_splits, volume_to_slices
from data.vertebra_geometry import central_range
from models.fracture_classifier import FractureClassifier
from util.checkpoint import capture_rng_state, save_checkpoint
from util.geometry import split_key, volume_path
from util.misc import seed_everything
from util.nifti_io import load_nifti


@dataclass
class SliceSet:
    """Slices of one split: ``images`` ``(N, rows, S)`` uint8 CT window, ``labels`` ``(N,)`` int64
    in {0, 1}, ``vertebra`` ``(N,)`` int64 index into ``keys`` (the vertebra of each slice)."""

    images: np.ndarray
    labels: np.ndarray
    vertebra: np.ndarray
    keys: list[str]


def read_split(dataroot: str | Path, phase: str) -> dict[str, int]:
    """``{key: grade}`` of ``phase`` in ``<dataroot>/vertebra_data.json`` (may be empty)."""
    return load_splits(dataroot).get(phase, {})


def central_slices(label_slices: np.ndarray, vid: int) -> np.ndarray:
    """Slice indices (ascending) in the central 4/5 of vertebra ``vid``'s extent that contain
    it; ``label_slices`` is slice-major ``(D, S, S)``. Empty when the vertebra is absent."""
    present = (label_slices == vid).any(axis=(1, 2))
    zs = np.flatnonzero(present)
    if zs.size == 0:
        return zs
    lo, hi = central_range(int(zs[0]), int(zs[-1]))
    ks = np.arange(lo, hi + 1)
    return ks[present[ks]]


def row_window(img_size: int, window: float) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the central ``window`` fraction of ``img_size`` rows (at
    least 8 rows, and even so that the network's pooling divides it at small sizes)."""
    if not 0.0 < window <= 1.0:
        raise ValueError(f"--window must lie in (0, 1], got {window}")
    n = min(img_size, max(8, 2 * round(window * img_size / 2)))
    start = (img_size - n) // 2
    return start, start + n


def load_slices(
    dataroot: str | Path,
    phase: str,
    img_size: int,
    *,
    window: float = 0.25,
    progress: bool = True,
) -> SliceSet:
    """Central slices of every vertebra of ``phase`` at ``img_size``, cut to the central
    ``window`` rows: ``images`` are ``(N, rows, S)`` (see the module docstring)."""
    r0, r1 = row_window(img_size, window)
    root = Path(dataroot)
    grades = read_split(root, phase)
    images, labels, owner, keys = [], [], [], []
    for key in tqdm(grades, desc=f"load {phase}", unit="vol", disable=not progress):
        _, vid = split_key(key)
        ct_path, label_path = volume_path(root, "CT", key), volume_path(root, "label", key)
        ct, _, _ = load_nifti(ct_path)
        label, _, _ = load_nifti(label_path, expected_shape=ct.shape)
        lab = volume_to_slices(label, "label", img_size, label_path)
        ks = central_slices(lab, vid)
        if ks.size == 0:
            raise ValueError(f"{label_path} does not contain vertebra id {vid} (from {key!r})")
        images.append(volume_to_slices(ct, "ct", img_size, ct_path)[ks, r0:r1])
        labels.append(np.full(ks.size, int(grades[key] > 0), np.int64))
        owner.append(np.full(ks.size, len(keys), np.int64))
        keys.append(key)
    if not keys:
        return SliceSet(
            np.zeros((0, r1 - r0, img_size), np.uint8),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            [],
        )
    return SliceSet(np.concatenate(images), np.concatenate(labels), np.concatenate(owner), keys)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 window ``(N, S, S)`` -> float ``(N, 1, S, S)`` in [-1, 1]."""
    return images.float().unsqueeze(1) / 127.5 - 1.0


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift (up to 1/32 of the size per axis, edge padding), contrast x[0.9, 1.1] and
    brightness +-0.1 of a ``(B, 1, S, S)`` batch in [-1, 1]; the result is clamped to [-1, 1]."""
    b, _, h, w = x.shape
    r = torch.rand(b, 4, generator=generator).to(x.device, x.dtype) * 2 - 1
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = r[:, :2] * (2.0 / 32.0)  # 1/32 of the image = 2/32 in [-1, 1] units
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x * (1 + 0.1 * r[:, 2].view(b, 1, 1, 1)) + 0.1 * r[:, 3].view(b, 1, 1, 1)
    return x.clamp(-1.0, 1.0)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (NaN when it is empty)."""
    classes = np.unique(y_true)
    if classes.size == 0:
        return float("nan")
    return float(np.mean([(y_pred[y_true == c] == c).mean() for c in classes]))


@torch.no_grad()
def predict_proba(
    model: FractureClassifier, images: np.ndarray, batch_size: int = 64
) -> np.ndarray:
    """Fractured-class probability ``(N,)`` of uint8 slices ``(N, S, S)`` (eval mode)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_unit(torch.from_numpy(images[i : i + batch_size])).to(device)
        out.append(model(x).softmax(dim=1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def evaluate_classifier(
    model: FractureClassifier, data: SliceSet, batch_size: int = 64
) -> dict[str, float]:
    """Slice accuracy and balanced accuracy, and vertebra-level balanced accuracy (label: any
    slice labelled fractured; prediction: mean fractured probability over its slices > 0.5)."""
    p = predict_proba(model, data.images, batch_size)
    pred = (p > 0.5).astype(np.int64)
    n_vert = len(data.keys)
    counts = np.bincount(data.vertebra, minlength=n_vert)
    p_vert = np.bincount(data.vertebra, weights=p, minlength=n_vert) / np.maximum(counts, 1)
    y_vert = np.zeros(n_vert, np.int64)
    np.maximum.at(y_vert, data.vertebra, data.labels)  # a vertebra with any fractured slice
    return {
        "accuracy": float((pred == data.labels).mean()) if len(pred) else float("nan"),
        "balanced_accuracy": balanced_accuracy(data.labels, pred),
        "vertebra_balanced_accuracy": balanced_accuracy(y_vert, (p_vert > 0.5).astype(np.int64)),
    }


def _train_epoch(
    model: FractureClassifier,
    train: SliceSet,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    weight: torch.Tensor,
    g: torch.Generator,
    *,
    batch_size: int,
    augmentation: bool,
    bar: str | None,
) -> float:
    """One pass over ``train`` in a random order drawn from ``g`` (a last batch of one slice
    is skipped: BatchNorm needs two); returns the mean class-weighted cross-entropy.
    ``bar``: the progress bar's title (None: no bar)."""
    device = next(model.parameters()).device
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    model.train()
    order = torch.randperm(len(labels), generator=g)
    total, n = 0.0, 0
    starts = range(0, len(order), batch_size)
    for i in tqdm(starts, desc=bar, leave=False, disable=bar is None):
        idx = order[i : i + batch_size]
        if len(idx) < 2:  # BatchNorm needs two samples
            continue
        x = to_unit(images[idx]).to(device)
        if augmentation:
            x = augment(x, g)
        y = labels[idx].to(device)
        loss = F.cross_entropy(model(x), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
        n += len(idx)
    return total / max(n, 1)


def train_classifier(
    model: FractureClassifier,
    train: SliceSet,
    val: SliceSet | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    augmentation: bool = True,
    progress: bool = True,
    log_epochs: bool = True,
    on_best: Callable[[list[dict[str, float]], torch.optim.Optimizer], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``train`` (device: the model's) and return the per-epoch
    history (``epoch``, ``loss``, val metrics of :func:`evaluate_classifier` when ``val`` has
    slices).

    ``on_best(history, optimizer)`` is called after every epoch that improves the val slice
    balanced accuracy (every epoch without val data); ``history[-1]`` is that epoch.
    """
    if len(train.labels) == 0:
        raise ValueError("the training set has no slice")
    counts = np.bincount(train.labels, minlength=2)
    if counts.min() == 0:
        raise ValueError(f"the training set needs both classes, got counts {counts.tolist()}")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    # Class weights N / (2 N_c): each class contributes half of the loss.
    weight = torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train.labels) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    history: list[dict[str, float]] = []
    best = -math.inf
    for epoch in range(1, epochs + 1):
        loss = _train_epoch(
            model, train, opt, sched, weight, g,
            batch_size=batch_size, augmentation=augmentation,
            bar=f"epoch {epoch}" if progress else None,
        )  # fmt: skip
        record: dict[str, float] = {"epoch": epoch, "loss": loss}
        if val is not None and len(val.labels):
            val_metrics = evaluate_classifier(model, val, batch_size)
            record.update({f"val_{k}": v for k, v in val_metrics.items()})
            score = record["val_balanced_accuracy"]
        else:
            score = float(epoch)
        history.append(record)
        if log_epochs:
            tqdm.write(
                " ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in record.items()
                )
            )
        if score > best:
            best = score
            if on_best is not None:
                on_best(history, opt)
    return history


def train_from_dataroot(
    dataroot: str | Path,
    out: str | Path,
    *,
    img_size: int = 128,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 2e-3,
    widths: Sequence[int] = (16, 32, 48, 64, 64),
    n_pool: int = 2,
    window: float = 0.25,
    augmentation: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    options: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Train a :class:`FractureClassifier` on the train split of ``dataroot`` (the val split
    for the metrics) and save the best epoch's checkpoint to ``out`` (module docstring);
    ``options`` (the command line) are stored in it. Returns the best epoch's record."""
    for name, value, least in (("epochs", epochs, 1), ("batch_size", batch_size, 2)):
        if value < least:
            raise ValueError(f"--{name} is too small: {value}")
    if img_size < 1:
        raise ValueError(f"--img_size is too small: {img_size}")
    if lr <= 0:
        raise ValueError(f"--lr must be > 0, got {lr}")
    seed_everything(seed)
    model = FractureClassifier(img_size=img_size, widths=tuple(widths), n_pool=n_pool)
    model = model.to(device)
    train = load_slices(dataroot, "train", img_size, window=window, progress=progress)
    val = load_slices(dataroot, "val", img_size, window=window, progress=progress)
    print(
        f"train: {len(train.labels)} slices of {len(train.keys)} vertebrae "
        f"({int(train.labels.sum())} fractured); val: {len(val.labels)} slices; device {device}"
    )

    def save(history: list[dict[str, float]], optimizer: torch.optim.Optimizer) -> None:
        save_checkpoint(
            Path(out),
            {
                "classifier": model.state_dict(),
                "config": model.config(),
                "img_size": img_size,
                "window": window,
                "optimizer": optimizer.state_dict(),
                "epoch": history[-1]["epoch"],
                "metrics": history[-1],
                "history": list(history),
                "options": dict(options or {}),
                "rng": capture_rng_state(),
            },
        )

    history = train_classifier(
        model, train, val, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        augmentation=augmentation, progress=progress, on_best=save,
    )  # fmt: skip
    return max(history, key=lambda r: r.get("val_balanced_accuracy", r["epoch"]))
