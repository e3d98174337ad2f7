"""Small helpers used by the top-level scripts: devices, seeds, image conversion."""

from __future__ import annotations

import argparse
import random
import zlib

import numpy as np
import torch
from torch import Tensor


def resolve_device(gpu_ids: str | list[int]) -> tuple[str, list[int]]:
    """Turn ``--gpu_ids`` into ``(device string, list of CUDA ids)``.

    ``"auto"`` picks CUDA device 0 when one is present, else the CPU; ``"-1"`` is the CPU;
    ``"0,1"`` lists CUDA devices (the first one holds the model).
    """
    if isinstance(gpu_ids, list):
        ids = gpu_ids
    elif gpu_ids == "auto":
        ids = [0] if torch.cuda.is_available() else []
    else:
        try:
            ids = [int(x) for x in str(gpu_ids).split(",") if x.strip() != ""]
        except ValueError:
            raise ValueError(
                f"--gpu_ids must be 'auto', -1 or comma-separated integers, got {gpu_ids!r}"
            ) from None
        ids = [i for i in ids if i >= 0]
    if ids and not torch.cuda.is_available():
        raise ValueError(
            f"--gpu_ids {gpu_ids} asks for CUDA but no CUDA device is available; "
            "use --gpu_ids -1 for the CPU"
        )
    if ids and max(ids) >= torch.cuda.device_count():
        raise ValueError(
            f"--gpu_ids {gpu_ids}: only {torch.cuda.device_count()} CUDA device(s) present"
        )
    return (f"cuda:{ids[0]}" if ids else "cpu"), ids


#: ``--precision`` choices: ``auto`` picks per device (:func:`resolve_precision`).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``--precision`` for ``device``: fp32, bf16 and fp16 as given; ``auto`` = bf16 on a GPU
    of compute capability >= 8.0 (Ampere or newer: fast bf16, no loss scaling), fp16 on an
    older GPU (run with gradient scaling), fp32 on the CPU (bf16 pays only on CPUs with
    AVX512-BF16/AMX: ask for it explicitly)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--gpu_ids`` and ``--num_threads`` (torch CPU threads) of the stand-alone tools;
    train.py and test.py take ``--gpu_ids`` from ``options/``, where ``--num_workers`` counts
    data-loading processes."""
    parser.add_argument(
        "--gpu_ids", default="auto", help="CUDA id, -1 for CPU; auto = CUDA if present"
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch default; 1 is fastest on a busy machine)",
    )


def device_from_options(args: argparse.Namespace) -> str:
    """Apply ``--num_threads`` and return the device of ``--gpu_ids`` (the options of
    :func:`add_device_options`)."""
    if args.num_threads < 0:
        raise ValueError(f"--num_threads must be >= 0, got {args.num_threads}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    return resolve_device(args.gpu_ids)[0]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def item_generator(seed: int, key: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from the run's ``seed`` and one work item's ``key`` (a vertebra id)
    alone, so the item's random draws do not depend on the order, the subset or the shard
    (process) it runs in."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def tensor2im(image: Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """First image of a batch ``(B, C, H, W)`` (or one ``(C, H, W)``) as ``(H, W, 3)`` uint8.

    Values are mapped linearly from ``value_range`` to 0..255 and clipped.
    """
    img = image.detach()
    if img.dim() == 4:
        img = img[0]
    img = img.float().cpu()
    if img.shape[0] == 1:
        img = img.expand(3, *img.shape[1:])
    elif img.shape[0] == 2:  # offset fields: magnitude as grey
        img = img.norm(dim=0, keepdim=True).expand(3, *img.shape[1:])
        value_range = (0.0, max(float(img.max()), 1e-6))
    lo, hi = value_range
    arr = ((img.numpy()[:3] - lo) / (hi - lo)).clip(0, 1) * 255.0
    return np.ascontiguousarray(arr.transpose(1, 2, 0).round().astype(np.uint8))
