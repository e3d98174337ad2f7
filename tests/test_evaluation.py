"""Evaluation helpers: the synthesised mask's height, the trivial fill baseline, the table."""

import json

import numpy as np
import pytest
import torch

from evaluation.compare import comparison_report, format_table, table_rows
from evaluation.slice_eval import fill_baseline, hf_energy, mask_height, pooled_hf_ratio
from util.geometry import band_rows


def test_mask_height_uses_the_largest_part():
    mask = np.zeros((20, 10), bool)
    assert mask_height(mask) == 0.0
    mask[5:12, 2:8] = True  # the vertebra: 7 rows
    mask[17, 0] = True  # a stray pixel far below must not stretch it
    assert mask_height(mask) == 7.0


def test_hf_energy_is_the_band_laplacian_energy_and_pools_over_slices():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-1, 1, (32, 32))
    flat = np.zeros((32, 32))
    assert hf_energy(flat, 10, 20) == 0.0
    assert hf_energy(truth, 10, 20) > 0.5
    # Only rows x1 + 1 .. x2 - 1 count: noise outside them changes nothing.
    noisy_outside = truth.copy()
    noisy_outside[:9] = rng.uniform(-1, 1, (9, 32))
    assert hf_energy(noisy_outside, 10, 20) == pytest.approx(hf_energy(truth, 10, 20))
    # A blurred copy has less, a sharper one more high-frequency energy than the truth.
    assert hf_energy(0.5 * truth, 10, 20) == pytest.approx(0.25 * hf_energy(truth, 10, 20))
    rows = [
        {"hf_energy": 1.0, "fill_hf_energy": 0.0, "hf_energy_truth": 2.0},
        {"hf_energy": 3.0, "fill_hf_energy": 1.0, "hf_energy_truth": 2.0},
    ]
    assert pooled_hf_ratio(rows) == 1.0 and pooled_hf_ratio(rows, "fill_") == 0.25


def test_fill_baseline_fills_the_band_with_the_mean_of_its_neighbour_rows():
    size = 64
    b0, b1 = band_rows(size)  # 10 rows at 64 px
    a = torch.zeros(1, 1, size, size)
    a[..., b0 - 1, :] = 0.2
    a[..., b1, :] = 0.6
    mask = torch.zeros_like(a)
    mask[..., b0:b1, :] = 1
    out = fill_baseline(a, mask, torch.tensor([10.0]), b1 - b0)  # Ht = h2: no shift
    assert torch.allclose(out[..., b0:b1, :], torch.full((1, 1, b1 - b0, size), 0.4))
    assert torch.equal(out[..., : b0 - 1, :], a[..., : b0 - 1, :])


def test_compare_results_table(tmp_path, capsys, run_script):
    def summary(netg, ssim):
        m = {
            k: {"mean": v}
            for k, v in {
                "ssim_patch": ssim,
                "psnr_patch": 20.0,
                "l1_patch": 0.1,
                "dice": 0.8,
                "rhdr": 5.0,
                "rhdr_head": 4.0,
                "fill_ssim_patch": 0.6,
                "fill_psnr_patch": 19.0,
                "fill_l1_patch": 0.2,
                "const_rhdr": 9.0,
            }.items()
        }
        return {
            "netG_type": netg,
            "steps": 10 if netg == "diffusion" else None,
            "seconds_per_slice": 0.01,
            "metrics": m,
        }

    rows = table_rows([summary("gan", 0.7), summary("diffusion", 0.8)])
    assert [r[0] for r in rows] == [
        "gan",
        "diffusion (10 steps)",
        "trivial fill",
        "constant height",
    ]
    assert rows[2][1] == {"ssim_patch": 0.6, "psnr_patch": 19.0, "l1_patch": 0.2}
    text = format_table(rows)
    assert "0.700" in text and "0.800" in text and "9.00" in text
    for name, s in (("a", summary("gan", 0.7)), ("b", summary("diffusion", 0.8))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(s))
    assert run_script("compare_results", [tmp_path / "a", tmp_path / "b"]) == 0
    assert "trivial fill" in capsys.readouterr().out
    assert run_script("compare_results", [tmp_path / "missing"]) == 2
    assert capsys.readouterr().err.startswith("error: no summary.json")


def test_compare_results_grading_column(tmp_path, capsys, run_script):
    summary = {
        "netG_type": "gan",
        "steps": None,
        "seconds_per_slice": 0.01,
        "metrics": {"ssim_patch": {"mean": 0.5}, "fill_ssim_patch": {"mean": 0.6}},
    }
    grading = {
        "phase": "test",
        "n": 12,
        "grades": {"0": 8, "1": 2, "2": 2},
        "rhlv": {"macro_f1": 0.812, "folds": 2},
        "baseline": {"macro_f1": 0.634, "folds": 2},
        "oracle_measured": {"macro_f1": 0.9, "folds": 2},
    }
    rows = table_rows([summary], [grading])
    assert rows[0][1]["grading_f1"] == 0.812
    assert rows[-2] == ("no synthesis (nb ratio)", {"grading_f1": 0.634})
    assert rows[-1] == ("healthy truth (oracle)", {"grading_f1": 0.9})
    with pytest.raises(ValueError, match="1 result folders"):
        table_rows([summary], [grading, grading])
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "grading").mkdir()
    (tmp_path / "grading" / "grading.json").write_text(json.dumps(grading))
    assert run_script("compare_results", [tmp_path / "res", "--grading", tmp_path / "grading"]) == 0
    out = capsys.readouterr().out
    assert "0.812" in out and "0.634" in out and "2-fold" in out and "12 vertebrae" in out
    assert run_script("compare_results", [tmp_path / "res", "--grading", tmp_path / "nowhere"]) == 2
    # a file without a needed key is one clear error, not a KeyError traceback
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "summary.json").write_text(json.dumps({"netG_type": "gan"}))
    with pytest.raises(ValueError, match="'metrics'"):
        comparison_report([tmp_path / "bad"])
    (tmp_path / "grading" / "grading.json").write_text(json.dumps({"phase": "test"}))
    with pytest.raises(ValueError, match="no 'rhlv' result"):
        comparison_report([tmp_path / "res"], [tmp_path / "grading"])
