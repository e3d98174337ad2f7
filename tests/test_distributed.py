"""Distributed training: ``torchrun --standalone --nproc_per_node 2 train.py`` (gloo, CPU) trains
the same networks as one process with the same global batch, rank 0 alone writes, a stop signal
or a NaN loss on one rank stops both at the same step, and a 2-process checkpoint resumes with
1 process. Real torchrun subprocesses, tiny data (32 px, 4 training items, 4 steps).

The comparisons use the weights' distance to the one-process run relative to how far training
moved them: float reordering (gloo's sums, Adam dividing by tiny second moments) leaves
~1e-4; training without the gradient averaging gives ~1e-1 (checked here) and per-process
BatchNorm statistics ~3e-2 for the discriminators (``FAULT=local_batchnorm``)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_vertebra_root

import train as train_script
from data import create_dataset
from models import create_model
from options.train_options import TrainOptions
from util.checkpoint import load_checkpoint
from util.misc import seed_everything

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "train_with_faults.py"
SPLITS = {"train": {f"p{i}_20": 0 for i in range(1, 5)}, "val": {"p5_20": 0}, "test": {}}
TOL = 1e-3  # relative distance to the one-process weights (see the module docstring)


def _argv(root: Path, ckpt: Path, name: str, batch: int, *extra: str) -> list[str]:
    argv = ["--dataroot", str(root), "--checkpoints_dir", str(ckpt), "--name", name]
    argv += ["--netG_type", "gan", "--img_size", "32", "--gpu_ids", "-1", "--num_workers", "0"]
    argv += ["--n_epochs", "1", "--n_epochs_decay", "1", "--print_freq", "1", "--seed", "3"]
    return [*argv, "--batch_size", str(batch), *extra]


def _torchrun(argv: list[str], fault: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "FAULT": fault, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [*cmd, str(DRIVER), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
    )


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, batch 4 = 2 processes x 2; and the initial weights."""
    tmp = tmp_path_factory.mktemp("ddp")
    root = tmp / "root"
    write_vertebra_root(root, SPLITS, size=64, depth=16)
    ckpt = tmp / "ckpt"
    argv = _argv(root, ckpt, "one", 2)
    assert train_script.main(argv) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        opt = TrainOptions(argv).parse()
    seed_everything(opt.seed)  # as train.py builds the networks
    create_dataset(opt)
    init = {k: net.state_dict() for k, net in create_model(opt).networks().items()}
    return root, ckpt, load_checkpoint(ckpt / "one" / "latest_checkpoint.pth"), init


def _relative_distance(ckpt: dict, ref: dict, init: dict) -> dict[str, float]:
    """Per network: |w - w_ref| / |w_ref - w_init| over the trained float weights."""
    out = {}
    for net, weights in ref["networks"].items():
        num = den = 0.0
        for key, w_ref in weights.items():
            if not w_ref.is_floating_point() or "running" in key or key.endswith(("_u", "_v")):
                continue  # (BatchNorm statistics and spectral-norm vectors are not trained)
            num += (ckpt["networks"][net][key] - w_ref).double().pow(2).sum().item()
            den += (w_ref - init[net][key]).double().pow(2).sum().item()
        out[net] = (num / den) ** 0.5
    return out


def _log_losses(path: Path) -> list[list[float]]:
    lines = [x for x in path.read_text().splitlines() if x.startswith("(epoch")]
    return [
        [float(v) for v in re.findall(r": (-?[\d.]+(?:e-?\d+)?)", x.split(")")[1])] for x in lines
    ]


def test_two_processes_train_like_one_with_the_global_batch(one_process):
    root, ckpt, ref, init = one_process
    done = _torchrun(_argv(root, ckpt, "two", 1))
    assert done.returncode == 0, done.stdout + done.stderr
    run = ckpt / "two"
    two = load_checkpoint(run / "latest_checkpoint.pth")
    dist = _relative_distance(two, ref, init)
    assert max(dist.values()) < TOL, dist
    assert (two["epoch"], two["total_iters"], two["world_size"]) == (2, 8, 2)
    # rank 0 alone wrote: the same files as one process, one log header, the averaged losses
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (ckpt / "one").iterdir())
    assert (run / "loss_log.txt").read_text().count("Training Loss") == 1
    losses, ref_losses = (
        _log_losses(run / "loss_log.txt"),
        _log_losses(ckpt / "one" / "loss_log.txt"),
    )
    assert len(losses) == len(ref_losses) == 4
    assert torch.allclose(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-3, atol=1e-4)
    assert done.stdout.count("training two") == 1  # the other rank prints nothing

    # the test can fail: without averaging the gradients the two ranks train apart
    control = _torchrun(_argv(root, ckpt, "unsynced", 1), fault="no_grad_sync")
    assert control.returncode == 0, control.stdout + control.stderr
    unsynced = load_checkpoint(ckpt / "unsynced" / "latest_checkpoint.pth")
    assert min(_relative_distance(unsynced, ref, init).values()) > 30 * TOL


def test_stop_on_one_rank_stops_both_and_resumes_with_one_process(one_process):
    root, ckpt, ref, init = one_process
    # rank 1 alone gets SIGTERM in its third step (epoch 2): both ranks stop after that step
    done = _torchrun(_argv(root, ckpt, "stopped", 1), fault="sigterm_on_rank:1")
    assert done.returncode != 0 and "stopped by SIGTERM" in done.stderr, done.stderr
    # (torchrun reports the exit status 143 with a traceback of its own; the ranks have none)
    assert done.stderr.count("Traceback") <= 1 and "KeyboardInterrupt" not in done.stderr
    run = ckpt / "stopped"
    latest = load_checkpoint(run / "latest_checkpoint.pth")
    assert (latest["epoch"], latest["epoch_items"], latest["total_iters"]) == (1, 2, 6)
    assert not (run / "run.lock").exists()

    # resumed by one process with the global batch: the rest of epoch 2, as the reference
    argv = _argv(root, ckpt, "stopped", 2, "--continue_train")
    assert train_script.main(argv) == 0
    final = load_checkpoint(run / "latest_checkpoint.pth")
    assert (final["epoch"], final["total_iters"], final["world_size"]) == (2, 8, 1)
    dist = _relative_distance(final, ref, init)
    assert max(dist.values()) < TOL, dist


def test_nan_loss_on_one_rank_stops_both(one_process):
    root, ckpt, _, _ = one_process
    done = _torchrun(_argv(root, ckpt, "nan", 1), fault="nan_on_rank:1")
    err = done.stderr
    assert done.returncode != 0
    assert "the generator loss is nan" in err and "not finite on another process" in err, err
    assert "last good checkpoint" in err
    assert not (ckpt / "nan" / "latest_checkpoint.pth").exists()  # failed in epoch 1
