"""Flags shared by train.py and test.py; models, datasets and generators add their own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import data
import models
from options.checks import check_name, check_options
from options.presets import PRESETS, apply_preset
from util.io import write_json_atomic, write_text_atomic
from util.misc import resolve_device


class BaseOptions:
    """Parse the command line in stages, CycleGAN-style.

    1. the shared flags below;
    2. the flags of the chosen ``--model`` (its ``modify_commandline_options``), then any
       further option setters the model asks for (e.g. the chosen ``--netG_type``);
    3. the flags of the chosen ``--dataset_mode``;
    4. the defaults of ``--preset`` (``options/presets.py``), over every flag added so far;
    5. a final strict parse, so an unknown flag or a value outside its choices is an error.
    """

    is_train: bool = False

    def __init__(self, argv: list[str] | None = None) -> None:
        self.argv = sys.argv[1:] if argv is None else list(argv)

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        g = parser.add_argument_group("basic")
        g.add_argument(
            "--dataroot",
            default="datasets/phantom",
            help="data root with CT/, label/, heatmap/ and vertebra_data.json",
        )
        g.add_argument(
            "--name",
            default="experiment",
            help="experiment name: checkpoints and results go under this folder",
        )
        g.add_argument(
            "--checkpoints_dir",
            default="./checkpoints",
            help="where models, opt.txt/opt.json, loss_log.txt and web/ are written",
        )
        g.add_argument(
            "--gpu_ids",
            default="auto",
            help="comma-separated CUDA ids, -1 for CPU; auto = first CUDA device "
            "if present, else CPU",
        )
        g.add_argument("--seed", type=int, default=0, help="seed of python, numpy and torch")
        g.add_argument(
            "--preset",
            default="none",
            choices=list(PRESETS),
            help="healthivert: every training choice set to the original HealthiVert-GAN's "
            "(options/presets.py); flags given explicitly still win",
        )

        g = parser.add_argument_group("model")
        g.add_argument(
            "--model",
            default="pix2pix",
            choices=models.model_names(),
            help="model to run (models/<name>_model.py)",
        )
        g.add_argument(
            "--netG_type",
            default="gan",
            choices=models.generator_types(),
            help="generator: the two-stage GAN or the conditional diffusion U-Net",
        )
        g.add_argument(
            "--epoch", default="latest", help="checkpoint to load: latest, best or an epoch number"
        )

        g = parser.add_argument_group("data")
        g.add_argument(
            "--dataset_mode",
            default="vertebra",
            choices=data.dataset_modes(),
            help="dataset to use (data/<mode>_dataset.py)",
        )
        g.add_argument(
            "--img_size",
            type=_multiple_of(16),
            default=256,
            help="slice size in pixels; every pixel constant (the 40-row band, "
            "the 70-row D_3 band) scales with it",
        )
        g.add_argument(
            "--batch_size",
            type=_positive_int,
            default=4,
            help="input batch size, per process under torchrun (the global batch is the "
            "number of processes times it)",
        )
        g.add_argument(
            "--num_workers",
            type=_non_negative_int,
            default=2,
            help="data loading worker processes (0 = load in the main process)",
        )
        g.add_argument(
            "--max_dataset_size",
            type=_positive_int,
            default=None,
            help="use at most this many items of the dataset",
        )
        g.add_argument(
            "--serial_batches",
            action="store_true",
            help="take batches in order instead of shuffling",
        )
        g.add_argument("--verbose", action="store_true", help="print more while setting up")
        return parser

    # ------------------------------------------------------------------ parsing
    def gather_options(self) -> argparse.Namespace:
        parser = argparse.ArgumentParser(
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            description=__doc__,
        )
        parser = self.initialize(parser)

        opt, _ = parser.parse_known_args(self.argv)
        model_cls = models.find_model(opt.model)
        parser = model_cls.modify_commandline_options(parser, self.is_train)
        opt, _ = parser.parse_known_args(self.argv)
        for setter in model_cls.extra_option_setters(opt):
            parser = setter(parser, self.is_train)

        opt, _ = parser.parse_known_args(self.argv)
        parser = data.find_dataset(opt.dataset_mode).modify_commandline_options(
            parser, self.is_train
        )
        apply_preset(parser, opt.preset)

        self.parser = parser
        return parser.parse_args(self.argv)

    def parse(self, save: bool = False) -> argparse.Namespace:
        """Parse, check every value (``ValueError`` naming the option, before anything is
        written), resolve the device and print the options; with ``save`` also write them
        (:meth:`save`) into :meth:`output_dir`."""
        opt = self.gather_options()
        opt.isTrain = self.is_train
        check_options(opt)
        self.output_dir(opt)  # its checks too, before anything is written
        opt.device, opt.gpu_ids = resolve_device(opt.gpu_ids)
        if opt.max_dataset_size is None:
            opt.max_dataset_size = float("inf")
        print(self.format_options(opt))
        if save:
            self.save(opt, self.output_dir(opt))
        return opt

    def output_dir(self, opt: argparse.Namespace) -> Path:
        """Where this entry point writes: the run directory ``<checkpoints_dir>/<name>``."""
        return check_name(opt.name, opt.checkpoints_dir)

    def format_options(self, opt: argparse.Namespace) -> str:
        """The options as a table, non-default values marked with their default."""
        lines = ["----------------- Options ---------------"]
        for key, value in sorted(vars(opt).items()):
            default = self.parser.get_default(key)
            note = f"\t[default: {default}]" if default is not None and value != default else ""
            lines.append(f"{key:>25}: {value!s:<30}{note}")
        lines.append("----------------- End -------------------")
        return "\n".join(lines)

    def save(self, opt: argparse.Namespace, folder: str | Path) -> None:
        """Write ``<phase>_opt.txt`` and ``<phase>_opt.json`` (phase: train or test) into
        ``folder``, atomically."""
        phase = "train" if self.is_train else "test"
        write_text_atomic(Path(folder) / f"{phase}_opt.txt", self.format_options(opt) + "\n")
        write_json_atomic(Path(folder) / f"{phase}_opt.json", options_to_dict(opt))


def options_to_dict(opt: argparse.Namespace) -> dict:
    """JSON-serialisable copy of ``opt`` (infinite sizes become null)."""
    out = {}
    for key, value in vars(opt).items():
        if isinstance(value, float) and value == float("inf"):
            value = None
        out[key] = value
    json.dumps(out)  # fail here, not halfway through writing a file
    return out


def load_options(path: str | Path) -> dict:
    """Read an ``opt.json`` written by :meth:`BaseOptions.save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"options file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"options file {path} is not valid JSON: {exc}") from exc


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _multiple_of(k: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < 2 * k or value % k:
            raise argparse.ArgumentTypeError(
                f"must be a multiple of {k} and at least {2 * k}, got {text}"
            )
        return value

    parse.__name__ = f"multiple_of_{k}"
    return parse
