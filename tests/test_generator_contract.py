"""A generator type is one class registered in any module: a toy one, defined and registered
in this file only, trains with train.py and is evaluated by test.py (``--netG_type toy``)."""

from __future__ import annotations

import argparse
import csv
import json

import pytest
import torch
from torch import Tensor, nn

import test as test_script
import train as train_script
from models.generator_base import (
    GENERATORS,
    Generator,
    GeneratorInput,
    GeneratorOutput,
    SampleOutput,
    TrainingOutput,
)
from util.checkpoint import load_checkpoint

SPLITS = {"train": {"p1_20": 0, "p2_20": 0}, "val": {"p3_20": 0}, "test": {"p4_20": 1}}


@GENERATORS.register("toy")
class ToyGenerator(Generator):
    """Two convolutions returning the seven outputs with the documented shapes and ranges:
    images in [-1, 1] with the input's context outside the band, segmentations and heights
    in [0, 1], no attention (zero offsets)."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(4, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 4, 3, padding=1)
        )

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        parser.add_argument("--toy_width", type=int, default=4, help="toy generator width")
        return parser

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> ToyGenerator:
        return cls(width=opt.toy_width)

    def _outputs(self, inp: GeneratorInput) -> GeneratorOutput:
        ct, mask = inp.masked_ct, inp.band_mask
        ratio = inp.slice_ratio.reshape(-1, 1, 1, 1).to(ct.dtype).expand_as(ct)
        img1, img2, seg, h = self.body(torch.cat([ct, mask, inp.cam, ratio], 1)).chunk(4, dim=1)
        context = ct * (1 - mask)
        heights = torch.sigmoid(torch.cat([h.mean(dim=(2, 3)), seg.mean(dim=(2, 3))], 1))
        b, _, rows, cols = ct.shape
        return GeneratorOutput(
            coarse_seg=torch.sigmoid(seg),
            fine_seg=torch.sigmoid(seg + 1.0),
            x_stage1=torch.tanh(img1) * mask + context,
            x_stage2=torch.tanh(img2) * mask + context,
            offset_flow=ct.new_zeros(b, 2, rows, cols),
            pred1_h=heights[:, :1],
            pred2_h=heights[:, 1:],
        )

    def training_forward(self, inp: GeneratorInput, target: Tensor) -> TrainingOutput:
        ones = torch.ones(inp.masked_ct.shape[0], device=inp.masked_ct.device)
        return TrainingOutput(self._outputs(inp), {}, ones)

    @torch.no_grad()
    def sample(
        self,
        inp: GeneratorInput,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        return SampleOutput(self._outputs(inp))


@pytest.fixture
def root(vertebra_root_factory):
    return vertebra_root_factory(SPLITS, size=64, depth=16)


def test_toy_generator_trains_and_tests_through_the_entry_points(root, tmp_path):
    ckpt, results = tmp_path / "ckpt", tmp_path / "results"
    common = [
        "--dataroot", str(root), "--checkpoints_dir", str(ckpt), "--name", "toy",
        "--netG_type", "toy", "--toy_width", "3", "--img_size", "64", "--gpu_ids", "-1",
        "--num_workers", "0", "--batch_size", "2",
    ]  # fmt: skip
    train_argv = ["--n_epochs", "1", "--n_epochs_decay", "0", "--max_dataset_size", "2"]
    assert train_script.main(common + train_argv + ["--eval_freq", "1"]) == 0
    state = load_checkpoint(ckpt / "toy" / "latest_checkpoint.pth")
    assert state["epoch"] == 1 and state["total_iters"] == 2  # one iteration of two slices
    assert state["networks"]["G"]["body.0.weight"].shape == (3, 4, 3, 3)
    assert json.loads((ckpt / "toy" / "best_metrics.json").read_text())["epoch"] == 1

    assert test_script.main(common + ["--results_dir", str(results)]) == 0
    out = results / "toy" / "test_latest"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["netG_type"] == "toy" and summary["steps"] is None
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows and {r["id"] for r in rows} == {"p4_20"}
    assert all(r["netG_type"] == "toy" and r["steps"] == "" for r in rows)
    assert summary["n_slices"] == len(rows)
    assert -1 <= summary["metrics"]["ssim_patch"]["mean"] <= 1
