"""Atomic checkpoint writes, corrupt-file errors and RNG round trips."""

import argparse
import random

import numpy as np
import pytest
import torch

from models.base_model import BaseModel
from util import checkpoint as ckpt_mod
from util.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint


def test_save_then_load_round_trip(tmp_path):
    path = tmp_path / "latest_checkpoint.pth"
    save_checkpoint(path, {"epoch": 3, "w": torch.arange(4.0)})
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3
    assert torch.equal(ckpt["w"], torch.arange(4.0))
    assert ckpt["format"] == ckpt_mod.CHECKPOINT_FORMAT


def test_crash_mid_save_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest_checkpoint.pth"
    save_checkpoint(path, {"epoch": 1})
    good = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2})
    assert path.read_bytes() == good
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest_checkpoint.pth"]  # no temp left


def test_corrupt_and_missing_checkpoint_name_the_file(tmp_path):
    bad = tmp_path / "7_checkpoint.pth"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="7_checkpoint.pth"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os

    from util.io import write_text_atomic

    umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "index.html", "<html></html>")
    finally:
        os.umask(umask)
    assert (tmp_path / "index.html").stat().st_mode & 0o777 == 0o644


class _TinyModel(BaseModel):
    def __init__(self, opt):
        super().__init__(opt)
        self.model_names = ["G"]
        self.netG = torch.nn.Linear(2, 1)
        self.optimizers = [torch.optim.Adam(self.netG.parameters(), lr=opt.lr)]

    def set_input(self, batch):
        pass

    def forward(self):
        pass

    def optimize_parameters(self):
        pass


def _tiny_opt(tmp_path, n_epochs, continue_train):
    return argparse.Namespace(
        isTrain=True,
        device="cpu",
        checkpoints_dir=str(tmp_path),
        name="tiny",
        lr=1e-3,
        lr_policy="linear",
        n_epochs=n_epochs,
        n_epochs_decay=0,
        continue_train=continue_train,
        epoch="latest",
        verbose=False,
    )


def test_resume_with_a_longer_schedule_trains_at_the_new_rules_lr(tmp_path):
    model = _TinyModel(_tiny_opt(tmp_path, 1, False))
    model.setup(model.opt)
    model.epoch = 1
    model.optimizers[0].step()  # (no gradients: a no-op step, as in an epoch)
    assert model.update_learning_rate() == 0.0  # the 1-epoch schedule has ended
    model.save_networks(1)
    longer = _TinyModel(_tiny_opt(tmp_path, 3, True))
    longer.setup(longer.opt)
    assert longer.opt.epoch_count == 2
    assert longer.optimizers[0].param_groups[0]["lr"] == 1e-3  # epoch 2 of 3: full lr
