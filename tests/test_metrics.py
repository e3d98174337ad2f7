"""util/metrics.py on hand-made arrays with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from util import metrics as M


def _ramp(h: int = 32, w: int = 40) -> np.ndarray:
    """(h, w) image spanning exactly 0..255."""
    return np.linspace(0.0, 255.0, h * w).reshape(h, w)


def _ssim_oracle(x: np.ndarray, y: np.ndarray, win: int, rng: float) -> float:
    """Independent SSIM (Wang et al. 2004, uniform window, sample covariance, borders cropped)."""
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    n = win * win
    cov = n / (n - 1)
    mx, my = uniform_filter(x, win), uniform_filter(y, win)
    vx = cov * (uniform_filter(x * x, win) - mx * mx)
    vy = cov * (uniform_filter(y * y, win) - my * my)
    vxy = cov * (uniform_filter(x * y, win) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    return float(s[p:-p, p:-p].mean())


def test_identical_images_ssim_one_psnr_inf():
    gt = _ramp()
    assert M.ssim(gt.copy(), gt) == pytest.approx(1.0)
    assert M.psnr(gt.copy(), gt) == math.inf


def test_constant_offset_gives_known_psnr():
    gt = _ramp()
    # MSE = 25, data range 255 -> 10 log10(255^2 / 25) = 20 log10(51)
    assert M.psnr(gt + 5.0, gt) == pytest.approx(20 * math.log10(51.0), abs=1e-9)
    # explicit range: [-1, 1] convention, R = 2, MSE = 0.01 -> 10 log10(400)
    assert M.psnr(gt / 255 + 0.1, gt / 255, data_range=2.0) == pytest.approx(
        10 * math.log10(400.0), abs=1e-9
    )


def test_ssim_matches_independent_formula():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 255, size=(24, 30))
    pred = gt + rng.normal(0, 20, size=gt.shape)
    expected = _ssim_oracle(gt, pred, 7, float(gt.max() - gt.min()))
    assert M.ssim(pred, gt) == pytest.approx(expected, abs=1e-6)
    assert 0.5 < M.ssim(pred, gt) < 0.99


def test_band_variants_pick_the_right_rows():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 255, size=(32, 32))
    pred = gt.copy()
    pred[:8] += 30.0  # error only above the band
    rows = (10, 20)
    assert M.psnr(pred, gt, rows=rows) == math.inf
    assert M.ssim(pred, gt, rows=rows) == pytest.approx(1.0)
    assert M.psnr(pred, gt) < 40
    # error inside the band only: band PSNR uses the band's own range and MSE
    pred2 = gt.copy()
    pred2[12:14] += 10.0
    band = gt[10:20]
    mse = (2 * 32 * 100.0) / band.size
    expected = 10 * math.log10((band.max() - band.min()) ** 2 / mse)
    assert M.psnr(pred2, gt, rows=rows) == pytest.approx(expected, abs=1e-9)


def test_ssim_small_band_window():
    assert M.ssim_win_size(100, 100) == 7
    assert M.ssim_win_size(5, 100) == 5
    assert M.ssim_win_size(4, 100) == 3
    assert M.ssim_win_size(6, 3) == 3
    with pytest.raises(ValueError, match="3 x 3"):
        M.ssim_win_size(2, 50)
    rng = np.random.default_rng(2)
    gt = rng.uniform(0, 1, size=(20, 30))
    pred = gt + rng.normal(0, 0.1, size=gt.shape)
    band = (8, 12)  # 4 rows -> window 3
    got = M.ssim(pred, gt, rows=band)
    g, p = gt[8:12], pred[8:12]
    assert got == pytest.approx(_ssim_oracle(g, p, 3, float(g.max() - g.min())), abs=1e-6)


def test_constant_ground_truth_is_explicit():
    gt = np.full((16, 16), 3.0)
    with pytest.raises(ValueError, match="constant"):
        M.psnr(gt + 1, gt)
    with pytest.raises(ValueError, match="constant"):
        M.ssim(gt + 1, gt)
    assert M.psnr(gt + 1, gt, data_range=10.0) == pytest.approx(20.0)
    res = M.slice_metrics(gt + 1, gt, gt > 0, gt > 0, (4, 12))
    assert math.isnan(res["psnr_global"]) and math.isnan(res["ssim_patch"])
    with pytest.raises(ValueError, match="rows"):
        M.psnr(gt, gt, rows=(10, 40), data_range=1.0)


def test_dice_iou_rvd_known_overlaps():
    gt = np.zeros(10, dtype=bool)
    gt[0:6] = True  # 6 voxels
    pred = np.zeros(10)
    pred[3:7] = 0.9  # 4 voxels (probabilities, binarised at 0.5), overlap 3
    assert M.dice(pred, gt) == pytest.approx(2 * 3 / 10)
    assert M.iou(pred, gt) == pytest.approx(3 / 7)
    assert M.relative_volume_difference(pred, gt) == pytest.approx(-2 / 6)
    empty = np.zeros(10, dtype=bool)
    assert M.dice(empty, empty) == 1.0 and M.iou(empty, empty) == 1.0
    assert M.dice(empty, gt) == 0.0 and M.iou(gt, empty) == 0.0
    assert M.relative_volume_difference(empty, empty) == 0.0
    assert M.relative_volume_difference(gt, empty) == math.inf
    with pytest.raises(ValueError):
        M.dice(np.zeros(3), np.zeros(4))


def test_rhdr_values_and_errors():
    assert M.rhdr(22.0, 20.0) == pytest.approx(10.0)
    got = M.rhdr(np.array([18.0, 20.0, 25.0]), np.array([20.0, 20.0, 20.0]))
    np.testing.assert_allclose(got, [10.0, 0.0, 25.0])
    with pytest.raises(ValueError, match="> 0"):
        M.rhdr([1.0, 2.0], [1.0, 0.0])


def test_slice_metrics_perfect_and_summarise():
    gt = _ramp(16, 16)
    mask = np.zeros((16, 16), dtype=bool)
    mask[5:11, 3:12] = True
    res = M.slice_metrics(gt, gt, mask, mask, (5, 11), h_pred=6.0, h_gt=6.0)
    assert set(res) == {
        "ssim_global",
        "psnr_global",
        "ssim_patch",
        "psnr_patch",
        "dice",
        "iou",
        "rvd",
        "rhdr",
    }
    assert res["ssim_global"] == pytest.approx(1.0) and res["psnr_patch"] == math.inf
    assert res["dice"] == 1.0 and res["rvd"] == 0.0 and res["rhdr"] == 0.0
    assert "rhdr" not in M.slice_metrics(gt, gt, mask, mask, (5, 11))

    rows = [
        {"id": "a", "ssim": 0.5, "psnr": math.inf, "ok": True},
        {"id": "b", "ssim": 1.0, "psnr": 30.0, "ok": False},
    ]
    s = M.summarise(rows)
    assert set(s) == {"ssim", "psnr"}
    assert s["ssim"] == {"mean": 0.75, "std": 0.25, "count": 2, "n_undefined": 0}
    assert s["psnr"]["mean"] == 30.0 and s["psnr"]["count"] == 1
    assert s["psnr"]["n_undefined"] == 1
