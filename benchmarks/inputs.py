"""What the benchmark feeds the networks: a synthetic batch with the data set's contract, the
generator's input, and models built through the options as train.py builds them."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.config import Config
from models.generator_base import GeneratorInput
from models.pix2pix_model import Pix2PixModel
from options.train_options import TrainOptions
from util.geometry import band_px, band_rows


def synthetic_batch(batch_size: int, img_size: int, *, seed: int = 0) -> dict[str, Any]:
    """A batch with the keys, shapes, dtypes and value ranges of docs/ARCHITECTURE.md.

    Smooth random CT in [-1, 1] (B geometry), a vertebra of ``h < h2`` rows centred, the band
    ``mask``, ``A`` = B with the band zeroed. Timing does not depend on the pixel values.
    """
    g = torch.Generator().manual_seed(seed)
    s, h2 = img_size, band_px(img_size)
    b0, b1 = band_rows(s)
    low = torch.rand(batch_size, 1, max(2, s // 16), max(2, s // 16), generator=g) * 2 - 1
    real_b = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
    height = torch.randint(max(1, h2 // 2), h2, (batch_size,), generator=g)
    x1 = s // 2 - height // 2
    rows, cols = torch.arange(s), torch.arange(s)
    in_rows = (rows[None] >= x1[:, None]) & (rows[None] < (x1 + height)[:, None])
    in_cols = (cols >= s // 4) & (cols < 3 * s // 4)
    vert = (in_rows[:, None, :, None] & in_cols[None, None, None, :]).float()
    mask = torch.zeros(batch_size, 1, s, s)
    mask[..., b0:b1, :] = 1.0
    return {
        "A": real_b * (1 - mask),
        "B": real_b,
        "mask": mask,
        "vert_mask": vert,
        "normal_vert": vert.clone(),
        "CAM": torch.rand(batch_size, 1, s, s, generator=g) * mask,
        "height": height.float(),
        "x1": x1.long(),
        "x2": (x1 + height - 1).long(),
        "h2": torch.full((batch_size,), h2, dtype=torch.long),
        "slice_ratio": torch.linspace(0.0, 1.0, batch_size),
        "slice_index": torch.arange(batch_size),
        "grade": torch.zeros(batch_size, dtype=torch.long),
        "id": [f"synthetic_{i}" for i in range(batch_size)],
    }


def generator_input(batch: dict[str, Any], device: torch.device) -> GeneratorInput:
    """What the model feeds its generator (inverted CAM, as ``Pix2PixModel``)."""
    return GeneratorInput(
        batch["A"].to(device),
        batch["mask"].to(device),
        1.0 - batch["CAM"].to(device),
        batch["slice_ratio"].to(device),
    )


def build_model(
    netg: str, cfg: Config, precision: str, gpu_ids: str, ckpt_dir: Path
) -> Pix2PixModel:
    """A training Pix2PixModel built through the options, as train.py does (options not saved,
    their printout swallowed)."""
    argv = ["--gpu_ids", gpu_ids, "--img_size", str(cfg.img_size), "--netG_type", netg,
            "--checkpoints_dir", str(ckpt_dir), "--name", f"bench_{netg}_{precision}",
            "--batch_size", str(cfg.train_batch), "--precision", precision]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        opt = TrainOptions(argv).parse(save=False)
    return Pix2PixModel(opt)


def model_size(module: torch.nn.Module) -> dict[str, float]:
    """Parameter count (also in millions) and fp32 size in MB of ``module``."""
    n = sum(p.numel() for p in module.parameters())
    return {"params_M": n / 1e6, "params": n, "size_mb_fp32": n * 4 / 2**20}


def precisions(machine: dict[str, Any]) -> list[str]:
    """``fp32``, and ``bf16`` where autocast supports it on the machine (:func:`machine_info`)."""
    return ["fp32", "bf16"] if machine["bf16"]["autocast_supported"] else ["fp32"]
