"""Train a model.

Example (CPU, the embedded phantom data set):
    python scripts/make_phantom.py --out datasets/phantom --n_patients 20 --img_size 64
    python train.py --dataroot datasets/phantom --name gan_smoke --netG_type gan \
        --img_size 64 --n_epochs 1 --n_epochs_decay 0 --gpu_ids -1

Checkpoints, opt.txt/opt.json, loss_log.txt and web/index.html go to
checkpoints/<name>/. ``--continue_train`` resumes networks, optimisers, schedulers, EMA,
counters and RNG states from ``--epoch`` (default latest).

Several processes (docs/SCALING.md): ``torchrun --standalone --nproc_per_node N train.py ...``
trains one model on N shares of every batch (``--batch_size`` per process: the global batch
is N times it). Rank 0 alone takes the run directory's lock, validates and writes the
checkpoints, the loss log and the report; the logged losses are the means over the ranks; a
stop signal or a NaN loss on any rank stops every rank at the same iteration.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from data import create_dataset, find_dataset, set_epoch
from evaluation.slice_eval import evaluate
from models import create_model
from options.train_options import TrainOptions
from util.cli import run_main
from util.distributed import (
    World,
    all_sum,
    any_rank,
    broadcast_object,
    entered_on_main,
    process_group,
    rank_device,
    rank_seed,
    world_from_env,
)
from util.io import write_json_atomic
from util.metrics import summarise
from util.misc import seed_everything
from util.run_dir import LOCK_FILE, RunDir, StopSignals
from util.visualizer import Visualizer

LATEST = "latest_checkpoint.pth"


def check_finite(losses: dict[str, float], epoch: int, iters: int) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch}, iteration {iters}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
        )


#: Validation metrics logged beside the losses (band SSIM picks the best checkpoint).
VALIDATION_KEYS = (
    "ssim_patch",
    "psnr_patch",
    "l1_patch",
    "dice",
    "rhdr",
    "rhdr_head",
    "fill_ssim_patch",
    "fill_l1_patch",
    "hf_ratio",
    "const_rhdr",
)


class Validator:
    """``--eval_freq``: evaluate the normal vertebrae of the val split (the inference pipeline
    with ``--num_inference_steps``), log the metrics and keep ``best_checkpoint.pth`` by band
    SSIM."""

    def __init__(self, opt, model) -> None:
        val_opt = copy.copy(opt)
        val_opt.phase, val_opt.isTrain = "val", False
        val_opt.slice_mode, val_opt.vert_class = "all", "normal"
        self.dataset = find_dataset(opt.dataset_mode).from_opt(val_opt)
        self.model, self.opt = model, opt
        self.best_path = model.save_dir / "best_metrics.json"
        self.best = -math.inf
        if opt.continue_train and self.best_path.is_file():
            self.best = json.loads(self.best_path.read_text())["ssim_patch"]

    def __call__(self, epoch: int, keep_best: bool = True) -> dict[str, float]:
        result = evaluate(
            self.model,
            self.dataset,
            batch_size=self.opt.batch_size,
            num_workers=0,
            max_batches=self.opt.eval_max_batches,
            seed=self.opt.seed,
            desc=f"val epoch {epoch}",
        )
        self.model.train()
        means = {k: v["mean"] for k, v in summarise(result.rows).items() if k in VALIDATION_KEYS}
        tqdm.write(
            f"validation epoch {epoch}: " + "  ".join(f"{k} {v:.4g}" for k, v in means.items())
        )
        if keep_best and means.get("ssim_patch", -math.inf) > self.best:
            self.best = means["ssim_patch"]
            self.model.save_networks("best", also_latest=False)
            write_json_atomic(self.best_path, {"epoch": epoch, **means})
        return means


class _Silent:
    """The visualizer of the ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _sync(stop: StopSignals, values: Sequence[float] = ()) -> list[float]:
    """``values`` summed over the processes, and their stop signals shared: one received by
    any process stops all of them at the same point (one process: ``values`` as given)."""
    flags = [float(stop.exit_code == 128 + sig) for sig in StopSignals.SIGNALS]
    summed = all_sum([*values, *flags])
    for sig, count in zip(StopSignals.SIGNALS, summed[len(values) :], strict=True):
        if count > 0:
            stop.note(sig)
    return summed[: len(values)]


def _save(model, world: World, label: str | int) -> Path:
    """Rank 0 writes the checkpoint ``label``; every rank gets its path."""
    return model.save_networks(label) if world.is_main else model.checkpoint_path(label)


def train(
    opt,
    options: TrainOptions | None = None,
    stop: StopSignals | None = None,
    world: World | None = None,
) -> int:
    """Train ``opt.name`` from ``opt.epoch_count`` (or the resumed checkpoint) to the end of
    the schedule. Call it inside the run directory's lock (:func:`main`); ``options`` writes
    train_opt.txt/json once the checkpoint (if any) has been checked, ``stop`` (SIGTERM/SIGINT)
    ends the run after saving ``latest``: a resumed run continues bit-identically. ``world``:
    this process's rank among those training together (their process group is up)."""
    stop = stop or StopSignals()
    world = world or World()
    seed_everything(opt.seed)  # the same initial weights on every rank
    loader = create_dataset(opt, world.rank, world.size)
    model = create_model(opt)
    if world.distributed:
        model.distribute(world.size)
    model.setup(opt)  # sets opt.epoch_count when resuming
    if world.rank > 0:  # each rank its own random stream (diffusion timesteps and noise)
        seed_everything(rank_seed(opt.seed, world.rank, model.total_iters))
    if options is not None and world.is_main:
        options.save(opt, model.save_dir)
    visualizer = Visualizer(opt) if world.is_main else _Silent()
    # on rank 0 alone: the metrics and the best checkpoint are those of one process, for any
    # number of processes (same slices, same seed); the others wait at the next collective
    validator = Validator(opt, model) if opt.eval_freq > 0 and world.is_main else None
    last_epoch = opt.n_epochs + opt.n_epochs_decay
    if opt.epoch_count > last_epoch:
        print(f"nothing to do: checkpoint is at epoch {opt.epoch_count - 1} of {last_epoch}")
        return 0
    procs = f", {world.size} processes" if world.distributed else ""
    print(
        f"training {opt.name}: epochs {opt.epoch_count}..{last_epoch}, "
        f"{len(loader.dataset)} items per epoch, device {opt.device}{procs}"
    )

    if validator is not None and opt.epoch_count == 1 and model.epoch_items == 0:
        # the untrained model's scores: the starting point of the validation curve
        visualizer.log_metrics(0, {f"val_{k}": v for k, v in validator(0, keep_best=False).items()})
    _sync(stop)
    if stop.requested:  # while setting up: nothing trained here, nothing to save
        print(f"stopped by {stop.signal_name} before training", file=sys.stderr)
        return stop.exit_code
    train_start = time.time()
    epochs = tqdm(
        range(opt.epoch_count, last_epoch + 1),
        desc="epochs",
        unit="epoch",
        initial=opt.epoch_count - 1,
        total=last_epoch,
        dynamic_ncols=True,
        disable=not world.is_main,
    )
    for epoch in epochs:
        if not train_epoch(opt, model, loader, visualizer, epoch, stop, world):
            return _stopped(stop, model, _save(model, world, "latest"))
        model.epoch, model.epoch_items = epoch, 0
        lr = model.update_learning_rate()  # before saving: the checkpoint holds the next lr
        if validator is not None and (epoch % opt.eval_freq == 0 or epoch == last_epoch):
            metrics = validator(epoch)
            visualizer.log_metrics(epoch, {f"val_{k}": v for k, v in metrics.items()})
        label = epoch if epoch % opt.save_epoch_freq == 0 or epoch == last_epoch else "latest"
        _save(model, world, label)
        epochs.set_postfix(lr=f"{lr:.2e}")
        minutes = (time.time() - train_start) / 60.0
        over = opt.max_train_minutes > 0 and minutes >= opt.max_train_minutes
        over = _sync(stop, [float(over)])[0] > 0  # (rank 0's clock may be ahead)
        if stop.requested and epoch < last_epoch:
            return _stopped(stop, model, model.checkpoint_path("latest"))
        if over and epoch < last_epoch:
            message = (
                f"stopped after epoch {epoch} of {last_epoch}: {minutes:.2f} min of training "
                f"reached --max_train_minutes {opt.max_train_minutes:g}; checkpoint 'latest' saved"
            )
            visualizer.print_message(message)
            break
    print(f"done: checkpoints and report in {model.save_dir}")
    return 0


def train_epoch(
    opt, model, loader, visualizer, epoch: int, stop: StopSignals, world: World | None = None
) -> bool:
    """Train one epoch (the samples a stopped run already trained are skipped, not loaded);
    False when ``stop`` came before its last batch (``latest`` then holds the state after the
    last finished batch). ``model.epoch_items`` counts the items of the epoch's order trained
    by all processes together (the sampler's position)."""
    world = world or World()
    model.train()
    n_items = len(loader.dataset)
    skip = model.epoch_items if epoch == opt.epoch_count else 0
    set_epoch(loader, epoch, skip)
    epoch_iter, taken, ran = skip, 0, 0
    iter_data_time = time.time()
    batches = tqdm(
        loader,
        desc=f"epoch {epoch}",
        unit="batch",
        leave=False,
        dynamic_ncols=True,
        disable=not world.is_main,
    )
    for i, batch in enumerate(batches):
        iter_start = time.time()
        t_data = iter_start - iter_data_time
        model.set_input(batch)
        model.optimize_parameters()
        n = len(batch["id"]) if "id" in batch else opt.batch_size
        taken += n
        position = loader.sampler.position(taken) if world.distributed else epoch_iter + n
        model.total_iters += position - epoch_iter
        epoch_iter = position
        ran += 1
        model.epoch_items = epoch_iter
        losses = model.get_current_losses()
        if world.distributed:  # the means over the processes, for the log and the NaN check
            summed = _sync(stop, list(losses.values()))
            losses = OrderedDict((k, v / world.size) for k, v in zip(losses, summed, strict=True))
        check_finite(losses, epoch, model.total_iters)
        batches.set_postfix({k: f"{v:.3g}" for k, v in list(losses.items())[:4]})
        if i % max(1, opt.print_freq // opt.batch_size) == 0:
            t_comp = (time.time() - iter_start) / max(1, n)
            visualizer.print_current_losses(epoch, epoch_iter, losses, t_comp, t_data)
            visualizer.plot_current_losses(epoch - 1 + epoch_iter / max(1, n_items), losses)
        if stop.requested and epoch_iter < n_items:
            return False
        iter_data_time = time.time()
    if ran:
        model.compute_visuals()
        visualizer.display_current_results(model.get_current_visuals(), epoch)
    return True


def _stopped(stop: StopSignals, model, path: Path) -> int:
    """Report a stop by signal once ``latest`` (``path``) is saved; the exit status."""
    done = f" and {model.epoch_items} samples of the next" if model.epoch_items else ""
    print(
        f"stopped by {stop.signal_name}: {path} holds epoch {model.epoch}{done}; resume with "
        "--continue_train",
        file=sys.stderr,
    )
    return stop.exit_code


def resume_label(run_dir: Path, label: str) -> str | None:
    """The checkpoint that ``--continue_train --epoch <label>`` resumes: ``label``, except that
    for ``latest`` a numbered checkpoint written after it (a kill between the two files of
    one save) wins; None when the run directory holds no checkpoint of that kind yet."""
    if label != "latest":
        return label
    latest = run_dir / LATEST
    numbers = [p.name.partition("_")[0] for p in run_dir.glob("*_checkpoint.pth")]
    numbered = max((int(n) for n in numbers if n.isdigit()), default=None)
    if numbered is not None:
        newest = run_dir / f"{numbered}_checkpoint.pth"
        if not latest.exists() or newest.stat().st_mtime_ns > latest.stat().st_mtime_ns:
            return str(numbered)
    return "latest" if latest.exists() else None


def _choose_resume_checkpoint(opt, run_dir: Path) -> None:
    """Point ``opt.epoch`` at :func:`resume_label`'s choice; a run directory with files but no
    checkpoint yet (a job killed in its first epoch, requeued with ``--continue_train``)
    starts from epoch 1 with a warning. An empty one is left to fail on the missing file."""
    label = resume_label(run_dir, str(opt.epoch))
    if label is None:
        if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
            print(f"warning: {run_dir} holds no {LATEST} yet; training from epoch 1")
            opt.continue_train = False
    elif label != str(opt.epoch):
        print(f"resuming from {label}_checkpoint.pth: it was written after {LATEST}")
        opt.epoch = label


def main(argv: list[str] | None = None) -> int:
    world = world_from_env()  # rank 0 of 1 unless started by torchrun
    with contextlib.ExitStack() as stack:
        if not world.is_main:  # one copy of the options and messages: rank 0's
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(_devnull())))
        options = TrainOptions(argv)
        opt = options.parse()
        opt.device = rank_device(opt.device, world)
        with process_group(world, opt.device):
            status = _run(opt, options, world)
            # leave together: torchrun ends the other ranks as soon as one exits non-zero (a
            # stop by signal), and rank 0 may still be saving or releasing the lock
            any_rank(False)
            return status


def _devnull():
    return open(os.devnull, "w", encoding="utf-8")


def _run(opt, options: TrainOptions, world: World) -> int:
    """:func:`train` inside the run directory's lock (rank 0 takes it)."""
    run_dir = Path(opt.checkpoints_dir) / opt.name

    def lock() -> RunDir:
        return RunDir(run_dir, resume=opt.continue_train, overwrite=opt.overwrite)

    # (the lock is released while SIGTERM/SIGINT are still ours)
    with StopSignals() as stop, entered_on_main(world, lock):
        if opt.continue_train and world.is_main:
            _choose_resume_checkpoint(opt, run_dir)
        opt.epoch, opt.continue_train = broadcast_object((opt.epoch, opt.continue_train))
        try:
            return train(opt, options, stop, world)
        except FloatingPointError as exc:  # a NaN/inf loss, caught before the optimiser step
            print(
                f"error: {exc}. Training stopped; the last good checkpoint in {run_dir} is kept.",
                file=sys.stderr,
            )
            return 1


if __name__ == "__main__":
    run_main(main)
