"""The published phantom's CT appearance stays close to the real CT it was set against
(``evaluation/appearance.py``; values measured on the TotalSegmentator example, 3 mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.appearance import LEVELS, TISSUES, nps_summary, phantom_appearance, real_appearance

TOTALSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg_example"
#: Measured with ``real_appearance`` on the TotalSegmentator example (L1-L5): tissue HU mean
#: and SD, muscle NPS integral (HU^2) and mean AP depth / height of the bodies.
REAL_HU = {"cancellous": (124, 57), "cortex": (254, 104), "disc": (86, 30), "muscle": (9, 49)}
REAL_NPS_INTEGRAL, REAL_DEPTH_HEIGHT = 798.0, 1.33
#: Tolerances: |phantom mean - real mean| in real SDs per tissue (the disc is the known gap:
#: the phantom's 3 mm disc voxels catch more bone), NPS integral ratio, depth / height.
MEAN_TOL_SD = {"cancellous": 0.5, "cortex": 0.5, "disc": 1.5, "muscle": 0.5}
NPS_RATIO, DEPTH_HEIGHT_TOL = (0.5, 2.0), 0.15


@pytest.fixture(scope="module")
def phantom() -> dict:
    return phantom_appearance((0, 1, 2), spacing_mm=3.0)


def test_tissue_hu_near_the_real_ct(phantom: dict) -> None:
    for t in TISSUES:
        mean, sd = REAL_HU[t]
        assert abs(phantom["hu"][t]["mean"] - mean) <= MEAN_TOL_SD[t] * sd, t
    # Tissue order of a CT: cortex > cancellous > disc > muscle.
    m = [phantom["hu"][t]["mean"] for t in ("cortex", "cancellous", "disc", "muscle")]
    assert m == sorted(m, reverse=True)


def test_noise_texture_and_shape_near_the_real_ct(phantom: dict) -> None:
    ratio = nps_summary(phantom["nps"])["integral"] / REAL_NPS_INTEGRAL
    assert NPS_RATIO[0] <= ratio <= NPS_RATIO[1]
    dh = np.mean([phantom["shape"][n]["depth_height"] for n in LEVELS])
    assert abs(dh - REAL_DEPTH_HEIGHT) <= DEPTH_HEIGHT_TOL


@pytest.mark.skipif(not TOTALSEG.is_dir(), reason="shared TotalSegmentator example absent")
def test_real_ct_values_are_the_stated_ones() -> None:
    real = real_appearance(TOTALSEG)
    for t in TISSUES:
        assert real["hu"][t]["mean"] == pytest.approx(REAL_HU[t][0], abs=1)
        assert real["hu"][t]["sd"] == pytest.approx(REAL_HU[t][1], abs=1)
    assert nps_summary(real["nps"])["integral"] == pytest.approx(REAL_NPS_INTEGRAL, rel=0.01)
    dh = np.mean([real["shape"][n]["depth_height"] for n in LEVELS])
    assert dh == pytest.approx(REAL_DEPTH_HEIGHT, abs=0.01)
