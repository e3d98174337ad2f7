"""BaseModel: device, checkpoints, learning-rate schedules, losses and visuals."""

from __future__ import annotations

import abc
import argparse
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from util.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from util.distributed import average_gradients, broadcast_state_, sync_batchnorm_
from util.registry import Registry

OptionSetter = Callable[[argparse.ArgumentParser, bool], argparse.ArgumentParser]

#: Options that shape the networks or what their weights mean: a checkpoint is only loaded
#: when the values it records equal this run's (those both record are compared).
ARCHITECTURE_OPTIONS = (
    "model",
    "netG_type",
    "img_size",
    "ngf",
    "ndf",
    "n_layers_D",
    "prediction_type",
    "diffusion_timesteps",
    "diffusion_beta_schedule",
    "diffusion_crop",
    "diffusion_residual",
    "residual_scale",
    "zero_terminal_snr",
    "stage1_cnum",
    "cam_injection",
    "diffusion_heads",
    "shrm",
)


class BaseModel(abc.ABC):
    """Tiny base class in the spirit of pytorch-CycleGAN-and-pix2pix.

    Subclasses fill ``loss_names`` (``loss_<name>`` attributes), ``visual_names`` (tensor
    attributes), ``model_names`` (``net<name>`` modules) and ``optimizers``, and implement
    :meth:`set_input`, :meth:`forward` and :meth:`optimize_parameters`.
    """

    def __init__(self, opt: argparse.Namespace) -> None:
        self.opt = opt
        self.isTrain: bool = opt.isTrain
        self.device = torch.device(opt.device)
        self.save_dir = Path(opt.checkpoints_dir) / opt.name
        self.loss_names: list[str] = []
        self.model_names: list[str] = []
        self.visual_names: list[str] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.epoch = 0  # last completed epoch
        self.total_iters = 0  # training samples seen
        self.epoch_items = 0  # samples of epoch ``epoch + 1`` already trained (a stopped run)
        self.world_size = 1  # processes training together (:meth:`distribute`)

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        """Add model-specific flags and defaults."""
        return parser

    @classmethod
    def extra_option_setters(cls, opt: argparse.Namespace) -> list[OptionSetter]:
        """Further option setters chosen by already-parsed flags (e.g. the generator type)."""
        return []

    @abc.abstractmethod
    def set_input(self, batch: dict[str, Any]) -> None:
        """Unpack a batch from the data loader onto the device."""

    @abc.abstractmethod
    def forward(self) -> None:
        """Training pass of the networks on the batch of :meth:`set_input`. Inference is each
        model's own pipeline (e.g. ``Pix2PixModel.infer``)."""

    @abc.abstractmethod
    def optimize_parameters(self) -> None:
        """One training iteration: forward, losses, backward, optimiser steps."""

    def extra_state(self) -> dict[str, Any]:
        """Model state beyond networks/optimisers/schedulers to checkpoint (e.g. EMA)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""

    def compute_visuals(self) -> None:
        """Derive extra visuals after :meth:`forward`."""

    def extra_modules(self) -> list[nn.Module]:
        """Modules beyond :meth:`networks` whose state every rank must share (e.g. the EMA)."""
        return []

    # ------------------------------------------------------------------ distributed
    def distribute(self, world_size: int) -> None:
        """Train as one of ``world_size`` processes (``torchrun``; the process group is up):
        BatchNorm layers normalise over the global batch, every rank starts from rank 0's
        weights, and :meth:`sync_gradients` averages the gradients. Call before :meth:`setup`
        (every rank then loads the same checkpoint when resuming)."""
        self.world_size = world_size
        for net in self.networks().values():
            sync_batchnorm_(net)
        broadcast_state_([*self.networks().values(), *self.extra_modules()])

    def sync_gradients(self, net: nn.Module) -> None:
        """Average the gradients of ``net`` over the processes (nothing for one process); call
        between the backward pass and the optimiser step."""
        if self.world_size > 1:
            average_gradients(net.parameters())

    # ------------------------------------------------------------------ setup
    def setup(self, opt: argparse.Namespace) -> None:
        """Create schedulers; load a checkpoint for testing or ``--continue_train``."""
        if self.isTrain:
            self.schedulers = [make_scheduler(o, opt) for o in self.optimizers]
        if not self.isTrain or opt.continue_train:
            self.load_networks(opt.epoch, resume=self.isTrain)
            if self.isTrain:
                opt.epoch_count = self.epoch + 1
        if opt.verbose:
            self.print_networks()

    def networks(self) -> dict[str, nn.Module]:
        return {name: getattr(self, "net" + name) for name in self.model_names}

    def eval(self) -> None:
        for net in self.networks().values():
            net.eval()

    def train(self) -> None:
        for net in self.networks().values():
            net.train()

    def update_learning_rate(self) -> float:
        """Step every scheduler once (call at the end of an epoch); return the new lr."""
        for scheduler in self.schedulers:
            scheduler.step()
        return self.optimizers[0].param_groups[0]["lr"] if self.optimizers else 0.0

    def get_current_losses(self) -> OrderedDict[str, float]:
        return OrderedDict(
            (name, float(getattr(self, "loss_" + name).detach())) for name in self.loss_names
        )

    def get_current_visuals(self) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((name, getattr(self, name)) for name in self.visual_names)

    def print_networks(self) -> None:
        for name, net in self.networks().items():
            n = sum(p.numel() for p in net.parameters())
            print(f"[net{name}] {n / 1e6:.3f} M parameters")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, label: str | int) -> Path:
        return self.save_dir / f"{label}_checkpoint.pth"

    def save_networks(self, label: str | int, also_latest: bool = True) -> Path:
        """Write networks, optimisers, schedulers, extra state, epoch (and samples of the next
        epoch already trained), iteration, RNG states and options atomically to
        ``<label>_checkpoint.pth`` (and ``latest_checkpoint.pth``). Call it after the epoch's
        :meth:`update_learning_rate`, so that a resumed run continues the same schedule."""
        ckpt = {
            "epoch": self.epoch,
            "epoch_items": self.epoch_items,
            "total_iters": self.total_iters,
            "world_size": self.world_size,
            "networks": {name: net.state_dict() for name, net in self.networks().items()},
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "extra": self.extra_state(),
            "rng": capture_rng_state(),
            "options": {k: v for k, v in vars(self.opt).items() if _is_plain(v)},
        }
        path = self.checkpoint_path(label)
        save_checkpoint(path, ckpt)
        if also_latest and str(label) != "latest":
            save_checkpoint(self.checkpoint_path("latest"), ckpt)
        return path

    def load_networks(self, label: str | int, resume: bool = False) -> dict[str, Any]:
        """Load ``<label>_checkpoint.pth``; with ``resume`` also optimisers, schedulers,
        counters and RNG states, so training continues exactly where it stopped.

        Raises :class:`~util.checkpoint.CheckpointError` (one line naming the file) for a file
        that does not fit: another architecture (:data:`ARCHITECTURE_OPTIONS`, naming the
        option), missing entries, or weights of other shapes."""
        path = self.checkpoint_path(label)
        ckpt = load_checkpoint(path, map_location=self.device)
        check_compatible(ckpt, self.opt, path)
        nets = self.networks()
        weights = _entry(ckpt, "networks", dict, path)
        missing = sorted(set(nets) - set(weights))
        if missing:
            nets_missing = ", ".join(f"net{m}" for m in missing)
            raise CheckpointError(f"checkpoint {path} has no weights for {nets_missing}")
        for name, net in nets.items():
            _load_state(net, weights[name], f"net{name}", path)
        self.load_extra_state(ckpt.get("extra", {}))
        self.epoch = _entry(ckpt, "epoch", int, path)
        self.total_iters = _entry(ckpt, "total_iters", int, path)
        self.epoch_items = int(ckpt.get("epoch_items", 0))
        saved_world = int(ckpt.get("world_size", 1))
        if resume and saved_world != self.world_size:
            print(
                f"note: {path} was trained by {saved_world} process(es), this run has "
                f"{self.world_size}: the global batch changes with it (--batch_size is "
                "per process)"
            )
        if resume:
            self._resume_from(ckpt, path)
        print(f"loaded checkpoint {path} (epoch {self.epoch}, {self.total_iters} samples)")
        return ckpt

    def _resume_from(self, ckpt: dict[str, Any], path: Path) -> None:
        """Optimisers, schedulers and RNG states of a checkpoint (``resume``)."""
        optimizers = _entry(ckpt, "optimizers", list, path)
        if len(optimizers) != len(self.optimizers):
            raise CheckpointError(
                f"checkpoint {path} holds {len(optimizers)} optimisers,"
                f" the model has {len(self.optimizers)}"
            )
        for i, (opt_, state) in enumerate(zip(self.optimizers, optimizers, strict=True)):
            _load_state(opt_, state, f"optimiser {i}", path)
        for i, (sched, state) in enumerate(
            zip(self.schedulers, _entry(ckpt, "schedulers", list, path), strict=False)
        ):
            _load_state(sched, state, f"scheduler {i}", path)
            if ckpt["format"] == 1:  # saved before the epoch's step: make it up
                with warnings.catch_warnings():  # (no optimiser step in this process yet)
                    warnings.simplefilter("ignore", UserWarning)
                    sched.step()
            if isinstance(sched, lr_scheduler.LambdaLR):
                # The saved lr belongs to the saved schedule; a resumed run that extends
                # it (larger --n_epochs) must train its next epoch at the new rule's lr.
                rules = zip(sched.base_lrs, sched.lr_lambdas, strict=True)
                lrs = [base * rule(sched.last_epoch) for base, rule in rules]
                for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
                    group["lr"] = lr
        try:
            restore_rng_state(_entry(ckpt, "rng", dict, path))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path} has unusable RNG states: {exc}") from exc


def check_compatible(ckpt: dict[str, Any], opt: argparse.Namespace, path: Path) -> None:
    """``CheckpointError`` naming the first :data:`ARCHITECTURE_OPTIONS` entry whose value
    recorded in ``ckpt["options"]`` differs from ``opt``'s."""
    recorded = ckpt.get("options")
    if not isinstance(recorded, dict):
        return
    for key in ARCHITECTURE_OPTIONS:
        if key in recorded and hasattr(opt, key) and recorded[key] != getattr(opt, key):
            raise CheckpointError(
                f"checkpoint {path} was trained with --{key} {recorded[key]}, this run has "
                f"--{key} {getattr(opt, key)}: pass --{key} {recorded[key]} (or another --name"
                " / --epoch)"
            )


def _entry(ckpt: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    value = ckpt.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise CheckpointError(
            f"checkpoint {path} has no usable {key!r} entry (expected a {kind.__name__}, "
            f"found {type(value).__name__})"
        )
    return value


def _load_state(obj: Any, state: Any, what: str, path: Path) -> None:
    """``obj.load_state_dict(state)`` with a one-line error naming the file."""
    try:
        obj.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:300] or type(exc).__name__
        message = f"checkpoint {path}: {what} does not fit this model ({detail})"
        raise CheckpointError(message) from exc


#: ``--model``: models by name; built-in ones in ``models/*_model.py``.
MODELS: Registry[BaseModel] = Registry("--model", BaseModel, package="models", suffix="model")


def make_scheduler(optimizer: torch.optim.Optimizer, opt: argparse.Namespace):
    """Learning-rate scheduler stepped once per epoch.

    ``linear`` (pix2pix): constant for ``n_epochs`` epochs, then linear decay to zero over
    ``n_epochs_decay`` epochs. The scheduler counts epochs itself (its state is checkpointed),
    so a resumed run continues the same curve.
    """
    if opt.lr_policy == "linear":

        def rule(completed_epochs: int) -> float:
            # The lr used in epoch e (1-based) is rule(e - 1).
            return 1.0 - max(0, completed_epochs + 1 - opt.n_epochs) / float(opt.n_epochs_decay + 1)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=rule)
    if opt.lr_policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=opt.lr_decay_iters, gamma=0.1)
    if opt.lr_policy == "cosine":
        return lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, opt.n_epochs + opt.n_epochs_decay), eta_min=0
        )
    raise ValueError(f"unknown --lr_policy {opt.lr_policy!r}; choose linear, step or cosine")


def _is_plain(value: Any) -> bool:
    if isinstance(value, float) and math.isinf(value):
        return False
    return isinstance(value, str | int | float | bool | list | tuple | type(None))
