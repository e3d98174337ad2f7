"""Straightened spine CTs written as a data root: one 256 x 256 x 64 (I, P, L) volume per
vertebra (the straightening itself is ``util/straighten.py``).

The library behind ``scripts/straighten.py``. Inputs are :class:`Case` objects: a VerSe folder
(:func:`verse_cases`: ``rawdata/<sub>/<sub>*_ct.nii.gz``, ``derivatives/<sub>/<sub>*_msk.nii.gz``
and ``derivatives/<sub>/*_ctd*.json``; the patient id is the subject folder name,
``sub-verse007`` -> ``sub-verse007_20``) or one patient (:func:`single_case`; without a CT only
labels are written: no ``CT/``, no ``heatmap/``, so a label-only output is no training root).

``label_map="totalseg"`` converts TotalSegmentator v2 ids to VerSe ids (S1 becomes 26 and is
kept as context, without a volume of its own). Centroids default to the labels' centres of
mass. The output is a ``--dataroot``: ``CT/``, ``label/``, ``heatmap/`` (all zeros, a
provisional uniform attention that ``scripts/make_heatmaps.py`` replaces),
``vertebra_data.json`` (merged with an existing one; all new ids go to one split, grades from
a CSV or -1) and ``straighten_report.json`` (per id: centroid, share of the box inside the
scan, ``flagged`` when under ``min_inside``; flagged volumes are still written, outside = air).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.check import GRADES, SPLITS
from util.dicom_io import load_ct
from util.geometry import SPLIT_FILE, make_key, volume_path
from util.io import write_json_atomic
from util.labels import totalseg_to_verse
from util.nifti_io import ipl_affine, load_nifti, save_nifti
from util.straighten import (
    DEFAULT_SMOOTHING_MM3,
    OUT_SHAPE,
    OUT_SPACING_MM,
    load_centroid_json,
    straighten_case,
)

REPORT_FILE = "straighten_report.json"


@dataclass(frozen=True)
class Case:
    """One patient: ``seg`` its vertebra label NIfTI, ``ct`` its CT in HU (a NIfTI file or a
    DICOM series folder; None: labels only), ``centroids`` a VerSe centroid JSON (None: the
    labels' centres of mass)."""

    pid: str
    seg: Path
    ct: Path | None = None
    centroids: Path | None = None


@dataclass(frozen=True)
class StraightenSettings:
    """How each patient is straightened: ``vertebrae`` the VerSe ids to write (None: all);
    ``label_map`` ``"verse"`` or ``"totalseg"``; labels under ``min_volume_mm3`` give no
    centroid; volumes with less than ``min_inside`` of their box in the scan are flagged;
    ``smoothing_mm3`` and ``rigid_fraction`` as in ``util.straighten.straighten_case``."""

    vertebrae: tuple[int, ...] | None = None
    label_map: str = "verse"
    min_volume_mm3: float = 1000.0
    min_inside: float = 0.5
    smoothing_mm3: float = DEFAULT_SMOOTHING_MM3
    rigid_fraction: float = 0.0


def read_grades(path: str | Path) -> dict[str, int]:
    """CSV ``id,grade`` (an optional header row is skipped) -> {id: grade}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--grades file not found: {path}")
    grades: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{path}, line {n}: expected 'id,grade', got {row}")
            try:
                grade = int(row[1])
            except ValueError:
                if n == 1:
                    continue  # header
                raise ValueError(f"{path}, line {n}: grade {row[1]!r} is not an integer") from None
            if grade not in GRADES:
                raise ValueError(f"{path}, line {n}: grade {grade} not in {GRADES}")
            grades[row[0].strip()] = grade
    return grades


def _one(folder: Path, pattern: str, what: str) -> Path:
    hits = sorted(folder.glob(pattern))
    if not hits:
        raise FileNotFoundError(f"no {what} ({pattern}) in {folder}")
    return hits[0]


def verse_cases(root: str | Path) -> list[Case]:
    """One :class:`Case` per subject of a VerSe folder."""
    root = Path(root)
    raw = root / "rawdata"
    if not raw.is_dir():
        raise FileNotFoundError(f"--verse_root: no rawdata/ folder in {root}")
    cases = []
    for sub in sorted(p for p in raw.iterdir() if p.is_dir()):
        deriv = root / "derivatives" / sub.name
        cases.append(
            Case(
                pid=sub.name,
                ct=_one(sub, "*_ct.nii.gz", "CT"),
                seg=_one(deriv, "*_msk.nii.gz", "vertebra mask"),
                centroids=_one(deriv, "*_ctd*.json", "centroid file"),
            )
        )
    if not cases:
        raise FileNotFoundError(f"--verse_root: no subject folders in {raw}")
    return cases


def pid_from_path(path: Path) -> str:
    """Patient id from a label file name: ``s0001_seg-vert_msk.nii.gz`` -> ``s0001``."""
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    for tail in ("_seg-vert_msk", "_msk", "_seg", "_label", "_labels"):
        name = name.removesuffix(tail)
    return name


def single_case(
    seg: str | Path,
    ct: str | Path | None = None,
    centroids: str | Path | None = None,
    pid: str | None = None,
) -> Case:
    """The :class:`Case` of one patient's files (checked to exist); ``pid`` defaults to
    :func:`pid_from_path` of ``seg``."""
    files = {"seg": seg, "ct": ct, "centroids": centroids}
    for flag, f in files.items():
        if f is not None and not Path(f).is_file():
            raise FileNotFoundError(f"--{flag}: file not found: {f}")
    paths = {k: None if f is None else Path(f) for k, f in files.items()}
    return Case(pid=pid or pid_from_path(paths["seg"]), **paths)


def _load_case(case: Case, label_map: str) -> tuple[np.ndarray, np.ndarray, Any, Any, Any]:
    """``(seg, seg_affine, ct, ct_affine, centroids)`` of ``case``; seg in VerSe ids."""
    seg, seg_aff, _ = load_nifti(case.seg)
    if seg.ndim != 3:
        raise ValueError(f"{case.seg}: expected a 3D label volume, got shape {seg.shape}")
    if not np.array_equal(seg, np.round(seg)):
        raise ValueError(f"{case.seg}: label volume holds non-integer values")
    seg = seg.astype(np.int64)
    if label_map == "totalseg":
        seg = totalseg_to_verse(seg)
    if seg.max() <= 0:
        raise ValueError(f"{case.seg}: no vertebra labels (label map {label_map})")
    ct = ct_aff = None
    if case.ct is not None:
        ct, ct_aff = load_ct(case.ct)
    centroids = None
    if case.centroids is not None:
        centroids = load_centroid_json(case.centroids, seg.shape, seg_aff)
    return seg, seg_aff, ct, ct_aff, centroids


def straighten_patient(
    case: Case, out: str | Path, settings: StraightenSettings = StraightenSettings()
) -> dict[str, Any]:
    """Straighten one patient into the data root ``out``; returns {id: report entry}."""
    seg, seg_aff, ct, ct_aff, centroids = _load_case(case, settings.label_map)
    affine = ipl_affine(OUT_SPACING_MM)
    report = {}
    vols = straighten_case(
        seg,
        seg_aff,
        ct=ct,
        ct_affine=ct_aff,
        centroids=centroids,
        vertebrae=None if settings.vertebrae is None else list(settings.vertebrae),
        min_volume_mm3=settings.min_volume_mm3,
        out_shape=OUT_SHAPE,
        spacing_mm=OUT_SPACING_MM,
        smoothing_mm3=settings.smoothing_mm3,
        rigid_fraction=settings.rigid_fraction,
    )
    for vol in tqdm(vols, desc=case.pid, unit="vertebra", leave=False):
        key = make_key(case.pid, vol.vid)
        save_nifti(volume_path(out, "label", key), vol.label, affine)
        if vol.ct is not None:
            save_nifti(volume_path(out, "CT", key), vol.ct, affine)
            heat = np.zeros(OUT_SHAPE, dtype=np.float32)
            save_nifti(volume_path(out, "heatmap", key), heat, affine)
        flagged = vol.inside_fraction < settings.min_inside
        if flagged:
            tqdm.write(
                f"warning: {key}: only {vol.inside_fraction:.0%} of its box is inside "
                "the scan (written, outside = air)"
            )
        report[key] = {
            "centroid_world_mm": [round(float(x), 2) for x in vol.centroid_world_mm],
            "inside_fraction": round(vol.inside_fraction, 4),
            "flagged": bool(flagged),
            "source_seg": str(case.seg),
        }
    return report


def update_index(
    out: str | Path, report: Mapping[str, Any], split: str, grades: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """Merge the new ids into ``out/vertebra_data.json`` (an id lives in one split only) and
    their entries into ``out/straighten_report.json``; returns the new split index."""
    out = Path(out)
    path = out / SPLIT_FILE
    data: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for s in SPLITS:
            data[s].update(old.get(s, {}))
    for vid in report:
        for s in SPLITS:
            data[s].pop(vid, None)
        data[split][vid] = grades.get(vid, -1)
    write_json_atomic(path, data)
    rep_path = out / REPORT_FILE
    old_rep = json.loads(rep_path.read_text(encoding="utf-8")) if rep_path.is_file() else {}
    old_rep.update(report)
    write_json_atomic(rep_path, old_rep)
    return data


def straighten_to_root(
    cases: Sequence[Case],
    out: str | Path,
    settings: StraightenSettings = StraightenSettings(),
    *,
    split: str = "test",
    grades: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Straighten every case into the data root ``out`` (:func:`straighten_patient`), file
    the new ids under ``split`` with their ``grades`` (-1 when not given) and return the
    report {id: entry}. Errors name the patient."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose one of {SPLITS}")
    report: dict[str, Any] = {}
    for case in tqdm(cases, desc="patients", unit="patient", disable=len(cases) < 2):
        try:
            report.update(straighten_patient(case, out, settings))
        except ValueError as exc:
            raise ValueError(f"{case.pid}: {exc}") from exc
    update_index(out, report, split, grades or {})
    return report
