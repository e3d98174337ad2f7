"""One table comparing test.py summaries (and the trivial fill baseline beside them).

The library behind ``scripts/compare_results.py``::

    python scripts/compare_results.py results/demo_gan/test_latest \
        results/demo_diffusion/test_latest \
        [--grading results/demo_gan/grading_all_eval results/demo_diffusion/grading_all_eval]

``--grading`` (folders or ``grading.json`` files of ``scripts/grade_synthesis.py``, one per
result folder, same order) adds the Genant grading macro-F1 with synthesis to each method's
row, a row for the grading without synthesis (the neighbour-height baseline) and, on a
phantom root, one for perfect synthesis (RHLV from the measured healthy truth: the ceiling at
this voxel size).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

COLUMNS = (
    ("ssim_patch", "SSIM band", "{:.3f}"),
    ("psnr_patch", "PSNR band", "{:.2f}"),
    ("l1_patch", "L1 band", "{:.3f}"),
    ("dice", "Dice", "{:.3f}"),
    ("rhdr", "RHDR seg %", "{:.2f}"),
    ("rhdr_head", "RHDR head %", "{:.2f}"),
    ("seconds_per_slice", "s/slice", "{:.3f}"),
    ("grading_f1", "Genant F1", "{:.3f}"),
)


def load_summary(folder: Path) -> dict:
    """``summary.json`` of a ``test.py`` result folder."""
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json in {folder} (run test.py first)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_grading(path: Path) -> dict:
    """``grading.json`` of ``grade_synthesis.py`` (``path`` is the file or its folder)."""
    file = path / "grading.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no grading.json at {path} (run scripts/grade_synthesis.py)")
    grading = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(grading.get("rhlv"), dict):
        raise ValueError(f"{file} has no 'rhlv' result")
    return grading


def table_rows(
    summaries: list[dict], gradings: list[dict] | None = None
) -> list[tuple[str, dict[str, float]]]:
    """One row per summary, plus the fill baseline measured on the first one's slices and,
    with ``gradings`` (one per summary), the grading without synthesis of the first one."""
    if gradings is not None and len(gradings) != len(summaries):
        raise ValueError(f"{len(gradings)} gradings for {len(summaries)} result folders")
    rows = []
    for i, s in enumerate(summaries):
        m = s["metrics"]
        values = {k: m[k]["mean"] for k, _, _ in COLUMNS if k in m}
        values["seconds_per_slice"] = s["seconds_per_slice"]
        if gradings is not None:
            values["grading_f1"] = gradings[i]["rhlv"]["macro_f1"]
        label = s["netG_type"] + (f" ({s['steps']} steps)" if s.get("steps") else "")
        rows.append((label, values))
    if summaries:  # baselines, scored on the first summary's slices
        m = summaries[0]["metrics"]
        fill = {k: m[f"fill_{k}"]["mean"] for k, _, _ in COLUMNS if f"fill_{k}" in m}
        rows.append(("trivial fill", fill))
        if "const_rhdr" in m:
            rows.append(("constant height", {"rhdr_head": m["const_rhdr"]["mean"]}))
    if gradings:
        for key, label in (
            ("baseline", "no synthesis (nb ratio)"),
            ("oracle_measured", "healthy truth (oracle)"),
        ):
            if gradings[0].get(key):
                rows.append((label, {"grading_f1": gradings[0][key]["macro_f1"]}))
    return rows


def grading_note(grading: dict) -> str:
    """One line on what the grading column was computed from."""
    grades = grading.get("grades", {})
    counts = ", ".join(f"{n} of grade {g}" for g, n in sorted(grades.items()))
    return (
        f"Genant F1: macro-F1 of a linear SVM ({grading['rhlv']['folds']}-fold stratified CV) on "
        f"the {grading.get('phase', '?')} split(s): {grading.get('n', '?')} vertebrae ({counts})"
    )


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """The rows as a fixed-width text table, ``-`` where a method has no value."""
    header = f"{'method':<22}" + "".join(f"{title:>12}" for _, title, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for label, values in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = values.get(key, math.nan)
            cells.append(f"{fmt.format(v) if math.isfinite(v) else '-':>12}")
        lines.append(f"{label:<22}" + "".join(cells))
    return "\n".join(lines)


def comparison_report(
    folders: Sequence[str | Path], gradings: Sequence[str | Path] | None = None
) -> str:
    """The table of the ``test.py`` result ``folders`` (and of their ``grading.json``
    files, one per folder, same order) with the grading note; ``ValueError`` naming the key
    when a file lacks one."""
    summaries = [load_summary(Path(f)) for f in folders]
    graded = None if gradings is None else [load_grading(Path(g)) for g in gradings]
    try:
        rows = table_rows(summaries, graded)
    except KeyError as exc:
        raise ValueError(f"a summary or grading file lacks the key {exc}") from exc
    return format_table(rows) + (f"\n{grading_note(graded[0])}" if graded else "")
