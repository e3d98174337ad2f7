"""Genant grading from vertebral heights: RHLV features + a linear class-balanced SVM.

HealthiVert's grading (the HealthiVert reference, sections 1 and 8):

1. RHLV per third (anterior, middle, posterior): ``(H_syn - H_ori) / H_syn``, the relative
   height loss of the original vertebra against its synthesised pseudo-healthy version.
2. A linear SVM (``SVC(kernel="linear", class_weight="balanced")``) predicts the Genant grade
   from the three RHLVs under stratified k-fold cross-validation (k = 5; fewer, with a warning,
   when the rarest grade has fewer than 5 vertebrae). Features are standardised inside each
   fold (fitted on the training folds only): RHLVs are small numbers (about 0-0.5), which
   would otherwise make C = 1 a strong regulariser.
3. Macro precision/recall/F1 over the out-of-fold predictions of all vertebrae.

Baseline (no synthesis): the same classifier on ``1 - H_ori / H_neighbours`` per third, the
height loss against the mean height of the neighbouring vertebrae.

Input (``scripts/grade.py --heights``, :func:`load_heights_table`), one row per vertebra,
heights in mm:

* CSV with header ``id,grade,ori_a,ori_m,ori_p,syn_a,syn_m,syn_p[,nb_a,nb_m,nb_p]``
  (``a/m/p`` = anterior/middle/posterior, ``nb`` = mean of the neighbours; optional, needed
  for the baseline only), or
* JSON ``{"<id>": {"grade": 2, "original": {"anterior_mm": .., "middle_mm": ..,
  "posterior_mm": ..}, "synthesised": {...}, "neighbours": {...}}}`` (``neighbours`` optional).

Output (:func:`run_grading`, ``--out DIR``): ``grading.json`` ({"rhlv": result, "baseline":
result or null, "protocol": ..., "protocol_note": ...}, each result as returned by
:func:`grade`), ``confusion_matrix.png`` and, with neighbour heights,
``confusion_matrix_baseline.png``.

``protocol="healthivert"`` (``scripts/grade.py --protocol healthivert --splits FILE``) grades
the same features the original HealthiVert-GAN's way
(``evaluation.healthivert_protocol.grade_original_protocol``: scaler on train + test, 5
unshuffled folds of train + test, val scored per fold, averaged; confusion matrices summed
over the folds). The RHLV stays the one of the given heights: the original's RHLV needs label
volumes (``scripts/grade_synthesis.py --protocol healthivert``).
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import f1_score, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from evaluation.healthivert_protocol import (
    GRADING_NOTES,
    PROTOCOLS,
    grade_ids_original_protocol,
)
from util.io import atomic_path, write_json_atomic

THIRDS = ("anterior", "middle", "posterior")
DEFAULT_FOLDS = 5
CLASSIFIER = "SVC(kernel='linear', class_weight='balanced'), standardised features"


@dataclass
class HeightsTable:
    """Per-vertebra heights in mm: ``original``, ``synthesised`` and ``neighbours`` are (N, 3)
    arrays (anterior, middle, posterior); ``neighbours`` is None when not given."""

    ids: list[str]
    grades: np.ndarray
    original: np.ndarray
    synthesised: np.ndarray
    neighbours: np.ndarray | None


def _positive(arr: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{what} heights must have shape (N, 3), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"{what} heights must be finite and > 0")
    return arr


def genant_reference(original: np.ndarray) -> np.ndarray:
    """(N, 3) reference heights of the Genant rule without neighbours: every third of a
    vertebra against its own posterior height (Ha/Hp, Hc/Hp), from its (N, 3) heights
    (anterior, middle, posterior)."""
    return np.repeat(np.asarray(original)[:, 2:3], 3, axis=1)


def rhlv_features(original: np.ndarray, synthesised: np.ndarray) -> np.ndarray:
    """RHLV ``(H_syn - H_ori) / H_syn`` per third: (N, 3) heights in mm -> (N, 3) fractions."""
    ori = _positive(original, "original")
    syn = _positive(synthesised, "synthesised")
    if ori.shape != syn.shape:
        raise ValueError(f"original {ori.shape} and synthesised {syn.shape} heights differ")
    return (syn - ori) / syn


def baseline_features(original: np.ndarray, neighbour_mean: np.ndarray) -> np.ndarray:
    """Height loss against the neighbours, ``1 - H_ori / H_nb`` per third, (N, 3)."""
    ori = _positive(original, "original")
    nb = _positive(neighbour_mean, "neighbour-mean")
    if ori.shape != nb.shape:
        raise ValueError(f"original {ori.shape} and neighbour {nb.shape} heights differ")
    return 1.0 - ori / nb


def choose_folds(grades: np.ndarray, n_splits: int = DEFAULT_FOLDS) -> int:
    """Folds for stratified CV: ``n_splits``, or the rarest grade's count when smaller (warns).

    ``ValueError`` with fewer than 2 grades, or a grade with a single vertebra (it could never
    be both trained on and tested).
    """
    labels, counts = np.unique(grades, return_counts=True)
    if labels.size < 2:
        raise ValueError(f"grading needs at least 2 grades, got {labels.tolist()}")
    rarest = int(counts.min())
    if rarest < 2:
        raise ValueError(
            f"grade {labels[int(np.argmin(counts))]} has a single vertebra; cross-validation "
            "needs at least 2 per grade"
        )
    if rarest < n_splits:
        warnings.warn(
            f"grade {labels[int(np.argmin(counts))]} has only {rarest} vertebrae: using "
            f"{rarest}-fold instead of {n_splits}-fold cross-validation",
            stacklevel=2,
        )
        return rarest
    return n_splits


def bootstrap_ci(
    y: np.ndarray, pred: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, list[float]]:
    """95 % percentile intervals of macro precision, recall and F1 over ``n_boot`` resamples
    of the vertebrae (with replacement; the grades present in ``y``)."""
    rng, labels = np.random.default_rng(seed), np.unique(y)
    stats = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        p, r, f, _ = precision_recall_fscore_support(y[i], pred[i], labels=labels, zero_division=0)
        stats.append((p.mean(), r.mean(), f.mean()))
    lo, hi = np.percentile(np.array(stats), [2.5, 97.5], axis=0)
    return {k: [float(lo[j]), float(hi[j])] for j, k in enumerate(("precision", "recall", "f1"))}


def grade(
    features: np.ndarray,
    grades: Sequence[int] | np.ndarray,
    seed: int = 0,
    *,
    n_splits: int = DEFAULT_FOLDS,
    feature_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Cross-validated Genant grading with a linear, class-balanced SVM.

    Args:
        features: (N, F) features, e.g. :func:`rhlv_features`.
        grades: (N,) integer grades (0-3).
        seed: shuffling seed of the stratified folds.
        n_splits: folds (reduced by :func:`choose_folds` when a grade is rare).
        feature_names: names written to the result (default ``f0, f1, ...``).

    Returns a JSON-ready dict: ``macro_precision, macro_recall, macro_f1`` (out-of-fold
    predictions of all N vertebrae), ``fold_macro_f1`` (list), ``per_class``
    ``{grade: {precision, recall, f1, support}}``, ``confusion_matrix`` (rows = true grade,
    columns = predicted, in the order of ``labels``), ``predictions`` (out-of-fold, (N,)),
    ``truth`` (the grades, (N,)),
    ``labels``, ``n``, ``folds``, ``seed``, ``features``, ``classifier``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(grades)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features (N, F) and grades (N,) do not match: {x.shape}, {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    if not np.array_equal(y, np.round(y)):
        raise ValueError("grades must be integers")
    y = y.astype(int)
    names = (
        list(feature_names) if feature_names is not None else [f"f{i}" for i in range(x.shape[1])]
    )
    if len(names) != x.shape[1]:
        raise ValueError(f"{len(names)} feature names for {x.shape[1]} features")
    folds = choose_folds(y, n_splits)
    labels = np.unique(y)

    # Out-of-fold predictions; the scaler is part of the fitted pipeline, so no leakage.
    pred = np.empty_like(y)
    fold_f1 = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = make_pipeline(StandardScaler(), SVC(kernel="linear", class_weight="balanced"))
        clf.fit(x[train], y[train])
        pred[test] = clf.predict(x[test])
        fold_f1.append(float(f1_score(y[test], pred[test], average="macro", zero_division=0)))

    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "macro_f1": float(f.mean()),
        "fold_macro_f1": fold_f1,
        "per_class": {
            str(g): {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, g in enumerate(labels)
        },
        "confusion_matrix": sk_confusion_matrix(y, pred, labels=labels).tolist(),
        "predictions": [int(v) for v in pred],
        "truth": [int(v) for v in y],
        "labels": [int(g) for g in labels],
        "n": int(y.size),
        "folds": folds,
        "seed": int(seed),
        "features": names,
        "classifier": CLASSIFIER,
    }


def _thirds(entry: dict, key: str, path: Path, vid: str) -> list[float]:
    try:
        return [float(entry[key][f"{t}_mm"]) for t in THIRDS]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: vertebra {vid!r} lacks valid {key!r} heights ({exc})") from exc


def load_heights_table(path: str | Path) -> HeightsTable:
    """Read the CSV or JSON heights file described in the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"heights file not found: {path}")
    ids: list[str] = []
    rows: list[tuple[int, list[float], list[float], list[float] | None]] = []
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object keyed by vertebra id")
        for vid, entry in data.items():
            if not isinstance(entry, dict) or "grade" not in entry:
                raise ValueError(f"{path}: vertebra {vid!r} has no 'grade'")
            nb = _thirds(entry, "neighbours", path, vid) if "neighbours" in entry else None
            ids.append(str(vid))
            rows.append(
                (
                    int(entry["grade"]),
                    _thirds(entry, "original", path, vid),
                    _thirds(entry, "synthesised", path, vid),
                    nb,
                )
            )
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            need = ["id", "grade"] + [f"{w}_{t[0]}" for w in ("ori", "syn") for t in THIRDS]
            missing = [c for c in need if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing columns {missing}")
            has_nb = all(f"nb_{t[0]}" in (reader.fieldnames or []) for t in THIRDS)
            for line_no, rec in enumerate(reader, start=2):
                try:
                    vals = {
                        w: [float(rec[f"{w}_{t[0]}"]) for t in THIRDS]
                        for w in (("ori", "syn", "nb") if has_nb else ("ori", "syn"))
                    }
                    g = int(rec["grade"])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{path}, line {line_no}: {exc}") from exc
                ids.append(rec["id"])
                rows.append((g, vals["ori"], vals["syn"], vals.get("nb")))
    else:
        raise ValueError(f"{path}: heights file must be .csv or .json")
    if not rows:
        raise ValueError(f"{path}: no vertebra")
    has_nb = all(r[3] is not None for r in rows)
    return HeightsTable(
        ids=ids,
        grades=np.array([r[0] for r in rows]),
        original=np.array([r[1] for r in rows]),
        synthesised=np.array([r[2] for r in rows]),
        neighbours=np.array([r[3] for r in rows]) if has_nb else None,
    )


def save_confusion_png(result: dict[str, Any], path: str | Path, title: str) -> None:
    """Plot ``result["confusion_matrix"]`` (counts, true grade on rows) to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(result["confusion_matrix"])
    labels = result["labels"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black"
        )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted grade")
    ax.set_ylabel("true grade")
    ax.set_title(f"{title}\nmacro-F1 {result['macro_f1']:.3f}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run_grading(
    table: HeightsTable,
    out_dir: str | Path,
    seed: int = 0,
    *,
    protocol: str = "ours",
    splits: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """Grade with RHLV (and the neighbour baseline when available); write the outputs.
    ``protocol="healthivert"`` needs ``splits`` (the split file, in its order)."""
    out_dir = Path(out_dir)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "healthivert" and splits is None:
        raise ValueError("--protocol healthivert needs --splits (the vertebra_data.json)")

    def classify(features: np.ndarray, names: list[str]) -> dict[str, Any]:
        if protocol == "ours":
            return grade(features, table.grades, seed, feature_names=names)
        by_id = dict(zip(table.ids, features, strict=True))
        grades = dict(zip(table.ids, table.grades.tolist(), strict=True))
        return grade_ids_original_protocol(by_id, grades, splits, names)

    names = [f"rhlv_{t}" for t in THIRDS]
    result: dict[str, Any] = {
        "rhlv": classify(rhlv_features(table.original, table.synthesised), names),
        "baseline": None,
        "protocol": protocol,
        "protocol_note": GRADING_NOTES[protocol],
    }
    save_confusion_png(result["rhlv"], out_dir / "confusion_matrix.png", "RHLV (synthesis)")
    if table.neighbours is not None:
        result["baseline"] = classify(
            baseline_features(table.original, table.neighbours),
            [f"nb_loss_{t}" for t in THIRDS],
        )
        save_confusion_png(
            result["baseline"],
            out_dir / "confusion_matrix_baseline.png",
            "baseline (neighbour heights)",
        )
    write_json_atomic(out_dir / "grading.json", result)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The protocol, then one line per graded feature set of a :func:`run_grading` result:
    macro precision, recall and F1, vertebrae scored and folds."""
    lines = [f"protocol {result['protocol_note']}"]
    for key in ("rhlv", "baseline"):
        res = result.get(key)
        if res is not None:
            lines.append(
                f"{key}: macro P {res['macro_precision']:.3f} R {res['macro_recall']:.3f} "
                f"F1 {res['macro_f1']:.3f} (n={res.get('n', res.get('n_val'))}, "
                f"{res['folds']} folds)"
            )
    return lines
