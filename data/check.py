"""Validation of a data root before training: every problem, not just the first.

Checks (see docs/ARCHITECTURE.md, "Data root layout"):

* ``vertebra_data.json`` exists, is an object with the splits ``train``, ``val``, ``test``
  (each ``{id: grade}``), grades in {-1, 0, 1, 2, 3}, no id in two splits, at least one id in
  all, and every split named in ``--require_splits`` non-empty;
* every id has ``CT/``, ``label/`` and ``heatmap/`` files that are readable 3D NIfTI volumes of
  one shape, in (I, P, L) orientation (the L axis last);
* CT uint8 (or values within 0..255), label non-negative integers that contain the vertebra id
  of the file name (``<pid>_<vid>``, split at the last ``_``), heatmap finite within [0, 1].

The library behind ``scripts/check_dataset.py`` (exit status 0 when clean, 1 when there are
problems, all printed)::

    python scripts/check_dataset.py --dataroot datasets/real --require_splits train val
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from util.geometry import PHASES, SPLIT_FILE, split_key
from util.nifti_io import NiftiError, ct_value_problem, load_nifti

#: The splits of ``vertebra_data.json`` and the grades it may give (Genant 0-3; -1 unknown).
SPLITS = PHASES["all"]
GRADES = (-1, 0, 1, 2, 3)
FOLDERS = ("CT", "label", "heatmap")
ORIENTATION = ("I", "P", "L")


@dataclass(frozen=True)
class Problem:
    """One finding: ``where`` is an id, a file or ``vertebra_data.json``."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class VolumeInfo:
    """What the table shows for one id (``None`` where a file could not be read)."""

    id: str
    split: str
    grade: object
    shape: tuple[int, ...] | None = None
    ct_range: tuple[float, float] | None = None
    label_ids: tuple[int, ...] | None = None
    heat_range: tuple[float, float] | None = None
    ok: bool = True


def _load(path: Path, where: str, problems: list[Problem]) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        data, affine, _ = load_nifti(path)
    except FileNotFoundError:
        problems.append(Problem(where, f"missing file {path}"))
        return None
    except NiftiError as exc:
        problems.append(Problem(where, str(exc)))
        return None
    return data, affine


def read_index(root: Path, problems: list[Problem]) -> dict[str, dict]:
    """Read and validate ``vertebra_data.json``; returns {split: {id: grade}} (possibly empty)."""
    path = root / SPLIT_FILE
    where = SPLIT_FILE
    if not path.is_file():
        problems.append(Problem(where, f"missing file {path}"))
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(Problem(where, f"not valid JSON: {exc}"))
        return {}
    if not isinstance(index, dict):
        problems.append(Problem(where, "must be an object {split: {id: grade}}"))
        return {}
    for key in index:
        if key not in SPLITS:
            problems.append(Problem(where, f"unknown split {key!r} (expected {SPLITS})"))
    out: dict[str, dict] = {}
    for split in SPLITS:
        entries = index.get(split)
        if entries is None:
            problems.append(Problem(where, f"split {split!r} is missing"))
            entries = {}
        elif not isinstance(entries, dict):
            problems.append(Problem(where, f"split {split!r} must be an object {{id: grade}}"))
            entries = {}
        out[split] = entries
    return out


def check_volume(root: Path, vid: str, problems: list[Problem], info: VolumeInfo) -> None:
    """Check the three files of one id; append problems and fill ``info``."""
    start = len(problems)
    vert = None
    try:
        _, vert = split_key(vid)
    except ValueError as exc:
        problems.append(Problem(vid, str(exc)))
    loaded = {}
    for folder in FOLDERS:
        got = _load(root / folder / f"{vid}.nii.gz", vid, problems)
        if got is None:
            continue
        data, affine = got
        if data.ndim != 3:
            problems.append(Problem(vid, f"{folder} is {data.ndim}D {data.shape}, expected 3D"))
            continue
        codes = nib.aff2axcodes(affine)
        if tuple(codes) != ORIENTATION:
            problems.append(
                Problem(vid, f"{folder} orientation {codes}, expected {ORIENTATION} (L last)")
            )
        loaded[folder] = data
    shapes = {f: tuple(d.shape) for f, d in loaded.items()}
    if len(set(shapes.values())) > 1:
        problems.append(Problem(vid, f"shapes differ: {shapes}"))
    if shapes:
        info.shape = next(iter(shapes.values()))
    if "CT" in loaded:
        ct = loaded["CT"]
        lo, hi = float(ct.min()), float(ct.max())
        info.ct_range = (lo, hi)
        if (problem := ct_value_problem(ct)) is not None:
            problems.append(Problem(vid, problem))
    if "label" in loaded:
        lab = loaded["label"]
        if np.issubdtype(lab.dtype, np.floating) and not np.array_equal(lab, np.round(lab)):
            problems.append(Problem(vid, "label holds non-integer values"))
        ids = tuple(int(x) for x in np.unique(lab))
        info.label_ids = tuple(i for i in ids if i != 0)
        if ids and ids[0] < 0:
            problems.append(Problem(vid, f"label holds negative ids {[i for i in ids if i < 0]}"))
        if vert is not None and vert not in ids:
            problems.append(Problem(vid, f"vertebra {vert} absent from its label (ids {ids})"))
    if "heatmap" in loaded:
        heat = loaded["heatmap"]
        lo, hi = float(heat.min()), float(heat.max())
        info.heat_range = (lo, hi)
        if lo < 0 or hi > 1:
            problems.append(Problem(vid, f"heatmap values {lo:g}..{hi:g} outside [0, 1]"))
    info.ok = len(problems) == start


def check_dataset(
    root: str | Path,
    require_splits: Sequence[str] = (),
    infos: list[VolumeInfo] | None = None,
    progress: bool = False,
) -> list[Problem]:
    """Every problem of data root ``root`` (empty list when it is ready for use).

    ``require_splits``: splits that must hold at least one id (e.g. ``("train", "val")``
    before training); an index with no id at all is always a problem. ``infos``, when given,
    receives one :class:`VolumeInfo` per id for a report table.
    """
    root = Path(root)
    problems: list[Problem] = []
    if not root.is_dir():
        return [Problem(str(root), "data root folder not found")]
    for split in require_splits:
        if split not in SPLITS:
            raise ValueError(f"require_splits: unknown split {split!r}; choose from {SPLITS}")
    index = read_index(root, problems)
    if index and not any(index.values()):
        problems.append(Problem(SPLIT_FILE, "every split is empty"))
    for split in require_splits:
        if index and not index.get(split):
            problems.append(Problem(SPLIT_FILE, f"split {split!r} is empty"))
    seen: dict[str, str] = {}
    todo = []
    for split, entries in index.items():
        for vid, grade in entries.items():
            if vid in seen:
                problems.append(Problem(vid, f"listed in both {seen[vid]!r} and {split!r}"))
                continue
            seen[vid] = split
            if isinstance(grade, bool) or not isinstance(grade, int) or grade not in GRADES:
                problems.append(Problem(vid, f"grade {grade!r} not in {GRADES}"))
            todo.append(VolumeInfo(vid, split, grade))
    for info in tqdm(todo, desc="checking", unit="id", disable=not progress):
        check_volume(root, info.id, problems, info)
        if infos is not None:
            infos.append(info)
    return problems


def _fmt_range(r: tuple[float, float] | None) -> str:
    return "-" if r is None else f"{r[0]:.3g}..{r[1]:.3g}"


def format_table(infos: Iterable[VolumeInfo]) -> str:
    """One line per id: split, grade, shape, CT range, label ids, heatmap range, status."""
    head = f"{'id':<24} {'split':<5} {'grade':>5} {'shape':<15} {'CT':<9} {'heatmap':<10} labels"
    lines = [head, "-" * len(head)]
    for i in infos:
        shape = "x".join(map(str, i.shape)) if i.shape else "-"
        labels = ",".join(map(str, i.label_ids)) if i.label_ids is not None else "-"
        lines.append(
            f"{i.id:<24} {i.split:<5} {i.grade!s:>5} {shape:<15} {_fmt_range(i.ct_range):<9} "
            f"{_fmt_range(i.heat_range):<10} {labels}{'' if i.ok else '  <-- problem'}"
        )
    return "\n".join(lines)


def split_summary(infos: Iterable[VolumeInfo]) -> str:
    """One line per split: ids, their count per grade, and how many have problems."""
    infos = list(infos)
    lines = []
    for split in SPLITS:
        mine = [i for i in infos if i.split == split]
        grades = {g: sum(i.grade == g for i in mine) for g in GRADES}
        bad = sum(not i.ok for i in mine)
        lines.append(f"{split:<5}: {len(mine):5d} ids, grades {grades}, {bad} with problems")
    return "\n".join(lines)


def problem_report(problems: Sequence[Problem], root: str | Path) -> str:
    """The problems of ``root`` under a count line (what goes to stderr)."""
    return "\n".join([f"\n{len(problems)} problem(s) in {root}:", *(f"  {p}" for p in problems)])
