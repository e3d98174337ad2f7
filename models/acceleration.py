"""How the networks run on a device: autocast precision, torch.compile, pinned-memory copies.

Every path runs on the CPU too (the tests run them there): fp16 autocast and ``GradScaler``
exist for the CPU in torch >= 2.3, ``torch.compile`` with the ``eager`` backend only traces,
and a tensor that is not pinned is copied as usual.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from util.misc import PRECISIONS

#: Autocast dtype of a resolved ``--precision`` (``util.misc.resolve_precision``); fp32: none.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_acceleration_options(group: argparse._ArgumentGroup) -> None:
    """``--precision`` and ``--compile``."""
    group.add_argument(
        "--precision",
        default="fp32",
        choices=list(PRECISIONS),
        help="bf16 / fp16 run the networks under autocast in training and at inference, "
        "for every generator type; losses and the diffusion scheduler stay in fp32. bf16: "
        "fast on CPUs with AMX/AVX512-BF16 and GPUs from Ampere on; fp16: for older GPUs, "
        "trained with gradient scaling (GradScaler); auto: bf16 on a GPU of compute "
        "capability >= 8, fp16 on an older one, fp32 on the CPU",
    )
    group.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        help="torch.compile the networks (GPU-oriented: the first steps compile for a "
        "minute or more; the value is the backend, default inductor; 'eager' only traces)",
    )


def compile_modules(modules: Iterable[nn.Module], backend: str) -> None:
    """``Module.compile(backend=...)`` each of ``modules`` in place (state-dict keys do not
    change, unlike ``torch.compile(module)``'s wrapper)."""
    for module in modules:
        module.compile(backend=backend)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; asynchronous from pinned memory (the loader pins on CUDA)."""
    return t.to(device, non_blocking=t.is_pinned())
