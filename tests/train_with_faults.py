"""``python tests/train_with_faults.py <train.py flags>``: train.py with a fault injected, for
the resume tests (never used by the product).

``FAULT=kill_in_save:N`` SIGKILLs the process right after the N-th checkpoint's temporary
file is written, before it is renamed into place (a kill mid-save);
``FAULT=kill_after_save:N`` right after the N-th checkpoint file is renamed into place (so an
epoch file is written and ``latest`` is not yet).
Under torchrun (the distributed tests): ``FAULT=no_grad_sync`` trains without averaging the
gradients over the processes, ``FAULT=local_batchnorm`` with per-process BatchNorm statistics
(each must break the equivalence with one process), ``FAULT=nan_on_rank:R`` makes the
generator loss NaN on rank R only (from its second step), ``FAULT=sigterm_on_rank:R`` sends
rank R alone a SIGTERM during its third training step.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train  # noqa: E402
from util.cli import run_main  # noqa: E402


def _kill_at(n: int):
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            os.kill(os.getpid(), signal.SIGKILL)

    return tick


def _on_step(n: int, action) -> None:
    """Run ``action`` during the ``n``-th training step (after its forward pass)."""
    import models.pix2pix_model

    real_forward = models.pix2pix_model.Pix2PixModel.forward
    calls = 0

    def forward(self) -> None:
        nonlocal calls
        real_forward(self)
        calls += 1
        if calls == n:
            action()

    models.pix2pix_model.Pix2PixModel.forward = forward


def install_distributed_fault(kind: str, arg: str) -> bool:
    """The torchrun faults; False for another kind."""
    import models.base_model
    import models.pix2pix_model

    if kind == "no_grad_sync":
        models.base_model.average_gradients = lambda params: None
    elif kind == "local_batchnorm":
        models.base_model.sync_batchnorm_ = lambda module: 0
    elif kind in ("nan_on_rank", "sigterm_on_rank"):
        if os.environ.get("RANK") != arg:
            return True
        if kind == "sigterm_on_rank":
            _on_step(3, lambda: os.kill(os.getpid(), signal.SIGTERM))
            return True
        real_backward_g = models.pix2pix_model.Pix2PixModel.backward_G
        calls = 0

        def backward_g(self) -> None:
            nonlocal calls
            calls += 1
            if calls >= 2:
                self.weights = dataclasses.replace(self.weights, lambda_L1=float("nan"))
            real_backward_g(self)

        models.pix2pix_model.Pix2PixModel.backward_G = backward_g
    else:
        return False
    return True


def install_fault(spec: str) -> None:
    kind, _, n = spec.partition(":")
    if not kind or install_distributed_fault(kind, n):
        return
    tick = _kill_at(int(n))
    if kind == "kill_in_save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            tick()

        torch.save = save
    elif kind == "kill_after_save":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            real_replace(src, dst, *args, **kwargs)
            if str(dst).endswith("_checkpoint.pth"):
                tick()

        os.replace = replace
    else:
        raise SystemExit(f"unknown FAULT {spec!r}")


if __name__ == "__main__":
    install_fault(os.environ.get("FAULT", ""))
    run_main(lambda: train.main(sys.argv[1:]))
