"""Cohort straightening at scale: sharded, resumable, with one report.

The cohort is a list of :class:`data.straighten_root.Case` (a VerSe root,
:func:`data.straighten_root.verse_cases`, or a folder of case folders, :func:`folder_cases`).
Each process straightens its shard (:mod:`util.shard`) into the shared data root ``out``:

1. a case is **skipped** when its manifest ``out/straighten_work/cases/<pid>.json`` exists,
   was written with the same settings and every file it lists exists (a killed shard restarts
   where it stopped; deleting one output of a case makes that case run again);
2. otherwise it is straightened (:func:`data.straighten_root.straighten_patient`; every
   volume is written atomically) and its manifest is written last, atomically, so a manifest
   only ever describes complete outputs;
3. a case that raises is recorded as **failed** with its one-line error, and the shard goes on;
4. the shard writes ``out/straighten_work/shard_<i>of<N>.json``: every case of the shard with
   its status (done / skipped / failed), the reason or error, and its vertebrae.

Shards never write the shared ``vertebra_data.json``; :func:`merge_shards`, run once after all
shards, combines the N shard reports into ``vertebra_data.json`` and ``straighten_report.json``
(both atomic, merged with what the root holds) and the cohort report
``straighten_cohort.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data.check import SPLITS
from data.straighten_root import Case, StraightenSettings, straighten_patient, update_index
from util.geometry import volume_path
from util.io import read_json_record, write_json_atomic
from util.shard import Shard, shard_files, take_shard

WORK_DIR = "straighten_work"
COHORT_REPORT = "straighten_cohort.json"
#: Label file names looked for in a case folder, in this order (TotalSegmentator's first).
LABEL_NAMES = ("vertebrae_labels.nii.gz", "vertebrae.nii.gz", "seg.nii.gz", "label.nii.gz")
#: CT names in a case folder: a NIfTI file, or a folder holding one DICOM series.
CT_NAMES = ("ct.nii.gz", "ct.nii", "ct")


@dataclasses.dataclass(frozen=True)
class Skip:
    """A case folder that cannot be straightened, and why (reported, never run)."""

    pid: str
    reason: str


def folder_cases(root: str | Path) -> list[Case | Skip]:
    """One entry per sub-folder of ``root`` (the patient id is the folder name): a
    :class:`Case` when it holds a vertebra label NIfTI (:data:`LABEL_NAMES`) and a CT
    (:data:`CT_NAMES`: ``ct.nii.gz`` as TotalSegmentator writes it, or a ``ct/`` folder with
    a DICOM series), else a :class:`Skip` that says what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--cases_root: folder not found: {root}")
    out: list[Case | Skip] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        seg = next((folder / n for n in LABEL_NAMES if (folder / n).is_file()), None)
        ct = next((folder / n for n in CT_NAMES if (folder / n).exists()), None)
        if seg is None:
            out.append(Skip(folder.name, f"no vertebra label file ({', '.join(LABEL_NAMES)})"))
        elif ct is None:
            out.append(Skip(folder.name, "no CT (ct.nii.gz, ct.nii or a DICOM folder ct/)"))
        else:
            out.append(Case(pid=folder.name, seg=seg, ct=ct))
    if not out:
        raise FileNotFoundError(f"--cases_root: no case folders in {root}")
    return out


def _manifest_path(out: Path, pid: str) -> Path:
    return out / WORK_DIR / "cases" / f"{pid}.json"


def _case_files(out: Path, keys: Sequence[str], with_ct: bool) -> list[Path]:
    folders = ("label", "CT", "heatmap") if with_ct else ("label",)
    return [volume_path(out, f, k) for k in keys for f in folders]


def _complete(out: Path, pid: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The case's manifest when its outputs are complete for these settings, else None."""
    man = read_json_record(_manifest_path(out, pid))
    if man is None or man.get("settings") != settings:
        return None
    files = _case_files(out, list(man["vertebrae"]), man["with_ct"])
    return man if all(f.is_file() for f in files) else None


def _run_case(case: Case, out: Path, settings: StraightenSettings) -> dict[str, Any]:
    """Straighten one case and write its manifest last; returns the manifest."""
    vertebrae = straighten_patient(case, out, settings)
    man = {
        "pid": case.pid,
        "settings": _settings_dict(settings),
        "with_ct": case.ct is not None,
        "vertebrae": vertebrae,
    }
    write_json_atomic(_manifest_path(out, case.pid), man)
    return man


def _settings_dict(settings: StraightenSettings) -> dict[str, Any]:
    d = dataclasses.asdict(settings)
    d["vertebrae"] = None if settings.vertebrae is None else list(settings.vertebrae)
    return d


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def shard_report_path(out: str | Path, shard: Shard) -> Path:
    return Path(out) / WORK_DIR / f"shard_{shard.name}.json"


def straighten_shard(
    cases: Sequence[Case | Skip],
    out: str | Path,
    settings: StraightenSettings | None = None,
    *,
    shard: Shard | None = None,
    split: str = "test",
    grades: Mapping[str, int] | None = None,
    log=print,
) -> dict[str, Any]:
    """Straighten this shard's cases into ``out`` (steps 1-4 of the module docstring) and
    return the shard report ``{"shard", "split", "cases": {pid: {...}}, "index"}``, also
    written to :func:`shard_report_path`. ``settings`` default: ``StraightenSettings()``;
    ``shard`` default: 0/1 (every case). ``index`` maps split -> {vertebra id: grade}."""
    if split not in SPLITS:
        raise ValueError(f"--split {split!r}: choose one of {SPLITS}")
    out, grades = Path(out), grades or {}
    settings, shard = settings or StraightenSettings(), shard or Shard()
    want = _settings_dict(settings)
    mine = take_shard(cases, shard, key=lambda c: c.pid)
    rows: dict[str, dict[str, Any]] = {}
    for n, case in enumerate(mine, start=1):
        t0 = time.perf_counter()
        if isinstance(case, Skip):
            row = {"status": "skipped", "reason": case.reason, "vertebrae": {}}
        elif (man := _complete(out, case.pid, want)) is not None:
            row = {"status": "skipped", "reason": "already done", "vertebrae": man["vertebrae"]}
        else:
            try:
                man = _run_case(case, out, settings)
                row = {"status": "done", "vertebrae": man["vertebrae"]}
            except Exception as exc:  # one bad case must not stop a cohort run; reported
                row = {"status": "failed", "error": _one_line(exc), "vertebrae": {}}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows[case.pid] = row
        what = row.get("reason") or row.get("error") or f"{len(row['vertebrae'])} vertebrae"
        log(f"[shard {shard}] {n}/{len(mine)} {case.pid}: {row['status']} ({what})")
    ids = [k for r in rows.values() for k in r["vertebrae"]]
    report = {
        "shard": str(shard),
        "split": split,
        "settings": want,
        "cases": rows,
        "index": {split: {k: grades.get(k, -1) for k in ids}},
    }
    write_json_atomic(shard_report_path(out, shard), report)
    return report


def merge_shards(out: str | Path, count: int | None = None) -> dict[str, Any]:
    """Combine the shard reports of ``out`` into ``vertebra_data.json`` and
    ``straighten_report.json`` (merged with what ``out`` holds) and the cohort report
    ``straighten_cohort.json`` (returned). ``count`` defaults to the N of the reports found;
    every shard 0..N-1 must be there."""
    paths = shard_files(Path(out) / WORK_DIR, "shard_", count)
    count = len(paths)
    cases: dict[str, Any] = {}
    filed: dict[str, tuple[str, int]] = {}  # vertebra id -> (split, grade)
    for p in paths:
        rep = json.loads(p.read_text(encoding="utf-8"))
        cases.update(rep["cases"])
        for s, ids in rep["index"].items():
            filed.update({k: (s, g) for k, g in ids.items()})
    cases = dict(sorted(cases.items()))  # the order one process runs them in
    per_split: dict[str, dict[str, int]] = {}
    entries: dict[str, Any] = {}
    for row in cases.values():
        for k, entry in row["vertebrae"].items():
            entries[k] = entry
            per_split.setdefault(filed[k][0], {})[k] = filed[k][1]
    for s, ids in per_split.items():
        update_index(out, {k: entries[k] for k in ids}, s, ids)
    cohort = {"shards": count, "summary": summarise(cases), "cases": cases}
    write_json_atomic(Path(out) / COHORT_REPORT, cohort)
    return cohort


def summarise(cases: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Counts of cases per status and of vertebrae in the index."""
    out = {s: 0 for s in ("done", "skipped", "failed")}
    for row in cases.values():
        out[row["status"]] += 1
    out["vertebrae"] = sum(len(r["vertebrae"]) for r in cases.values())
    return out


def format_summary(cohort: Mapping[str, Any]) -> str:
    """The printed summary: one line per skipped or failed case, then the counts."""
    lines = []
    for pid, row in cohort["cases"].items():
        if row["status"] != "done":
            lines.append(f"  {row['status']:7s} {pid}: {row.get('reason') or row.get('error')}")
    s = cohort["summary"]
    lines.append(
        f"{s['done']} done, {s['skipped']} skipped, {s['failed']} failed; "
        f"{s['vertebrae']} vertebrae in the index"
    )
    return "\n".join(lines)
