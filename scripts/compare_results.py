"""Print one table comparing test.py summaries (and the trivial fill baseline beside them).

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

import argparse
import json
import math
import sys
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
        raise KeyError(f"{file} has no 'rhlv' result")
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
    header = f"{'method':<22}" + "".join(f"{title:>12}" for _, title, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for label, values in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = values.get(key, math.nan)
            cells.append(f"{fmt.format(v) if math.isfinite(v) else '-':>12}")
        lines.append(f"{label:<22}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "folders",
        nargs="+",
        type=Path,
        help="result folders of test.py (<results_dir>/<name>/<phase>_<epoch>)",
    )
    parser.add_argument(
        "--grading",
        nargs="+",
        type=Path,
        default=None,
        help="grading.json files (or their folders) of grade_synthesis.py, one per result folder",
    )
    args = parser.parse_args(argv)
    try:
        summaries = [load_summary(f) for f in args.folders]
        gradings = None if args.grading is None else [load_grading(g) for g in args.grading]
        rows = table_rows(summaries, gradings)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if gradings:
        print(grading_note(gradings[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
