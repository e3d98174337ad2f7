"""The HTML report is written with no visdom server; a dead server warns once."""

import argparse

import torch

from util.visualizer import Visualizer, validation_families


def _opt(tmp_path, display_id=0, continue_train=False):
    return argparse.Namespace(
        name="vis",
        continue_train=continue_train,
        checkpoints_dir=str(tmp_path),
        isTrain=True,
        no_html=False,
        display_id=display_id,
        display_server="http://127.0.0.1",
        display_port=1,
        display_env="main",
    )


def test_html_report_and_loss_log_without_visdom(tmp_path, capsys):
    vis = Visualizer(_opt(tmp_path, display_id=1))  # port 1: nothing listens there
    out = capsys.readouterr().out
    assert out.count("warning") == 1 and "live display is off" in out
    visuals = {"real_A": torch.rand(2, 1, 16, 16) * 2 - 1, "fake_B": torch.zeros(2, 1, 16, 16)}
    for epoch in (1, 2):
        vis.print_current_losses(epoch, 4, {"G_L1": 1.5 / epoch, "D_real": 0.25}, 0.1, 0.01)
        vis.plot_current_losses(epoch - 0.5, {"G_L1": 1.5 / epoch, "D_real": 0.25})
        html = vis.display_current_results(visuals, epoch)
    text = html.read_text()
    assert text.index("epoch [2]") < text.index("epoch [1]")  # newest first
    for name in ("epoch001_real_A.png", "epoch002_fake_B.png", "loss_curve.png"):
        assert name in text and (tmp_path / "vis/web/images" / name).is_file()
    log = (tmp_path / "vis/loss_log.txt").read_text()
    assert "G_L1: 1.5000" in log and "G_L1: 0.7500" in log


def test_history_survives_a_new_visualizer(tmp_path):
    vis = Visualizer(_opt(tmp_path))
    vis.plot_current_losses(0.5, {"a": 1.0})
    vis.display_current_results({"x": torch.zeros(1, 1, 8, 8)}, 1)
    again = Visualizer(_opt(tmp_path, continue_train=True))
    assert again.history["x"] == [0.5]
    assert Visualizer(_opt(tmp_path)).history == {}  # a new run does not inherit old curves


def test_validation_metrics_are_plotted_by_family(tmp_path):
    keys = [
        "val_ssim_patch",
        "val_psnr_patch",
        "val_rhdr",
        "val_rhdr_head",
        "val_fill_ssim_patch",
        "val_const_rhdr",
    ]
    assert validation_families(keys) == {
        "ssim": ["val_ssim_patch", "val_fill_ssim_patch"],
        "psnr": ["val_psnr_patch"],
        "rhdr": ["val_rhdr", "val_rhdr_head", "val_const_rhdr"],
    }
    vis = Visualizer(_opt(tmp_path))
    vis.plot_current_losses(0.5, {"G_L1": 1.0})
    for epoch in (0, 1):
        vis.log_metrics(epoch, {k: 0.5 + epoch for k in keys})
    assert vis.save_loss_curve().is_file()
