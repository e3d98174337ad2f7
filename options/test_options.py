"""Flags of test.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from options.base_options import BaseOptions, _positive_int
from options.checks import check_name
from util.shard import shard_arg


class TestOptions(BaseOptions):
    __test__ = False  # not a pytest test class
    is_train = False

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = super().initialize(parser)
        parser.add_argument(
            "--phase",
            default="test",
            choices=["train", "val", "test"],
            help="split of vertebra_data.json to evaluate",
        )
        parser.add_argument(
            "--results_dir",
            default="./results",
            help="outputs go to <results_dir>/<name>/<phase>_<epoch>/",
        )
        parser.add_argument(
            "--num_test",
            type=_positive_int,
            default=None,
            help="evaluate at most this many batches (of one vertebra's slices each)",
        )
        parser.add_argument(
            "--save_volumes",
            action="store_true",
            help="also write the synthesised CT and label volumes (NIfTI, with "
            "the input's affine and header) to volumes/",
        )
        parser.add_argument(
            "--no_ema",
            action="store_true",
            help="use the raw generator weights instead of their EMA",
        )
        parser.add_argument(
            "--shard",
            type=lambda text: str(shard_arg(text)),
            default=None,
            help="'i/N': evaluate this process's share of the vertebrae into the results "
            "folder, skipping those already done (default: RANK/WORLD_SIZE under torchrun, "
            "else all); then --merge",
        )
        parser.add_argument(
            "--merge",
            action="store_true",
            help="after every shard: write metrics.csv, summary.json and index.html from "
            "the shards' records",
        )
        return parser

    def output_dir(self, opt: argparse.Namespace) -> Path:
        """``<results_dir>/<name>/<phase>_<epoch>``, checked to lie below ``--results_dir``
        (test.py writes nothing into the checkpoint folder)."""
        return results_dir(opt)


def results_dir(opt: argparse.Namespace) -> Path:
    """``<results_dir>/<name>/<phase>_<epoch>`` of test.py, checked: ``--name`` must stay below
    ``--results_dir`` (``ValueError`` naming it otherwise)."""
    return check_name(opt.name, opt.results_dir) / f"{opt.phase}_{opt.epoch}"
