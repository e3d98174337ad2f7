"""Vertebral morphometry of healthy vertebrae beside the published values the phantom follows.

Ratios as radiographic morphometry defines them (EVOS, O'Neill et al. 1994): Ha/Hp and Hc/Hp
within a vertebra, Hp/Hp' and Hp/Hp'' against the vertebra above and below, and the sagittal
wedging (deg, > 0 ventral: anterior shorter). Radiographs place Ha and Hp at the walls;
``util.heights`` measures the median height of the central half of each third, so the wall
heights are extrapolated linearly from the anterior and posterior thirds (their centres are
2/3 of the depth apart): ``Ha_w = Ha + (Ha - Hp) / 4``, ``Hp_w = Hp - (Ha - Hp) / 4``; the
wedging is ``atan((Hp - Ha) / (2/3 depth))``.

Sources of heights: a phantom root's ``heights.json`` (the healthy heights of every vertebra,
measured with ``util.heights`` on a 0.1 mm render; a fractured one by its healthy twin), or a
label volume (``util.heights.measure_heights``; depth = mid-sagittal body area / mean height).
The library behind ``scripts/phantom_morphometry.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.phantom_anatomy import SPINE_LEVELS, vertebra_heights
from data.phantom_patients import sample_patient_params
from data.phantom_population import published_ratios
from util.geometry import HEIGHTS_FILE, split_key
from util.heights import estimate_body, load_seg_and_body, measure_heights, to_ipl
from util.labels import id_to_name_map

#: The ratios reported, in table order.
RATIOS = ("ha_hp", "hc_hp", "wedge_deg", "hp_hp1", "hp_hp2")
_LEVEL_INDEX = {n: i for i, n in enumerate(SPINE_LEVELS)}


def wall_measures(heights: Mapping[str, float], depth_mm: float | None) -> dict[str, float | None]:
    """Wall heights and within-vertebra ratios from ``util.heights`` thirds (mm).

    Returns ``ha_w``, ``hp_w`` (mm), ``ha_hp``, ``hc_hp`` and ``wedge_deg`` (``None`` without
    a depth)."""
    ha, hc, hp = heights["anterior_mm"], heights["middle_mm"], heights["posterior_mm"]
    ha_w, hp_w = ha + 0.25 * (ha - hp), hp - 0.25 * (ha - hp)
    wedge = None if not depth_mm else math.degrees(math.atan((hp - ha) / (2 / 3 * depth_mm)))
    return {
        "ha_w": ha_w,
        "hp_w": hp_w,
        "ha_hp": ha_w / hp_w,
        "hc_hp": hc / hp_w,
        "wedge_deg": wedge,
    }


def level_measures(
    vertebrae: Mapping[str, tuple[Mapping[str, float], float | None]],
) -> dict[str, dict[str, float | None]]:
    """Per level name: :func:`wall_measures` plus ``hp_hp1`` (Hp / Hp of the level above) and
    ``hp_hp2`` (Hp / Hp of the level below) where that level is in ``vertebrae``.

    Args:
        vertebrae: ``{level: (heights, depth_mm)}`` of one spine (levels as ``"T12"``).
    """
    out = {n: wall_measures(h, d) for n, (h, d) in vertebrae.items()}
    for name, m in out.items():
        i = _LEVEL_INDEX.get(name)
        for key, j in (("hp_hp1", -1), ("hp_hp2", 1)):
            other = (
                SPINE_LEVELS[i + j] if i is not None and 0 <= i + j < len(SPINE_LEVELS) else None
            )
            m[key] = m["hp_w"] / out[other]["hp_w"] if other in out else None
    return out


def phantom_measures(dataroot: str | Path) -> dict[str, dict[str, list[float]]]:
    """``{"<sex>": {"<level> <ratio>": [values]}}`` over every patient of a phantom root
    (sex ``"all"`` plus ``"F"``/``"M"`` when the records carry it)."""
    path = Path(dataroot) / HEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a phantom root from scripts/make_phantom.py)")
    records = json.loads(path.read_text())
    names = id_to_name_map("verse")
    spines: dict[str, dict[str, tuple]] = {}
    sex_of: dict[str, str] = {}
    for key, rec in records.items():
        pid, vid = split_key(key)
        spines.setdefault(pid, {})[names[int(vid)]] = (rec["healthy"], rec.get("depth_mm"))
        sex_of[pid] = rec.get("sex") or "all"
    return _pool(spines, sex_of)


def simulated_measures(
    n_patients: int, seed: int = 0, morphometry: str = "published"
) -> dict[str, dict[str, list[float]]]:
    """:func:`phantom_measures` of ``n_patients`` drawn without rendering a volume (the
    sample levels' healthy heights, as ``heights.json`` records them)."""
    rng = np.random.default_rng(seed)
    spines: dict[str, dict[str, tuple]] = {}
    sex_of: dict[str, str] = {}
    for i in range(n_patients):
        p = sample_patient_params(rng, {}, morphometry)
        spines[str(i)] = {
            v.name: (vertebra_heights(v), v.depth_mm if p.sex else None)
            for v in p.vertebrae
            if v.is_sample
        }
        sex_of[str(i)] = p.sex or "all"
    return _pool(spines, sex_of)


def _pool(
    spines: Mapping[str, Mapping[str, tuple]], sex_of: Mapping[str, str]
) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for pid, spine in spines.items():
        for level, m in level_measures(spine).items():
            for sex in {"all", sex_of[pid]}:
                for r in RATIOS:
                    if m[r] is not None:
                        out.setdefault(sex, {}).setdefault(f"{level} {r}", []).append(float(m[r]))
    return out


def label_measures(
    seg: np.ndarray,
    affine: np.ndarray,
    *,
    body: np.ndarray | None = None,
    label_map: str = "verse",
    skip: Sequence[str] = (),
) -> dict[str, dict[str, float | None]]:
    """:func:`level_measures` of every measurable vertebra of a label volume (levels in
    ``skip``, e.g. fractured ones, are left out)."""
    names = id_to_name_map(label_map)
    present = sorted(int(v) for v in np.unique(seg) if int(v) in names)
    vertebrae = {}
    for vid in present:
        name = names[vid]
        if name in skip or name not in _LEVEL_INDEX or name == "S1":
            continue
        try:
            h = measure_heights(seg, affine, vid, body=body)
        except ValueError:
            continue  # cut by the volume's edge or without body voxels
        vertebrae[name] = (h.as_dict(), _depth_mm(seg == vid, affine, body, h.as_array()))
    return level_measures(vertebrae)


def _depth_mm(
    vert: np.ndarray, affine: np.ndarray, body: np.ndarray | None, h: np.ndarray
) -> float:
    """A-P depth of a body: its mean mid-sagittal area (central quarter of the L-R extent)
    over its mean height (independent of the sagittal tilt)."""
    mask, sp = to_ipl(vert, affine)
    mask = mask & to_ipl(body == 1, affine)[0] if body is not None else estimate_body(mask, sp)
    lr = np.flatnonzero(mask.any(axis=(0, 1)))
    c, q = 0.5 * (lr[0] + lr[-1]), max(1.0, 0.125 * (lr[-1] - lr[0]))
    ks = [k for k in lr if abs(k - c) <= q]
    area = np.mean([mask[:, :, k].sum() for k in ks]) * sp[0] * sp[1]
    return float(area / np.mean(h))


def summarise(values: Mapping[str, list[float]]) -> dict[str, tuple[float, float, int]]:
    """``{"<level> <ratio>": (mean, SD, n)}``."""
    return {
        k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), len(v))
        for k, v in values.items()
    }


def published_row(level: str, ratio: str, sex: str = "F") -> tuple[float | None, float]:
    """(mean, SD) the phantom claims for ``ratio`` at ``level`` (Hp/Hp'' from the level below)."""
    if ratio == "hp_hp2":
        i = _LEVEL_INDEX[level]
        if i + 1 >= len(SPINE_LEVELS) or SPINE_LEVELS[i + 1] == "S1":
            return None, float("nan")
        below = published_ratios(SPINE_LEVELS[i + 1], sex)["hp_hp1"]
        return (None if below[0] is None else 1 / below[0]), below[1]
    return published_ratios(level, sex)[ratio]


def table_rows(
    levels: Sequence[str],
    columns: Mapping[str, Mapping[str, tuple[float, float, int]]],
    sex: str = "F",
) -> list[str]:
    """Markdown rows: level, ratio, published mean (SD), then ``mean (SD) n`` of each column."""
    head = "| level | ratio | published (women) | " + " | ".join(columns) + " |"
    rows = [head, "|" + "---|" * (3 + len(columns))]
    for level in levels:
        for r in RATIOS:
            mean, sd = published_row(level, r, sex)
            pub = "-" if mean is None else f"{mean:.3f} ({sd:.3f})"
            if r == "wedge_deg" and mean is not None:
                pub = f"{mean:.1f} ({sd:.1f})"
            cells = []
            for col in columns.values():
                m = col.get(f"{level} {r}")
                fmt = ".1f" if r == "wedge_deg" else ".3f"
                if m is None:
                    cells.append("-")
                elif m[2] == 1:
                    cells.append(f"{m[0]:{fmt}}")
                else:
                    cells.append(f"{m[0]:{fmt}} ({m[1]:{fmt}}) n={m[2]}")
            rows.append(f"| {level} | {r} | {pub} | " + " | ".join(cells) + " |")
    return rows


def real_columns(paths: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, tuple]]:
    """Single-spine columns (SD nan, n=1) for :func:`table_rows` from
    ``{name: {"seg": path, "body": path|None, "label_map": str, "skip": [levels]}}``."""
    out = {}
    for name, spec in paths.items():
        seg, affine, body = load_seg_and_body(spec["seg"], spec.get("body"))
        m = label_measures(
            seg, affine, body=body, label_map=spec["label_map"], skip=spec.get("skip", ())
        )
        out[name] = {
            f"{lv} {r}": (float(v[r]), float("nan"), 1)
            for lv, v in m.items()
            for r in RATIOS
            if v[r] is not None
        }
    return out
