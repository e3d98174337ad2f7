"""How accurate must a synthesis be to grade better than the neighbour ratio?

On a phantom root (``heights.json``: analytic healthy and fractured heights of every
vertebra) this grades the phase's vertebrae from heights that need no model and no
measurement, with the classifier and folds of ``evaluation.grading``:

* ``neighbour ratio``: ``1 - H_ori / H_nb``, ``H_nb`` the mean of the analytic heights of the
  vertebrae just above and below (the no-synthesis baseline without measurement error);
* ``neighbour ratio, healthy neighbours``: the same with each neighbour's *healthy* heights
  (what an iterative synthesis that restores fractured neighbours perfectly could reach);
* ``own posterior height (Genant ratio)``: ``1 - Ha/Hp``, ``1 - Hc/Hp`` of the vertebra itself
  (the radiologist's rule without neighbours; a crush that lowers Hp too escapes it);
* ``perfect synthesis``: RHLV from the true healthy heights;
* ``synthesis with s % error``: RHLV from the true healthy heights x (1 + N(0, s %)) per third,
  mean and std over ``--repeats`` draws: a synthesis whose heights are off by s % (relative,
  random) grades like this.

The library behind ``scripts/grading_ceiling.py``::

    python scripts/grading_ceiling.py --dataroot datasets/phantom128_eval --phase test
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.grading import bootstrap_ci, genant_reference, grade, rhlv_features
from evaluation.synthesis_grading import neighbour_ids, phase_grades, thirds_array
from util.geometry import make_key, split_key


def ceiling_features(
    truth: Mapping[str, Any], keys: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (H_ori, H_ref)}``, each (N, 3) in mm, for the model-free predictors of the
    healthy heights of ``keys`` (ids ``<patient>_<VerSe id>`` of ``truth``, a heights.json)."""
    by_patient: dict[str, list[int]] = {}
    for k in truth:
        patient, vid = split_key(k)
        by_patient.setdefault(patient, []).append(vid)
    ori, healthy, nb, nb_healthy = [], [], [], []
    for k in keys:
        patient, vid = split_key(k)
        nbs = [make_key(patient, n) for n in neighbour_ids(by_patient[patient], vid)]
        if not nbs:
            raise ValueError(f"{k}: no neighbour of it in heights.json")
        ori.append(thirds_array(truth[k]["fractured"]))
        healthy.append(thirds_array(truth[k]["healthy"]))
        nb.append(np.mean([thirds_array(truth[n]["fractured"]) for n in nbs], axis=0))
        nb_healthy.append(np.mean([thirds_array(truth[n]["healthy"]) for n in nbs], axis=0))
    o = np.array(ori)
    return {
        "neighbour ratio": (o, np.array(nb)),
        "neighbour ratio, healthy neighbours": (o, np.array(nb_healthy)),
        "own posterior height (Genant ratio)": (o, genant_reference(o)),
        "perfect synthesis": (o, np.array(healthy)),
    }


def grading_ceiling(
    dataroot: str | Path,
    phase: str,
    noise_pct: Sequence[float],
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Macro-F1 (and the heights' mean relative error vs the true healthy heights, %) of each
    predictor; ``synthesis with s % error`` rows hold the mean and std over ``repeats``."""
    if repeats < 1 or any(s < 0 for s in noise_pct):
        raise ValueError("--repeats must be >= 1 and --noise values >= 0")
    root = Path(dataroot)
    truth_path = root / "heights.json"
    if not truth_path.is_file():
        raise FileNotFoundError(f"{truth_path}: not a phantom root (no analytic heights)")
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    grades = phase_grades(root, phase)
    missing = [k for k in grades if k not in truth]
    if missing:
        raise ValueError(f"{truth_path} has no entry for {missing[:3]} ({len(missing)} in all)")
    keys = list(grades)
    y = np.array([grades[k] for k in keys])
    feats = ceiling_features(truth, keys)
    healthy = feats["perfect synthesis"][1]
    rows: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the grading's fold warning on small splits
        for name, (ori, ref) in feats.items():
            err = np.abs(ref - healthy) / healthy * 100
            res = grade(rhlv_features(ori, ref), y, seed)
            rows[name] = {
                "macro_f1": res["macro_f1"],
                "macro_precision": res["macro_precision"],
                "macro_recall": res["macro_recall"],
                "ci95": bootstrap_ci(y, np.array(res["predictions"]), seed=seed),
                "height_error_pct": float(err.mean()),
                "height_error_pct_fractured": float(err[y > 0].mean()) if (y > 0).any() else None,
            }
        rng = np.random.default_rng(seed)
        ori = feats["perfect synthesis"][0]
        for s in noise_pct:
            f1 = [
                grade(
                    rhlv_features(ori, healthy * (1 + rng.normal(0, s / 100, healthy.shape))),
                    y,
                    seed,
                )["macro_f1"]
                for _ in range(repeats)
            ]
            rows[f"synthesis with {s:g} % error"] = {
                "macro_f1": float(np.mean(f1)),
                "macro_f1_std": float(np.std(f1)),
            }
    counts = {int(g): int((y == g).sum()) for g in np.unique(y)}
    return {"dataroot": str(root), "phase": phase, "n": len(keys), "grades": counts, "rows": rows}


def markdown(result: Mapping[str, Any]) -> str:
    """The rows of a :func:`grading_ceiling` result as a Markdown table under a count line."""
    lines = [
        f"{result['phase']}: {result['n']} vertebrae, grades {result['grades']}",
        "",
        "| grading from | macro-F1 | 95 % CI F1 | macro P / R | height error vs healthy, all / "
        "fractured |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        f1 = f"{r['macro_f1']:.3f}" + (
            f" +- {r['macro_f1_std']:.3f}" if "macro_f1_std" in r else ""
        )
        err = (
            f"{r['height_error_pct']:.2f} % / {r['height_error_pct_fractured']:.2f} %"
            if r.get("height_error_pct_fractured") is not None
            else "-"
        )
        ci = f"{r['ci95']['f1'][0]:.3f}-{r['ci95']['f1'][1]:.3f}" if "ci95" in r else "-"
        pr = f"{r['macro_precision']:.3f} / {r['macro_recall']:.3f}" if "macro_recall" in r else "-"
        lines.append(f"| {name} | {f1} | {ci} | {pr} | {err} |")
    return "\n".join(lines)
