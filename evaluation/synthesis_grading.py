"""Genant grading with and without synthesis, from synthesised vertebra volumes.

The library behind ``scripts/grade_synthesis.py``::

    python scripts/synthesize_volume.py --dataroot D --name N ... --phase all_eval --out S
    python scripts/grade_synthesis.py --dataroot D --synthesis S --out G [--phase all_eval]

For every vertebra of the phase with a known grade (>= 0):

1. ``H_ori``: anterior/middle/posterior heights (mm) of the vertebra in its original label
   volume ``<dataroot>/label/<id>.nii.gz``; ``H_syn``: the same in the synthesised label
   ``<synthesis>/label/<id>.nii.gz``. Heights follow ``util.heights.measure_heights``: the
   body estimated from the label alone (the canal separates it from the arch), measured along
   the volume's S-I axis (``--frame image``, right for straightened volumes) in the central
   half of its L-R extent.
2. ``H_nb``: the mean of the heights of its neighbours, measured in the same original volume
   (the vertebrae just above and below it in the spine's order that the volume holds; the
   sacrum does not count; a neighbour cut by the volume's edge is left out).
3. A heights table in ``evaluation.grading``'s JSON format (``heights_table.json``), then
   ``evaluation.grading.run_grading``: RHLV ``(H_syn - H_ori) / H_syn`` (with synthesis) and
   the baseline ``1 - H_ori / H_nb`` (without synthesis), the same linear class-balanced SVM
   and the same stratified folds (same seed) for both.
4. Phantom roots (``heights.json``): two ceilings with the same classifier and folds.
   ``oracle_measured``: ``H_syn`` replaced by the heights measured on the true healthy label
   (``healthy_label/``; a normal vertebra is its own healthy version), i.e. perfect synthesis
   at this voxel size. ``oracle_true``: RHLV from the analytic heights of ``heights.json``
   (0.1 mm renders), i.e. perfect synthesis and perfect measurement.

A vertebra whose original label cannot be measured (body cut by the edge, no measurable
neighbour) is left out of every classifier, with its reason in ``grading.json["skipped"]``:
all classifiers see the same vertebrae. A synthesised label that is missing (no valid slice)
or cannot be measured (e.g. the mask of an undertrained model fills the slice and touches the
volume's edge) counts against the synthesis: its ``H_syn`` is set to ``H_ori`` (RHLV 0, as if
no height loss were found) and the vertebra is listed in ``grading.json["synthesis_failed"]``.

``protocol="healthivert"`` (``scripts/grade_synthesis.py --protocol healthivert``) evaluates
the synthesis the original HealthiVert-GAN's way instead (``evaluation/healthivert_protocol.py``):
its RHLV from the synthesised and original label volumes, its grading (scaler on train + test,
5 unshuffled folds of train + test, the val split scored by each fold, averaged; it uses every
split, whatever ``phase``), the neighbour baseline graded the same way, and its 3-D synthesis
metrics over the normal val vertebrae. ``grading.json`` says which protocol produced it
(``protocol``, ``protocol_note``).

Folds: 5-fold stratified CV needs at least 5 vertebrae of the rarest grade. A phantom test
split of 6 patients holds about 2-4 per fractured grade, so the grading falls back to fewer
folds there; ``--phase all_eval`` (val + test: every vertebra the model never trained on,
the default) doubles the counts. ``--phase all`` adds the training split: its fractured
vertebrae were never trained on either (training uses grade 0 only), but its normal ones
were, which favours the synthesis; use it only to count, not to compare.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.vertebra_dataset import load_splits
from evaluation.grading import (
    THIRDS,
    HeightsTable,
    bootstrap_ci,
    genant_reference,
    grade,
    rhlv_features,
    run_grading,
    save_confusion_png,
)
from evaluation.healthivert_protocol import (
    PROTOCOL_NOTES,
    PROTOCOLS,
    grade_synthesis_healthivert,
)
from util.geometry import PHASES, split_key, volume_path
from util.heights import measure_heights
from util.io import write_json_atomic
from util.nifti_io import load_nifti

#: VerSe vertebra ids from cranial to caudal (C1-C7, T1-T12, T13, L1-L6); the sacrum (26) and
#: the coccyx are not vertebrae whose height compares.
SPINE_ORDER = (*range(1, 20), 28, *range(20, 26))
TABLE_FILE = "heights_table.json"
GRADING_FILE = "grading.json"


def _as_dict(h: np.ndarray) -> dict[str, float]:
    return {f"{t}_mm": round(float(v), 3) for t, v in zip(THIRDS, h, strict=True)}


def thirds_array(d: Mapping[str, float]) -> np.ndarray:
    """(3,) anterior/middle/posterior heights of a ``{"anterior_mm": ..., ...}`` record (the
    heights-table and ``heights.json`` format)."""
    return np.array([float(d[f"{t}_mm"]) for t in THIRDS])


def neighbour_ids(present: Sequence[int], vid: int) -> list[int]:
    """The vertebrae just above and just below ``vid`` in :data:`SPINE_ORDER` among the ids
    ``present`` in a volume (0, 1 or 2 ids; the sacrum never counts)."""
    if vid not in SPINE_ORDER:
        raise ValueError(f"label id {vid} is not a vertebra of the VerSe map")
    order = [i for i in SPINE_ORDER if i in set(present) or i == vid]
    pos = order.index(vid)
    return [order[j] for j in (pos - 1, pos + 1) if 0 <= j < len(order)]


def label_heights(label: np.ndarray, affine: np.ndarray, vid: int, frame: str) -> np.ndarray:
    """(3,) anterior/middle/posterior heights in mm of ``vid`` in a label volume (body
    estimated from the label, see ``util.heights.measure_heights``)."""
    return measure_heights(label, affine, vid, frame=frame).as_array()


def vertebra_record(
    dataroot: Path,
    synthesis: Path,
    key: str,
    grade_: int,
    *,
    frame: str = "image",
    truth: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The heights-table entry of ``key`` (``evaluation.grading`` JSON format plus
    ``neighbour_ids`` and, with ``truth`` (its ``heights.json`` record), ``healthy_measured``,
    ``true_original`` and ``true_healthy``).

    ``ValueError``/``FileNotFoundError`` when the original vertebra or all its neighbours
    cannot be measured (a data problem: the vertebra is left out of every classifier). A
    synthesised label that is missing or cannot be measured is a failure of the synthesis:
    ``synthesised`` is then set to ``original`` (RHLV 0, "no height loss found") and
    ``synthesis_failed`` gives the reason, so the synthesis is charged for it.
    """
    _, vid = split_key(key)
    label, affine, _ = load_nifti(volume_path(dataroot, "label", key))
    try:
        ori = label_heights(label, affine, vid, frame)
    except ValueError as exc:
        raise ValueError(f"original label: {exc}") from exc
    nbs, nb_heights = [], []
    for n in neighbour_ids([int(i) for i in np.unique(label)], vid):
        try:
            nb_heights.append(label_heights(label, affine, n, frame))
            nbs.append(n)
        except ValueError:
            continue  # cut by the volume's edge: not a usable neighbour
    if not nb_heights:
        raise ValueError("no neighbour of it can be measured in its volume")
    rec: dict[str, Any] = {
        "grade": int(grade_),
        "original": _as_dict(ori),
        "synthesised": _as_dict(ori),
        "neighbours": _as_dict(np.mean(nb_heights, axis=0)),
        "neighbour_ids": nbs,
    }
    try:
        syn, syn_affine, _ = load_nifti(synthesis / "label" / f"{key}.nii.gz")
        if syn.shape != label.shape or not np.allclose(syn_affine, affine, atol=1e-4):
            raise ValueError("shape or affine differs from the input's")
        rec["synthesised"] = _as_dict(label_heights(syn, affine, vid, frame))
    except (ValueError, FileNotFoundError) as exc:
        rec["synthesis_failed"] = f"synthesised label: {exc}"
    if truth is not None:
        healthy_path = dataroot / "healthy_label" / f"{key}.nii.gz"
        if healthy_path.is_file():
            h_label, h_affine, _ = load_nifti(healthy_path)
            rec["healthy_measured"] = _as_dict(label_heights(h_label, h_affine, vid, frame))
        elif grade_ == 0:  # a normal vertebra is its own healthy version
            rec["healthy_measured"] = rec["original"]
        rec["true_original"] = {f"{t}_mm": float(truth["fractured"][f"{t}_mm"]) for t in THIRDS}
        rec["true_healthy"] = {f"{t}_mm": float(truth["healthy"][f"{t}_mm"]) for t in THIRDS}
    return rec


def phase_grades(dataroot: Path, phase: str) -> dict[str, int]:
    """``{id: grade}`` of the splits of ``phase`` in ``vertebra_data.json``, grade >= 0 only."""
    if phase not in PHASES:
        raise ValueError(f"--phase {phase!r}: choose one of {list(PHASES)}")
    splits = load_splits(dataroot)
    out = {k: g for split in PHASES[phase] for k, g in splits.get(split, {}).items() if g >= 0}
    if not out:
        raise ValueError(f"{dataroot}/vertebra_data.json has no graded vertebra in {PHASES[phase]}")
    return out


def build_table(
    dataroot: str | Path,
    synthesis: str | Path,
    grades: Mapping[str, int],
    *,
    frame: str = "image",
) -> tuple[dict[str, Any], dict[str, str]]:
    """Heights-table records of every vertebra of ``grades`` that can be measured, and
    ``{id: reason}`` of the others. Reads ``heights.json`` of the root when present."""
    dataroot, synthesis = Path(dataroot), Path(synthesis)
    truth_path = dataroot / "heights.json"
    truth = json.loads(truth_path.read_text(encoding="utf-8")) if truth_path.is_file() else None
    records: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for key, g in grades.items():
        try:
            t = None if truth is None else truth.get(key)
            if truth is not None and t is None:
                raise ValueError(f"{truth_path} has no entry for it")
            records[key] = vertebra_record(dataroot, synthesis, key, g, frame=frame, truth=t)
        except (ValueError, FileNotFoundError) as exc:
            skipped[key] = str(exc)
    return records, skipped


def table_from_records(records: Mapping[str, Any]) -> HeightsTable:
    """``evaluation.grading.HeightsTable`` of the records (ids in order)."""
    ids = list(records)
    return HeightsTable(
        ids=ids,
        grades=np.array([records[k]["grade"] for k in ids]),
        original=np.array([thirds_array(records[k]["original"]) for k in ids]),
        synthesised=np.array([thirds_array(records[k]["synthesised"]) for k in ids]),
        neighbours=np.array([thirds_array(records[k]["neighbours"]) for k in ids]),
    )


#: The graded rows of ``grading.json`` (protocol ours): with synthesis, the neighbour ratio
#: (``baseline``), the Genant rule, the two oracles.
ROW_KEYS = ("rhlv", "baseline", "genant_rule", "oracle_measured", "oracle_true")


def _model_free_rows(records: Mapping[str, Any], out_dir: Path, seed: int) -> dict[str, Any]:
    """The rows that need no generator, same classifier and folds: ``genant_rule`` (each
    third against the vertebra's own posterior height: Ha/Hp, Hc/Hp, the rule radiologists
    use without neighbours) and RHLV from the true healthy heights (``oracle_measured``,
    ``oracle_true``); an oracle whose heights some vertebra lacks is left out."""
    ids = list(records)
    y = np.array([records[k]["grade"] for k in ids])
    names = [f"rhlv_{t}" for t in THIRDS]
    own = np.array([thirds_array(records[k]["original"]) for k in ids])
    out = {"genant_rule": grade(rhlv_features(own, genant_reference(own)), y, seed)}
    for name, ori_key, syn_key, title in (
        ("oracle_measured", "original", "healthy_measured", "oracle: measured healthy label"),
        ("oracle_true", "true_original", "true_healthy", "oracle: analytic heights"),
    ):
        if not ids or not all(syn_key in records[k] for k in ids):
            continue  # not a phantom root, or a fractured vertebra without its healthy label
        ori = np.array([thirds_array(records[k][ori_key]) for k in ids])
        syn = np.array([thirds_array(records[k][syn_key]) for k in ids])
        out[name] = grade(rhlv_features(ori, syn), y, seed, feature_names=names)
        save_confusion_png(out[name], out_dir / f"confusion_matrix_{name}.png", title)
    return out


def grade_synthesis(
    dataroot: str | Path,
    synthesis: str | Path,
    out_dir: str | Path,
    *,
    phase: str = "all_eval",
    seed: int = 0,
    frame: str = "image",
    protocol: str = "ours",
) -> dict[str, Any]:
    """Measure, write ``heights_table.json``, grade, write ``grading.json`` and the confusion
    PNGs; return the grading dict (``rhlv``, ``baseline``, oracles on a phantom root, and
    ``phase``, ``n``, ``grades``, ``skipped``, ``synthesis_failed``, ``frame``, ``protocol``;
    with ``protocol="healthivert"`` the original's results, module docstring)."""
    dataroot, synthesis, out_dir = Path(dataroot), Path(synthesis), Path(out_dir)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    if protocol == "healthivert":
        phase = "all"  # its folds use train + test and score val
    if not (synthesis / "label").is_dir():
        raise FileNotFoundError(f"no synthesised labels: {synthesis / 'label'} is not a folder")
    records, skipped = build_table(dataroot, synthesis, phase_grades(dataroot, phase), frame=frame)
    if skipped:
        warnings.warn(
            f"{len(skipped)} vertebrae left out of the grading (see grading.json 'skipped')",
            stacklevel=2,
        )
    if not records:
        raise ValueError(f"no vertebra of {dataroot} ({phase}) could be measured")
    failed = {k: r["synthesis_failed"] for k, r in records.items() if "synthesis_failed" in r}
    if not any((synthesis / "label" / f"{k}.nii.gz").is_file() for k in records):
        raise FileNotFoundError(
            f"{synthesis / 'label'} holds no synthesised label of the {phase!r} vertebrae "
            "(synthesised another phase?)"
        )
    if failed:
        warnings.warn(
            f"{len(failed)} of {len(records)} synthesised labels cannot be measured; their "
            "RHLV is 0 (see grading.json 'synthesis_failed')",
            stacklevel=2,
        )
    write_json_atomic(out_dir / TABLE_FILE, records)
    if protocol == "healthivert":
        result = grade_synthesis_healthivert(dataroot, synthesis, records, load_splits(dataroot))
    else:
        result = run_grading(table_from_records(records), out_dir, seed)
        result.update(
            _model_free_rows(records, out_dir, seed), protocol_note=PROTOCOL_NOTES["ours"]
        )
        for key in ROW_KEYS:  # 95 % intervals by bootstrap over the vertebrae
            if key in result:
                res = result[key]
                res["ci95"] = bootstrap_ci(np.array(res["truth"]), np.array(res["predictions"]))
    grades = [r["grade"] for r in records.values()]
    result.update(
        {
            "phase": phase,
            "splits": list(PHASES[phase]),
            "frame": frame,
            "n": len(records),
            "grades": {str(g): grades.count(g) for g in sorted(set(grades))},
            "skipped": skipped,
            "synthesis_failed": failed,
            "synthesis": str(synthesis),
            "heights_table": TABLE_FILE,
        }
    )
    write_json_atomic(out_dir / GRADING_FILE, result)
    return result


def summary(result: Mapping[str, Any], out_dir: str | Path) -> str:
    """What ``scripts/grade_synthesis.py`` prints: the vertebrae graded, one line per
    classifier (macro precision, recall, F1, folds) and where the files are."""
    lines = [
        f"protocol {result['protocol_note']}",
        f"{result['phase']}: {result['n']} vertebrae, grades {result['grades']}; "
        f"{len(result['skipped'])} left out, {len(result['synthesis_failed'])} synthesised "
        "labels not measurable (RHLV 0)",
    ]
    for key in ROW_KEYS:
        res = result.get(key)
        if res is not None:
            ci = res.get("ci95", {}).get("f1")
            lines.append(
                f"{key:>16}: macro P {res['macro_precision']:.3f} R {res['macro_recall']:.3f} "
                f"F1 {res['macro_f1']:.3f}"
                + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
                + f" ({res['folds']} folds)"
            )
    metrics = result.get("synthesis_metrics")
    if metrics and metrics["n"]:
        lines.append(
            f"synthesis (normal val, {metrics['n']} vertebrae, 3-D): Dice {metrics['dice']:.3f} "
            f"IoU {metrics['iou']:.3f} RVD {metrics['rv_diff']:.3f} patch PSNR "
            f"{metrics['patch_psnr']:.2f} SSIM {metrics['patch_ssim']:.3f}"
        )
    lines.append(f"results in {out_dir} ({GRADING_FILE}, {TABLE_FILE}, confusion_matrix*.png)")
    return "\n".join(lines)
