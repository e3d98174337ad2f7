"""Print one table comparing test.py summaries (and the trivial fill baseline beside them).

    python scripts/compare_results.py results/demo_gan/test_latest \
        results/demo_diffusion/test_latest
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
)


def load_summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no summary.json in {folder} (run test.py first)")
    return json.loads(path.read_text(encoding="utf-8"))


def table_rows(summaries: list[dict]) -> list[tuple[str, dict[str, float]]]:
    """One row per summary, plus the fill baseline measured on the first one's slices."""
    rows = []
    for s in summaries:
        m = s["metrics"]
        values = {k: m[k]["mean"] for k, _, _ in COLUMNS if k in m}
        values["seconds_per_slice"] = s["seconds_per_slice"]
        label = s["netG_type"] + (f" ({s['steps']} steps)" if s.get("steps") else "")
        rows.append((label, values))
    if summaries:  # baselines, scored on the first summary's slices
        m = summaries[0]["metrics"]
        fill = {k: m[f"fill_{k}"]["mean"] for k, _, _ in COLUMNS if f"fill_{k}" in m}
        rows.append(("trivial fill", fill))
        if "const_rhdr" in m:
            rows.append(("constant height", {"rhdr_head": m["const_rhdr"]["mean"]}))
    return rows


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
    args = parser.parse_args(argv)
    try:
        summaries = [load_summary(f) for f in args.folders]
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(table_rows(summaries)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
