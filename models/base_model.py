"""BaseModel: device, checkpoints, learning-rate schedules, losses and visuals."""

from __future__ import annotations

import abc
import argparse
import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from util.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from util.registry import Registry

OptionSetter = Callable[[argparse.ArgumentParser, bool], argparse.ArgumentParser]


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
        """Write networks, optimisers, schedulers, extra state, epoch, iteration, RNG states
        and options atomically to ``<label>_checkpoint.pth`` (and ``latest_checkpoint.pth``)."""
        ckpt = {
            "epoch": self.epoch,
            "total_iters": self.total_iters,
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
        counters and RNG states, so training continues exactly where it stopped."""
        path = self.checkpoint_path(label)
        ckpt = load_checkpoint(path, map_location=self.device)
        nets = self.networks()
        missing = sorted(set(nets) - set(ckpt["networks"]))
        if missing:
            raise ValueError(f"checkpoint {path} has no weights for net{', net'.join(missing)}")
        for name, net in nets.items():
            net.load_state_dict(ckpt["networks"][name])
        self.load_extra_state(ckpt.get("extra", {}))
        self.epoch = int(ckpt["epoch"])
        self.total_iters = int(ckpt["total_iters"])
        if resume:
            if len(ckpt["optimizers"]) != len(self.optimizers):
                raise ValueError(
                    f"checkpoint {path} holds {len(ckpt['optimizers'])} optimisers,"
                    f" the model has {len(self.optimizers)}"
                )
            for opt_, state in zip(self.optimizers, ckpt["optimizers"], strict=True):
                opt_.load_state_dict(state)
            for sched, state in zip(self.schedulers, ckpt["schedulers"], strict=False):
                sched.load_state_dict(state)
                if isinstance(sched, lr_scheduler.LambdaLR):
                    # The saved lr belongs to the saved schedule; a resumed run that extends
                    # it (larger --n_epochs) must train its next epoch at the new rule's lr.
                    rules = zip(sched.base_lrs, sched.lr_lambdas, strict=True)
                    lrs = [base * rule(sched.last_epoch) for base, rule in rules]
                    for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
                        group["lr"] = lr
            restore_rng_state(ckpt["rng"])
        print(f"loaded checkpoint {path} (epoch {self.epoch}, {self.total_iters} samples)")
        return ckpt


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
