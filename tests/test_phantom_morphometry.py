"""The published morphometry of the phantom: its healthy ratios follow the table it claims,
fractures cluster at the thoracolumbar junction, and ``--morphometry simple`` still writes the
first phantom bit-for-bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from data.phantom import generate_dataset
from data.phantom_anatomy import ANATOMY, SAMPLE_VERTEBRAE
from data.phantom_patients import plan_fractures
from data.phantom_population import LEVEL_WEIGHTS, PUBLISHED
from evaluation.morphometry import (
    phantom_measures,
    published_row,
    simulated_measures,
    summarise,
    wall_measures,
)

#: Tolerances of the test (women, ~85 per level): mean within 0.02 (ratios) or 1 deg
#: (wedging) of the published value; SD within 0.6-1.4 x the published SD.
MEAN_TOL, WEDGE_TOL, SD_RANGE = 0.02, 1.0, (0.6, 1.4)


@pytest.fixture(scope="module")
def women() -> dict[str, tuple[float, float, int]]:
    return summarise(simulated_measures(120, seed=11)["F"])


@pytest.mark.parametrize("level", SAMPLE_VERTEBRAE)
def test_healthy_ratios_follow_the_published_table(women: dict, level: str) -> None:
    checked = 0
    for ratio in ("ha_hp", "hc_hp", "wedge_deg", "hp_hp1", "hp_hp2"):
        mean, sd = published_row(level, ratio)
        got = women.get(f"{level} {ratio}")
        if mean is None or got is None:
            continue
        tol = WEDGE_TOL if ratio == "wedge_deg" else MEAN_TOL
        assert abs(got[0] - mean) <= tol, (level, ratio, got, mean)
        assert SD_RANGE[0] * sd <= got[1] <= SD_RANGE[1] * sd, (level, ratio, got, sd)
        assert got[2] > 60
        checked += 1
    assert checked >= 4


def test_wedging_is_kyphotic_thoracic_and_lordotic_lumbar(women: dict) -> None:
    assert women["T11 wedge_deg"][0] > 3 and women["L5 wedge_deg"][0] < -6
    assert women["L5 ha_hp"][0] > 1.1 > 0.95 > women["T11 ha_hp"][0]


def test_wall_measures_of_a_known_trapezoid() -> None:
    # Thirds 2/3 of a 30 mm depth apart: 20 mm of depth, 2 mm less anteriorly.
    m = wall_measures({"anterior_mm": 23.0, "middle_mm": 22.0, "posterior_mm": 25.0}, 30.0)
    assert m["ha_w"] == pytest.approx(22.5) and m["hp_w"] == pytest.approx(25.5)
    assert m["wedge_deg"] == pytest.approx(np.degrees(np.arctan(2 / 20)))


def test_fracture_levels_peak_at_the_thoracolumbar_junction() -> None:
    plan = plan_fractures(np.random.default_rng(0), 2000, "published")
    names = {ANATOMY[n][0]: n for n in ANATOMY}
    levels = [names[v] for d in plan for v in d]
    counts = {n: levels.count(n) for n in LEVEL_WEIGHTS}
    assert max(counts, key=counts.get) in ("T12", "L1")
    assert counts["T12"] + counts["L1"] > 0.4 * len(levels)
    multi = [sorted(d) for d in plan if len(d) > 1]
    assert len(multi) > 0.25 * len(plan)
    adjacent = sum(any(b - a == 1 for a, b in zip(m, m[1:])) for m in multi)
    assert 0.3 * len(multi) < adjacent < len(multi)


def test_generated_root_carries_sex_and_depth(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "p", 2, img_size=32, seed=1, workers=1, progress=False)
    measures = phantom_measures(tmp_path / "p")
    assert set(measures) >= {"all"} and len(set(measures) - {"all"}) >= 1
    assert len(measures["all"]["L1 wedge_deg"]) == 2


def test_simple_morphometry_is_the_first_phantom_bit_for_bit(tmp_path: Path) -> None:
    """Hashes of files written by the phantom before the published model (commit a037e0c)."""
    generate_dataset(
        tmp_path / "s", 2, img_size=32, seed=5, workers=1, progress=False, morphometry="simple"
    )
    expect = {
        "heights.json": "fcc5defb4201807d3fe5d1bafe6e0d8dcfb05f5a2b06a9e837663935d4192d16",
        "CT/phantom000_20.nii.gz": (
            "9452abd382527f249fa3e873a5a5e0cc442f6620d3017c7c14e11c09e0bd85dd"
        ),
        "vertebra_data.json": "72be36d13e4266c5f2c336f4a2ce15db99ce02e18a8cb539170aaf61ff257b43",
    }
    for name, digest in expect.items():
        assert hashlib.sha256((tmp_path / "s" / name).read_bytes()).hexdigest() == digest, name


def test_bad_morphometry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="morphometry"):
        generate_dataset(tmp_path / "x", 1, img_size=32, morphometry="fancy")
    assert set(PUBLISHED) >= set(SAMPLE_VERTEBRAE)
