"""End-to-end smoke runs of train.py and test.py on a tiny synthetic data root (CPU)."""

import csv
import json

import matplotlib.pyplot as plt
import pytest
import torch

import test as test_script
import train as train_script
from util.checkpoint import load_checkpoint

SPLITS = {
    "train": {"p1_20": 0, "p2_20": 0, "p3_20": 0},
    "val": {"p4_20": 0},
    "test": {"p5_20": 0, "p6_20": 1},
}


@pytest.fixture
def root(vertebra_root_factory):
    return vertebra_root_factory(SPLITS, size=64, depth=16)


def _common(root, ckpt, netg, name):
    return [
        "--dataroot",
        str(root),
        "--checkpoints_dir",
        str(ckpt),
        "--name",
        name,
        "--netG_type",
        netg,
        "--img_size",
        "64",
        "--gpu_ids",
        "-1",
        "--num_workers",
        "0",
        "--batch_size",
        "2",
    ]


def _train(root, ckpt, netg, name, *extra):
    argv = _common(root, ckpt, netg, name) + [
        "--n_epochs",
        "1",
        "--n_epochs_decay",
        "0",
        "--print_freq",
        "1",
        *extra,
    ]
    return train_script.main(argv)


@pytest.mark.parametrize("netg", ["gan", "diffusion"])
def test_train_resume_and_test(root, tmp_path, netg):
    ckpt = tmp_path / "ckpt"
    assert _train(root, ckpt, netg, "smoke", "--eval_freq", "1", "--num_inference_steps", "2") == 0
    run = ckpt / "smoke"
    # validation: metrics in the log and the curves, and a best checkpoint by band SSIM
    assert "validation" in (run / "loss_log.txt").read_text()
    best = json.loads((run / "best_metrics.json").read_text())
    assert best["epoch"] == 1 and -1 <= best["ssim_patch"] <= 1
    assert load_checkpoint(run / "best_checkpoint.pth")["epoch"] == 1
    for name in (
        "1_checkpoint.pth",
        "latest_checkpoint.pth",
        "loss_log.txt",
        "train_opt.json",
        "web/index.html",
        "web/images/loss_curve.png",
    ):
        assert (run / name).is_file(), name
    # [0, 1] visuals (masks) are shown on the CT's scale: background black, not mid-grey
    mask_png = plt.imread(run / "web" / "images" / "epoch001_mask.png")
    assert mask_png.min() == 0.0 and mask_png.max() == 1.0
    first = load_checkpoint(run / "latest_checkpoint.pth")
    assert first["epoch"] == 1 and first["total_iters"] == 3
    assert set(first["networks"]) == {"G", "D"} and len(first["optimizers"]) == 2
    assert ("ema" in first["extra"]) == (netg == "diffusion")
    assert "G_L1" in (run / "loss_log.txt").read_text()

    # resume: epoch 2 starts from the saved state and continues the counters
    assert _train(root, ckpt, netg, "smoke", "--continue_train", "--n_epochs", "2") == 0
    second = load_checkpoint(run / "latest_checkpoint.pth")
    assert second["epoch"] == 2 and second["total_iters"] == 6
    assert (run / "2_checkpoint.pth").is_file()
    changed = [
        not torch.equal(first["networks"]["G"][k], second["networks"]["G"][k])
        for k in first["networks"]["G"]
    ]
    assert any(changed)

    results = tmp_path / "results"
    extra = ["--num_inference_steps", "3"] if netg == "diffusion" else []
    argv = _common(root, ckpt, netg, "smoke") + ["--results_dir", str(results), *extra]
    assert test_script.main(argv) == 0
    out = results / "smoke" / "test_latest"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and {
        "id",
        "slice_index",
        "ssim_patch",
        "psnr_patch",
        "dice",
        "rhdr",
        "netG_type",
        "steps",
    } <= set(rows[0])
    assert {r["id"] for r in rows} == {"p5_20", "p6_20"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_slices"] == len(rows) and summary["netG_type"] == netg
    assert summary["metrics"]["ssim_patch"]["count"] == len(rows)
    html = (out / "index.html").read_text()
    assert "p5_20_output.png" in html and (out / "images" / "p5_20_output.png").is_file()

    # the best checkpoint by validation loads in test.py
    assert test_script.main(argv + ["--epoch", "best"]) == 0
    best_summary = json.loads((results / "smoke" / "test_best" / "summary.json").read_text())
    assert best_summary["checkpoint_epoch"] == 1


def test_nan_loss_stops_training_and_keeps_last_checkpoint(root, tmp_path, capsys, monkeypatch):
    import models.pix2pix_model as pix2pix

    ckpt = tmp_path / "ckpt"
    assert _train(root, ckpt, "gan", "nan") == 0
    good = (ckpt / "nan" / "latest_checkpoint.pth").read_bytes()
    # (a NaN weight on the command line is refused before training: the loss itself turns NaN)
    l1 = pix2pix.two_stage_l1_loss
    monkeypatch.setattr(pix2pix, "two_stage_l1_loss", lambda *a, **k: l1(*a, **k) * float("nan"))
    code = _train(root, ckpt, "gan", "nan", "--continue_train", "--n_epochs", "2")
    assert code == 1
    err = capsys.readouterr().err
    assert "nan" in err and "last good checkpoint" in err and str(ckpt / "nan") in err
    assert (ckpt / "nan" / "latest_checkpoint.pth").read_bytes() == good
    kept = load_checkpoint(ckpt / "nan" / "latest_checkpoint.pth")
    assert kept["epoch"] == 1 and kept["epoch_items"] == 0  # still a whole, usable checkpoint
    assert all(torch.isfinite(v).all() for v in kept["networks"]["G"].values())
    assert not (ckpt / "nan" / "run.lock").exists()  # the lock is released


def test_train_and_test_with_the_healthivert_preset(root, tmp_path):
    """--preset healthivert (with the two opt-in bugs) trains and tests end to end; test.py
    needs the preset too (it builds the generator with the original's CAM channels)."""
    ckpt = tmp_path / "ckpt"
    preset = ["--preset", "healthivert"]
    bugs = ["--l1_batch_norm", "--edge_loss", "original"]
    assert _train(root, ckpt, "gan", "hv", *preset, *bugs) == 0
    saved = json.loads((ckpt / "hv" / "train_opt.json").read_text())
    assert (saved["preset"], saved["d3_region"], saved["cam_injection"]) == (
        "healthivert",
        "band_columns",
        "concat",
    )
    results = tmp_path / "results"
    argv = _common(root, ckpt, "gan", "hv") + ["--results_dir", str(results), *preset]
    assert test_script.main(argv) == 0
    assert (results / "hv" / "test_latest" / "summary.json").is_file()
