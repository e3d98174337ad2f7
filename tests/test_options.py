"""Option parsing, the saved opt.json round trip, and parse-time errors."""

import json
from pathlib import Path

import pytest

from options.base_options import load_options
from options.test_options import TestOptions
from options.train_options import TrainOptions


def _train_opt(tmp_path, *extra):
    argv = [
        "--checkpoints_dir",
        str(tmp_path),
        "--name",
        "opts",
        "--gpu_ids",
        "-1",
        "--img_size",
        "64",
        *extra,
    ]
    return TrainOptions(argv).parse(save=True)


def test_opt_json_round_trip(tmp_path, capsys):
    opt = _train_opt(tmp_path, "--netG_type", "diffusion", "--lr", "0.001", "--seed", "7")
    saved = load_options(tmp_path / "opts" / "train_opt.json")
    for key in ("netG_type", "lr", "seed", "img_size", "name", "lambda_L1", "gan_mode"):
        assert saved[key] == getattr(opt, key), key
    assert saved["netG_type"] == "diffusion" and saved["lr"] == 0.001
    # generator- and dataset-specific flags were added by their hooks
    assert "snr_gamma" in saved and "vert_class" in saved
    text = (tmp_path / "opts" / "train_opt.txt").read_text()
    assert any("netG_type" in line and "diffusion" in line for line in text.splitlines())
    assert opt.device == "cpu" and opt.gpu_ids == []


def test_generator_flags_follow_the_generator_type(tmp_path):
    gan = _train_opt(tmp_path, "--netG_type", "gan")
    assert not hasattr(gan, "snr_gamma") and not hasattr(gan, "diffusion_bf16")
    with pytest.raises(SystemExit):
        _train_opt(tmp_path, "--netG_type", "gan", "--snr_gamma", "5")


def test_num_inference_steps_is_one_model_flag(tmp_path):
    """Defined once (the model's); None = the generator's own default (the diffusion default is
    already few-step, so validation uses it too: issue 12); a GAN accepts and ignores it."""
    assert _train_opt(tmp_path, "--netG_type", "gan").num_inference_steps is None
    assert _train_opt(tmp_path, "--netG_type", "diffusion").num_inference_steps is None
    opt = _train_opt(tmp_path, "--netG_type", "diffusion", "--num_inference_steps", "3")
    assert opt.num_inference_steps == 3
    assert _train_opt(tmp_path, "--netG_type", "gan", "--num_inference_steps", "3")


@pytest.mark.parametrize(
    "flag,value,choice",
    [
        ("--netG_type", "foo", "diffusion"),
        ("--gan_mode", "wgan", "hinge"),
        ("--dataset_mode", "nope", "vertebra"),
        ("--model", "cyclegan", "pix2pix"),
    ],
)
def test_unknown_choice_fails_at_parse_time_listing_choices(tmp_path, capsys, flag, value, choice):
    with pytest.raises(SystemExit) as exc:
        _train_opt(tmp_path, flag, value)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and value in err and choice in err


@pytest.mark.parametrize("bad", [["--img_size", "100"], ["--batch_size", "0"], ["--gpu_ids", "x"]])
def test_bad_values_are_rejected(tmp_path, bad):
    with pytest.raises((SystemExit, ValueError)):
        _train_opt(tmp_path, *bad)


def test_test_options_defaults(tmp_path):
    ckpt, results = tmp_path / "ckpt", tmp_path / "results"
    argv = ["--checkpoints_dir", str(ckpt), "--results_dir", str(results), "--name", "t"]
    opt = TestOptions([*argv, "--gpu_ids", "-1"]).parse(save=True)
    assert opt.isTrain is False and opt.phase == "test" and opt.epoch == "latest"
    assert opt.vert_class == "all" and opt.slice_mode == "all"
    # test options go beside the results: nothing is written into the checkpoint folder
    saved = json.loads((results / "t" / "test_latest" / "test_opt.json").read_text())
    assert saved["phase"] == "test"
    assert not ckpt.exists()


def test_bad_input_is_one_error_line_not_a_traceback(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "no_such_root"
    proc = subprocess.run(
        [
            sys.executable,
            "test.py",
            "--dataroot",
            str(missing),
            "--gpu_ids",
            "-1",
            "--checkpoints_dir",
            str(tmp_path),
            "--name",
            "x",
            "--img_size",
            "64",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and str(missing) in proc.stderr


def test_num_workers_counts_loader_processes_and_num_threads_is_not_a_shared_flag(tmp_path):
    """``--num_workers`` is the DataLoader's worker count; ``--num_threads`` (torch threads)
    belongs to the stand-alone tools only, so train.py refuses it instead of misreading it."""
    opt = _train_opt(tmp_path, "--num_workers", "3")
    assert opt.num_workers == 3 and not hasattr(opt, "num_threads")
    with pytest.raises(SystemExit):
        _train_opt(tmp_path, "--num_threads", "1")


def test_preset_healthivert_sets_every_choice_and_explicit_flags_win(tmp_path, capsys):
    from options.presets import PRESETS

    ours = _train_opt(tmp_path)
    orig = _train_opt(tmp_path, "--preset", "healthivert")
    for key, value in PRESETS["healthivert"].items():
        assert getattr(orig, key) == value, key
        assert getattr(ours, key) != value, f"{key}: our default equals the original's"
    assert (ours.l1_batch_norm, orig.l1_batch_norm) == (False, False)  # the bugs stay opt-in
    assert orig.edge_loss == "soft"
    mixed = _train_opt(tmp_path, "--preset", "healthivert", "--ndf", "32", "--gan_mode", "lsgan")
    assert (mixed.ndf, mixed.gan_mode, mixed.d3_region) == (32, "lsgan", "band_columns")
    # at test time only the flags that exist there are set; another generator's are skipped
    test = TestOptions(["--gpu_ids", "-1", "--preset", "healthivert"]).gather_options()
    assert (test.cam_injection, test.height_convention) == ("concat", "span")
    assert not hasattr(test, "gan_mode")
    diff = _train_opt(tmp_path, "--preset", "healthivert", "--netG_type", "diffusion")
    assert not hasattr(diff, "cam_injection") and diff.gan_mode == "vanilla"
    with pytest.raises(SystemExit):
        _train_opt(tmp_path, "--preset", "pix2pix")
