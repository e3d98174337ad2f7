"""Exact resume: a training killed (SIGKILL at random points, mid-save, between the epoch file
and ``latest``) or stopped (SIGTERM/SIGINT) and resumed with ``--continue_train`` ends with
the same bytes of weights, optimiser states, learning rates, EMA, counters and RNG states as an
uninterrupted run, for both generator types. Real subprocesses, tiny data (32 px)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from util.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "train_with_faults.py"
SPLITS = {"train": {"p1_20": 0, "p2_20": 0, "p3_20": 0}, "val": {"p4_20": 0}, "test": {}}
EPOCHS = 3


def _argv(root: Path, ckpt: Path, netg: str, name: str, *extra: str) -> list[str]:
    argv = ["--dataroot", str(root), "--checkpoints_dir", str(ckpt), "--name", name]
    argv += ["--netG_type", netg, "--img_size", "32", "--gpu_ids", "-1", "--batch_size", "2"]
    argv += ["--n_epochs", "2", "--n_epochs_decay", str(EPOCHS - 2), "--save_epoch_freq", "1"]
    argv += ["--print_freq", "1", "--num_workers", "0", "--seed", "3"]
    if netg == "diffusion":  # validation too: own noise generators, keeps a best checkpoint
        argv += ["--eval_freq", "2", "--num_inference_steps", "2", "--eval_max_batches", "1"]
    return [*argv, *extra]


def _start(argv: list[str], fault: str = "") -> subprocess.Popen:
    env = {**os.environ, "FAULT": fault, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen(
        [sys.executable, str(DRIVER), *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        encoding="utf-8",  # (progress bars), whatever locale an earlier test left
        errors="replace",
    )


def _run(argv: list[str], fault: str = "") -> tuple[int, str]:
    proc = _start(argv, fault)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def _wait_for(proc: subprocess.Popen, marker: str) -> str:
    """Read the output until a line holds ``marker`` (the process keeps running)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            break
    return "".join(seen)


def _assert_same(a, b, where: str = "checkpoint") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _state(path: Path) -> dict:
    """Everything of a checkpoint that training depends on (not the options: the resumed
    runs differ in --continue_train)."""
    ckpt = load_checkpoint(path)
    return {k: v for k, v in ckpt.items() if k != "options"}


@pytest.mark.parametrize("netg,stop_signal", [("gan", "SIGTERM"), ("diffusion", "SIGINT")])
def test_killed_and_resumed_run_is_bit_identical(
    vertebra_root_factory, tmp_path, netg, stop_signal
):
    root = vertebra_root_factory(SPLITS, size=64, depth=16)
    ckpt = tmp_path / "ckpt"
    proc = _start(_argv(root, ckpt, netg, "straight"))
    started = _wait_for(proc, "training straight")
    t0 = time.perf_counter()
    out, _ = proc.communicate(timeout=600)
    out = started + out
    train_s = time.perf_counter() - t0  # the training loop, without the start-up
    assert proc.returncode == 0, out
    run = ckpt / "broken"
    resume = _argv(root, ckpt, netg, "broken", "--continue_train")
    log = []

    # 1. killed while writing its first checkpoint: a temporary file is left, no checkpoint
    code, out = _run(_argv(root, ckpt, netg, "broken"), fault="kill_in_save:1")
    assert code == -signal.SIGKILL, out
    temps = [p.name for p in run.rglob(".*.tmp")]
    assert temps and not (run / "latest_checkpoint.pth").exists()
    log.append(f"kill mid-save of checkpoint 1: temp files {temps}")

    # 2. requeued with --continue_train: no checkpoint yet, so it starts over; the orphaned
    # temporary file is removed; killed after the epoch file, before latest
    code, out = _run(resume, fault="kill_after_save:1")
    assert code == -signal.SIGKILL, out
    assert "holds no latest_checkpoint.pth yet" in out and "removed 1 temporary file" in out
    assert (run / "1_checkpoint.pth").exists() and not (run / "latest_checkpoint.pth").exists()
    assert not list(run.rglob(".*.tmp"))
    log.append("kill between 1_checkpoint.pth and latest")

    # 3. resumed from 1_checkpoint.pth (newer than the missing latest); a stop signal in
    # epoch 2: latest saved (mid-epoch when it came mid-epoch), clean exit
    proc = _start(resume)
    assert "resuming from 1_checkpoint.pth" in _wait_for(proc, "(epoch: 2")
    proc.send_signal(getattr(signal, stop_signal))
    out, _ = proc.communicate(timeout=600)
    expected = 128 + getattr(signal, stop_signal)
    assert proc.returncode in (expected, 0), out
    if proc.returncode:
        assert f"stopped by {stop_signal}" in out and "Traceback" not in out, out
        stopped = load_checkpoint(run / "latest_checkpoint.pth")
        log.append(f"{stop_signal} at epoch {stopped['epoch']} + {stopped['epoch_items']} samples")
    assert not (run / "run.lock").exists()

    # 4. SIGKILL at random moments of the training loop until a run finishes
    rng = random.Random(f"{netg}-kills")
    for attempt in range(6):
        proc = _start(resume)
        _wait_for(proc, "training broken")
        delay = rng.uniform(0.0, 0.9 * train_s)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
        out, _ = proc.communicate(timeout=600)
        log.append(f"attempt {attempt}: SIGKILL after {delay:.1f}s -> exit {proc.returncode}")
        if proc.returncode == 0 or "nothing to do" in out:
            break
    code, out = _run(resume)  # finishes the run, or has nothing left to do
    assert code == 0, out
    print("\n".join(log))

    for label in [*range(1, EPOCHS + 1), "latest"]:
        name = f"{label}_checkpoint.pth"
        _assert_same(_state(ckpt / "straight" / name), _state(run / name), name)
    final = load_checkpoint(run / "latest_checkpoint.pth")
    assert final["epoch"] == EPOCHS and final["epoch_items"] == 0
    assert not list(run.rglob(".*.tmp")) and not (run / "run.lock").exists()
