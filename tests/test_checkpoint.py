"""Atomic checkpoint writes, corrupt-file errors and RNG round trips."""

import random

import numpy as np
import pytest
import torch

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
