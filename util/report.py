"""Result files of test.py: metrics.csv, summary.json and a sortable HTML table."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dominate
import numpy as np
from dominate.tags import img, script, style, table, tbody, td, th, thead, tr
from dominate.util import raw
from PIL import Image

from util.geometry import inside
from util.io import atomic_path, write_text_atomic

IMAGE_COLUMNS = ("input", "output", "truth", "difference", "baseline", "uncertainty")

_SORT_JS = """
function sortTable(col, numeric) {
  const body = document.querySelector('#results tbody');
  const rows = Array.from(body.rows);
  const dir = body.dataset.col == col && body.dataset.dir == 'asc' ? 'desc' : 'asc';
  rows.sort((a, b) => {
    let x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
    if (numeric) { x = parseFloat(x); y = parseFloat(y);
      x = isNaN(x) ? Infinity : x; y = isNaN(y) ? Infinity : y; }
    return (x < y ? -1 : x > y ? 1 : 0) * (dir == 'asc' ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
  body.dataset.col = col; body.dataset.dir = dir;
}
"""


def write_metrics_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per evaluated slice; columns are the union of the rows' keys, in order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
    write_text_atomic(path, buf.getvalue())


def save_png(array: np.ndarray, path: Path, value_range: tuple[float, float]) -> None:
    lo, hi = value_range
    img8 = (np.clip((array - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(img8).save(tmp, format="PNG")


def write_html(
    out_dir: str | Path,
    title: str,
    summary_lines: Sequence[str],
    images: Mapping[str, Mapping[str, Any]],
    per_vertebra: Mapping[str, Mapping[str, float]],
) -> Path:
    """``index.html``: one row per vertebra (its most central slice), worst band SSIM first;
    click a column header to sort by it."""
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    order = sorted(images, key=lambda k: _nan_last(images[k]["ssim_patch"]))
    doc = dominate.document(title=title)
    with doc.head:
        style(
            "body{font-family:sans-serif} td,th{padding:4px;text-align:center}"
            " th{cursor:pointer;background:#eee} img{width:160px;image-rendering:pixelated}"
        )
        script(raw(_SORT_JS))
    metric_cols = ["ssim_patch", "psnr_patch", "dice", "rhdr"]
    with doc:
        dominate.tags.h2(title)
        for line in summary_lines:
            dominate.tags.p(line)
        with table(id="results", border=1):
            with thead(), tr():
                th("vertebra", onclick="sortTable(0, false)")
                for i, name in enumerate(metric_cols, start=1):
                    th(name + " (mean)", onclick=f"sortTable({i}, true)")
                for name in IMAGE_COLUMNS:
                    th(name)
            with tbody():
                for key in order:
                    ims = images[key]
                    with tr():
                        td(key, data_v=key)
                        for name in metric_cols:
                            v = per_vertebra.get(key, {}).get(name, math.nan)
                            td(f"{v:.3f}", data_v=f"{v}")
                        for name in IMAGE_COLUMNS:
                            arr = ims.get(name)
                            if arr is None:
                                td("n/a")
                                continue
                            # maps of non-negative errors are stretched to their own maximum
                            rng = (
                                (0.0, max(float(np.max(arr)), 1e-6))
                                if name in ("difference", "uncertainty")
                                else (-1.0, 1.0)
                            )
                            rel = f"images/{key}_{name}.png"
                            # the key comes from data: its PNG must stay in images/
                            png = inside(img_dir / f"{key}_{name}.png", img_dir)
                            save_png(arr, png, rng)
                            td(img(src=rel, alt=f"{key} {name}"))
    path = out_dir / "index.html"
    write_text_atomic(path, doc.render())
    return path


def per_vertebra_means(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean of each numeric metric over the slices of each vertebra (finite values only)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        g = groups.setdefault(row["id"], {})
        for k, v in row.items():
            if isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v):
                g.setdefault(k, []).append(float(v))
    return {key: {k: float(np.mean(v)) for k, v in g.items()} for key, g in groups.items()}


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _nan_last(value: float) -> float:
    return math.inf if value is None or not math.isfinite(value) else value
