"""The original HealthiVert-GAN's evaluation protocol, so that numbers compare with the paper's.

Three pieces, each written from the original's code (``evaluation/RHLV_quantification.py``,
``evaluation/SVM_grading.py``, ``evaluation/generation_eval_sagittal.py``) and checked against
it in ``tests/test_equivalence_original.py``:

1. :func:`rhlv_original`: RHLV per third from a synthesised and an original label volume,
   the original's way (label voxels counted per column over the central 2/5 of the sagittal
   slices, synthetic heights scaled up to the label's maximum, columns kept above 0.7 x the
   height at the mean column, pooled and averaged).
2. :func:`grade_original_protocol`: its grading protocol: a StandardScaler fitted on
   train + test, 5 *unshuffled* stratified folds of train + test, each fold's linear,
   class-balanced SVM scoring the **val** split; precision, recall and F1 (macro) averaged
   over the folds.
3. :func:`synthesis_metrics_original`: its synthesis metrics of one vertebra: Dice, IoU and
   relative volume difference (absolute) of the synthesised label in 3-D, PSNR and SSIM per
   slice on the vertebra's rows ("patch") and on the whole slice ("global"), in the central
   4/5 of its L-R extent, slices with more than 400 label voxels; averaged per vertebra
   (:func:`average_per_vertebra`).

Ours (``evaluation``/``scripts/grade.py``, ``util/metrics.py``) differ on purpose; the
differences and why are in docs/ARCHITECTURE.md. Volumes are ``(I, P, L)`` arrays: rows run
superior -> inferior (axis 0), columns anterior -> posterior (axis 1), sagittal slices along
axis 2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from util.geometry import split_key, volume_path
from util.metrics import SSIM_MIN_WIN_SIZE, ssim_win_size
from util.nifti_io import load_nifti

PROTOCOLS = ("ours", "healthivert")
#: What each protocol's report says produced it.
PROTOCOL_NOTES = {
    "ours": "ours: RHLV from body heights (util.heights, median per third); out-of-fold "
    "stratified CV (shuffled, scaler inside each fold) over the graded vertebrae",
    "healthivert": "healthivert: the original's RHLV (column voxel counts, central 2/5 of the "
    "slices); scaler on train+test, 5 unshuffled folds of train+test, val scored per fold, "
    "fold-averaged macro scores",
}
#: The same for a grading of given features (``scripts/grade.py``): only the classifier
#: protocol changes, the RHLV is the heights table's.
GRADING_NOTES = {
    "ours": "ours: out-of-fold stratified CV (shuffled, scaler inside each fold) over the "
    "graded vertebrae; RHLV from the given heights",
    "healthivert": "healthivert grading: scaler on train+test, 5 unshuffled folds of "
    "train+test, val scored per fold, fold-averaged macro scores; RHLV from the given "
    "heights (not the original's RHLV)",
}
#: The original's thresholds: columns kept above this fraction of the centre height; slices
#: within centre +- extent / LENGTH_DIVISOR.
HEIGHT_THRESHOLD = 0.7
LENGTH_DIVISOR = 5
#: Its synthesis metrics use slices with more label voxels than this at 256 x 256 px (1 mm);
#: scaled with the slice's area for other sizes (a 64 px phantom at 4 mm: 25).
MIN_SLICE_VOXELS = 400


# ----------------------------------------------------------------------------- RHLV
@dataclass(frozen=True)
class OriginalRhlv:
    """RHLV ``(H_syn - H_ori) / H_syn`` of the whole body and of each third, and the label's
    ``min / max`` third height (``relative_height_label``), as the original reports them."""

    all: float
    anterior: float
    middle: float
    posterior: float
    relative_height_label: float

    def thirds(self) -> np.ndarray:
        """(3,) anterior, middle, posterior RHLV."""
        return np.array([self.anterior, self.middle, self.posterior])


def _column_heights(seg: np.ndarray, lo: int, hi: int | None) -> np.ndarray:
    """Label voxels per column of ``seg[:, lo:hi]`` (every column of the range, empty ones 0)."""
    return np.count_nonzero(seg[:, lo:hi], axis=0)


def _slice_heights(fake: np.ndarray, label: np.ndarray, threshold: float) -> list[np.ndarray]:
    """One sagittal slice: kept heights ``[fake_all, label_all, fake_a, label_a, fake_m,
    label_m, fake_p, label_p]`` (the original's ``calculate_heights`` body)."""
    cols = np.nonzero(fake)[1]
    y_min, y_max = int(cols.min()), int(cols.max())
    one = int(y_min + (y_max - y_min) / 3)
    two = int(y_min + 2 * (y_max - y_min) / 3)
    bounds = [(0, None), (0, one), (one, two), (two, None)]
    centre_fake = float(np.count_nonzero(fake[:, int(np.mean(cols))]))
    centre_label = float(np.count_nonzero(label[:, int(np.mean(np.nonzero(label)[1]))]))
    out = []
    for i, (lo, hi) in enumerate(bounds):
        hf = _column_heights(fake, lo, hi).astype(np.float64)
        hl = _column_heights(label, lo, hi)
        if hl.size and hf.size and hl.max() > hf.max():
            ratio = hl.max() / (hf.max() + 1e-6)  # scale the synthesis up to the label
            hf = hf * ratio
            if i == 0:
                centre_fake *= ratio
        out += [hf[hf > centre_fake * threshold], hl[hl > centre_label * threshold]]
    return out


def rhlv_original(
    synthesised: np.ndarray,
    original: np.ndarray,
    vid: int,
    *,
    length_divisor: int = LENGTH_DIVISOR,
    height_threshold: float = HEIGHT_THRESHOLD,
) -> OriginalRhlv:
    """The original's RHLV of vertebra ``vid`` (``RHLV_quantification.calculate_rhlv``).

    Args:
        synthesised, original: (I, P, L) label volumes (ids; the vertebra is ``== vid``).
        vid: label id.
        length_divisor: slices ``[c - n, c + n)`` with ``c`` the mean L-R index of the
            original's voxels and ``n = (z_max - z_min) // length_divisor``.
        height_threshold: columns kept above this fraction of the centre column's height.

    ``ValueError`` when ``vid`` is absent from ``original``. A vertebra whose synthesis is
    empty gets the original's ``(0 - H) / (0 + 1e-6)`` values, as there.
    """
    fake = synthesised == vid
    label = original == vid
    z = np.nonzero(label)[2]
    if z.size == 0:
        raise ValueError(f"vertebra {vid} is absent from the original label volume")
    centre, n = int(np.mean(z)), (int(z.max()) - int(z.min())) // length_divisor
    pooled: list[list[np.ndarray]] = [[] for _ in range(8)]
    for k in range(max(0, centre - n), centre + n):
        if k >= label.shape[2] or not (label[:, :, k].any() and fake[:, :, k].any()):
            continue
        for acc, kept in zip(
            pooled, _slice_heights(fake[:, :, k], label[:, :, k], height_threshold)
        ):
            acc.append(kept)
    means = [
        float(np.mean(np.concatenate(a))) if a and np.concatenate(a).size else 0.0 for a in pooled
    ]
    fa, la, f1, l1, f2, l2, f3, l3 = means
    rel = [(f - lab) / (f + 1e-6) for f, lab in ((fa, la), (f1, l1), (f2, l2), (f3, l3))]
    return OriginalRhlv(*rel, relative_height_label=min(l1, l2, l3) / (max(l1, l2, l3) + 1e-6))


# ----------------------------------------------------------------------------- grading
def grade_original_protocol(
    train_test_features: np.ndarray,
    train_test_grades: Sequence[int] | np.ndarray,
    val_features: np.ndarray,
    val_grades: Sequence[int] | np.ndarray,
    *,
    n_splits: int = 5,
    feature_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The original's grading (``SVM_grading.evaluate_svm``), on features in file order.

    1. ``StandardScaler`` fitted on train + test (rows in the order of the split file: the
       folds depend on it), applied to val;
    2. ``StratifiedKFold(n_splits)`` without shuffling over train + test; per fold a linear,
       class-balanced ``SVC`` fitted on the fold's training part predicts **val**;
    3. macro precision / recall / F1 and accuracy of val, per fold, averaged over the folds.

    Fewer folds (with a warning) when the rarest grade of train + test has fewer than
    ``n_splits`` vertebrae (small phantoms; the original's data has 5 or more).

    Returns a JSON-ready dict: ``macro_precision, macro_recall, macro_f1, accuracy`` (fold
    means), ``fold_*`` lists, ``variance_macro_f1``, ``confusion_matrices`` (per fold) and
    ``confusion_matrix`` (their sum; rows = true grade, labels in sorted order), ``labels``,
    ``n_train_test``, ``n_val``, ``folds``, ``features``, ``protocol`` ("healthivert").
    """
    x = np.asarray(train_test_features, dtype=np.float64)
    y = np.asarray(train_test_grades).astype(int)
    xv = np.asarray(val_features, dtype=np.float64)
    yv = np.asarray(val_grades).astype(int)
    if x.ndim != 2 or xv.ndim != 2 or x.shape[1] != xv.shape[1]:
        raise ValueError(f"features must be (N, F) with the same F, got {x.shape}, {xv.shape}")
    if x.shape[0] != y.size or xv.shape[0] != yv.size:
        raise ValueError("features and grades differ in length")
    if xv.shape[0] == 0:
        raise ValueError("the original's protocol scores the val split, which is empty")
    if not (np.isfinite(x).all() and np.isfinite(xv).all()):
        raise ValueError("features contain NaN or infinite values")
    rarest = int(np.unique(y, return_counts=True)[1].min()) if y.size else 0
    if rarest < 2:
        raise ValueError("each grade of train + test needs at least 2 vertebrae for the folds")
    if rarest < n_splits:
        warnings.warn(
            f"the rarest grade of train + test has {rarest} vertebrae: {rarest} folds, not "
            f"{n_splits}",
            stacklevel=2,
        )
        n_splits = rarest
    scaler = StandardScaler().fit(x)
    x, xv = scaler.transform(x), scaler.transform(xv)
    labels = np.unique(np.concatenate([y, yv]))
    folds: dict[str, list] = {k: [] for k in ("f1", "precision", "recall", "accuracy", "cm")}
    for train, _ in StratifiedKFold(n_splits).split(x, y):
        pred = SVC(kernel="linear", class_weight="balanced").fit(x[train], y[train]).predict(xv)
        for key, value in _val_scores(yv, pred, labels).items():
            folds[key].append(value)
    names = (
        list(feature_names) if feature_names is not None else [f"f{i}" for i in range(x.shape[1])]
    )
    return {
        "macro_precision": float(np.mean(folds["precision"])),
        "macro_recall": float(np.mean(folds["recall"])),
        "macro_f1": float(np.mean(folds["f1"])),
        "accuracy": float(np.mean(folds["accuracy"])),
        "fold_macro_f1": folds["f1"],
        "fold_macro_precision": folds["precision"],
        "fold_macro_recall": folds["recall"],
        "fold_accuracy": folds["accuracy"],
        "variance_macro_f1": float(np.var(folds["f1"])),
        "confusion_matrices": folds["cm"],
        "confusion_matrix": np.sum(folds["cm"], axis=0).tolist(),
        "labels": [int(g) for g in labels],
        "n_train_test": int(y.size),
        "n_val": int(yv.size),
        "folds": n_splits,
        "features": names,
        "protocol": "healthivert",
    }


def _val_scores(truth: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Macro F1, precision, recall (0 for a grade never predicted, as sklearn's default),
    accuracy and the confusion matrix of one fold's val predictions."""
    macro = {"average": "macro", "zero_division": 0}
    return {
        "f1": float(f1_score(truth, pred, **macro)),
        "precision": float(precision_score(truth, pred, **macro)),
        "recall": float(recall_score(truth, pred, **macro)),
        "accuracy": float(accuracy_score(truth, pred)),
        "cm": confusion_matrix(truth, pred, labels=labels).tolist(),
    }


def split_rows(
    split_order: Mapping[str, Mapping[str, int]], available: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``(train + test ids, val ids)`` among ``available``, in the order of the split file
    (phases in file order, ids in file order), which the original's unshuffled folds see."""
    have = set(available)
    train_test = [
        k for ph, ids in split_order.items() if ph in ("train", "test") for k in ids if k in have
    ]
    val = [k for k in split_order.get("val", {}) if k in have]
    return train_test, val


# ----------------------------------------------------------------------------- synthesis
def volume_overlap_original(
    synthesised: np.ndarray, original: np.ndarray, vid: int
) -> dict[str, float]:
    """Dice, IoU and relative volume difference ``|V_ori - V_syn| / V_ori`` of label ``vid``
    in 3-D (each 0 when its denominator is 0, as the original)."""
    fake, ori = synthesised == vid, original == vid
    inter = float(np.sum(fake & ori))
    union = float(np.sum(fake | ori))
    total = float(fake.sum() + ori.sum())
    v_ori = float(ori.sum())
    return {
        "dice": 2.0 * inter / total if total else 0.0,
        "iou": inter / union if union else 0.0,
        "rv_diff": abs(v_ori - float(fake.sum())) / v_ori if v_ori else 0.0,
    }


def _central_slices(ori: np.ndarray) -> range:
    z = np.nonzero(ori)[2]
    z0, z1 = int(z.min()), int(z.max())
    length = z1 - z0 + 1
    new = int(length * 4 / 5)
    start = z0 + (length - new) // 2
    return range(start, start + new)


def synthesis_metrics_original(
    original_ct: np.ndarray,
    synthesised_ct: np.ndarray,
    original_label: np.ndarray,
    synthesised_label: np.ndarray,
    vid: int,
) -> dict[str, float]:
    """The original's ``process_images`` for one vertebra: ``global_psnr, global_ssim,
    patch_psnr, patch_ssim`` (means over the central 4/5 slices holding more than
    ``MIN_SLICE_VOXELS`` label voxels; patch = the label's rows; data range = max - min of
    the original; NaN values skipped; 0 when no slice counts; an SSIM window under 7 only
    where 7 rows do not fit, e.g. a 64 px phantom, where the original fails) and :func:`
    volume_overlap_original`. CT volumes in any intensity unit (the original uses uint8)."""
    ori = original_label == vid
    if not ori.any():
        raise ValueError(f"vertebra {vid} is absent from the original label volume")
    min_voxels = MIN_SLICE_VOXELS * ori.shape[0] * ori.shape[1] / 256**2
    scores: dict[str, list[float]] = {
        k: [] for k in ("patch_psnr", "patch_ssim", "global_psnr", "global_ssim")
    }
    a, b = np.asarray(original_ct, np.float64), np.asarray(synthesised_ct, np.float64)
    for k in _central_slices(ori):
        if np.sum(ori[:, :, k]) <= min_voxels:
            continue
        rows = np.nonzero(ori[:, :, k])[0]
        for name, crop in (("patch", slice(rows.min(), rows.max() + 1)), ("global", slice(None))):
            x, y = a[crop, :, k], b[crop, :, k]
            rng = x.max() - x.min()
            if min(x.shape) < SSIM_MIN_WIN_SIZE:
                continue  # too few rows for any SSIM window (small phantoms only)
            win = ssim_win_size(*x.shape)  # 7 as the original's, smaller only where 7 cannot fit
            for metric, value in (
                ("psnr", peak_signal_noise_ratio(x, y, data_range=rng)),
                ("ssim", structural_similarity(x, y, data_range=rng, win_size=win)),
            ):
                if not math.isnan(value):
                    scores[f"{name}_{metric}"].append(float(value))
    out = {k: float(np.mean(v)) if v else 0.0 for k, v in scores.items()}
    out.update(volume_overlap_original(synthesised_label, original_label, vid))
    return out


def average_per_vertebra(per_vertebra: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Mean of each metric over the vertebrae, skipping those whose patch PSNR or SSIM is NaN
    or 0 (as the original); ``n`` counts the vertebrae averaged (values None when 0)."""
    kept = [
        m
        for m in per_vertebra.values()
        if all(not math.isnan(m[k]) and m[k] != 0 for k in ("patch_psnr", "patch_ssim"))
    ]
    keys = ("global_psnr", "global_ssim", "patch_psnr", "patch_ssim", "iou", "rv_diff", "dice")
    out: dict[str, Any] = {k: float(np.mean([m[k] for m in kept])) if kept else None for k in keys}
    out["n"] = len(kept)
    out["protocol"] = "healthivert"
    return out


def rhlv_as_dict(r: OriginalRhlv) -> dict[str, float]:
    """JSON-ready ``{"all": .., "anterior": .., ...}``."""
    return {k: round(float(v), 6) for k, v in asdict(r).items()}


# ----------------------------------------------------------------------------- entry points
def grade_ids_original_protocol(
    features: Mapping[str, np.ndarray],
    grades: Mapping[str, int],
    splits: Mapping[str, Mapping[str, int]],
    feature_names: Sequence[str],
) -> dict[str, Any]:
    """:func:`grade_original_protocol` on per-id features, rows in the split file's order;
    ids in no split are left out (``left_out`` in the result)."""
    train_test, val = split_rows(splits, list(features))
    res = grade_original_protocol(
        np.array([features[k] for k in train_test]).reshape(len(train_test), -1),
        [grades[k] for k in train_test],
        np.array([features[k] for k in val]).reshape(len(val), -1),
        [grades[k] for k in val],
        feature_names=feature_names,
    )
    res["left_out"] = sorted(set(features) - set(train_test) - set(val))
    return res


def grade_synthesis_healthivert(
    dataroot: str | Path,
    synthesis: str | Path,
    records: Mapping[str, Mapping[str, Any]],
    splits: Mapping[str, Mapping[str, int]],
) -> dict[str, Any]:
    """The original's evaluation of a whole-vertebra synthesis (``synthesize_volume.py`` output).

    Args:
        dataroot: data root of the original volumes (``label/``, ``CT/``).
        synthesis: folder with ``label/<id>.nii.gz`` and ``CT/<id>.nii.gz``.
        records: per id a heights-table record of ``scripts/grade_synthesis.py`` (``grade``,
            ``neighbours`` and ``original`` heights in mm, ``synthesis_failed`` when set).
        splits: the data root's split file (order matters: the folds are unshuffled).

    Returns ``{"rhlv": .., "baseline": .., "synthesis_metrics": .., "rhlv_per_vertebra": ..}``:
    the original's RHLV graded by its protocol; the neighbour-height baseline (ours: the
    original has none) graded by the same protocol; its synthesis metrics averaged over the
    normal (grade 0) val vertebrae, as its ``generation_eval_sagittal.py``. A vertebra whose
    synthesis failed counts with RHLV 0 (no height loss found), as in our protocol.
    """
    dataroot, synthesis = Path(dataroot), Path(synthesis)
    rhlv, per_vertebra = {}, {}
    for key, rec in records.items():
        vid = split_key(key)[1]
        if "synthesis_failed" in rec:
            rhlv[key] = np.zeros(3)
            continue
        original, _, _ = load_nifti(volume_path(dataroot, "label", key))
        synthesised, _, _ = load_nifti(synthesis / "label" / f"{key}.nii.gz")
        r = rhlv_original(synthesised, original, vid)
        rhlv[key], per_vertebra[key] = r.thirds(), rhlv_as_dict(r)
    grades = {k: int(r["grade"]) for k, r in records.items()}
    names = [f"rhlv_{t}" for t in ("anterior", "middle", "posterior")]
    baseline = {
        k: 1.0 - _thirds(r["original"]) / _thirds(r["neighbours"]) for k, r in records.items()
    }
    metrics = {}
    for key in (k for k, g in splits.get("val", {}).items() if g == 0 and k in records):
        if "synthesis_failed" in records[key]:
            continue
        vols = [
            load_nifti(p)[0]
            for p in (
                volume_path(dataroot, "CT", key),
                synthesis / "CT" / f"{key}.nii.gz",
                volume_path(dataroot, "label", key),
                synthesis / "label" / f"{key}.nii.gz",
            )
        ]
        metrics[key] = synthesis_metrics_original(*vols, split_key(key)[1])
    return {
        "rhlv": grade_ids_original_protocol(rhlv, grades, splits, names),
        "baseline": grade_ids_original_protocol(
            baseline, grades, splits, [f"nb_loss_{t}" for t in ("anterior", "middle", "posterior")]
        ),
        "synthesis_metrics": average_per_vertebra(metrics) if metrics else None,
        "rhlv_per_vertebra": per_vertebra,
        "protocol": "healthivert",
        "protocol_note": PROTOCOL_NOTES["healthivert"],
    }


def _thirds(d: Mapping[str, float]) -> np.ndarray:
    return np.array([float(d[f"{t}_mm"]) for t in ("anterior", "middle", "posterior")])
