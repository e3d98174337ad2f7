"""Flags of train.py."""

from __future__ import annotations

import argparse

from options.base_options import BaseOptions, _non_negative_int, _positive_int


class TrainOptions(BaseOptions):
    is_train = True

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = super().initialize(parser)
        parser.add_argument(
            "--phase",
            default="train",
            choices=["train"],
            help="split of vertebra_data.json to train on",
        )

        g = parser.add_argument_group("schedule")
        g.add_argument(
            "--n_epochs",
            type=_non_negative_int,
            default=100,
            help="epochs at the initial learning rate",
        )
        g.add_argument(
            "--n_epochs_decay",
            type=_non_negative_int,
            default=100,
            help="epochs over which the learning rate decays linearly to zero",
        )
        g.add_argument(
            "--epoch_count",
            type=_positive_int,
            default=1,
            help="first epoch number (set automatically by --continue_train)",
        )
        g.add_argument(
            "--continue_train",
            action="store_true",
            help="resume from the --epoch checkpoint (networks, optimisers, "
            "schedulers, EMA, RNG states)",
        )
        g.add_argument(
            "--max_train_minutes",
            type=float,
            default=0.0,
            help="wall-clock budget: stop at the first epoch end past it (checkpoint 'latest' "
            "saved, the loss log says so); 0 = no limit",
        )
        g.add_argument(
            "--overwrite",
            action="store_true",
            help="start afresh in a run directory that holds a previous run (its checkpoints "
            "and logs are removed); without it (or --continue_train) such a run is refused",
        )
        g.add_argument("--lr", type=float, default=2e-4, help="initial Adam learning rate")
        g.add_argument("--beta1", type=float, default=0.5, help="Adam beta1")
        g.add_argument(
            "--lr_policy",
            default="linear",
            choices=["linear", "step", "cosine"],
            help="learning-rate schedule",
        )
        g.add_argument(
            "--lr_decay_iters",
            type=_positive_int,
            default=50,
            help="step policy: multiply by 0.1 every this many epochs",
        )

        g = parser.add_argument_group("validation")
        g.add_argument(
            "--eval_freq",
            type=_non_negative_int,
            default=0,
            help="evaluate the val split every this many epochs (0 = never); keeps "
            "best_checkpoint.pth by band SSIM",
        )
        g.add_argument(
            "--eval_max_batches",
            type=_positive_int,
            default=None,
            help="validate on at most this many batches",
        )

        g = parser.add_argument_group("logging")
        g.add_argument(
            "--print_freq",
            type=_positive_int,
            default=100,
            help="iterations between loss prints (loss_log.txt)",
        )
        g.add_argument(
            "--display_freq",
            type=_positive_int,
            default=400,
            help="iterations between saving current images to the HTML report",
        )
        g.add_argument(
            "--save_epoch_freq",
            type=_positive_int,
            default=5,
            help="epochs between per-epoch checkpoints (latest is saved every epoch)",
        )
        g.add_argument(
            "--display_id",
            type=int,
            default=0,
            help="visdom window id; > 0 enables live display (needs a server)",
        )
        g.add_argument("--display_server", default="http://localhost", help="visdom server")
        g.add_argument("--display_port", type=int, default=8097, help="visdom port")
        g.add_argument("--display_env", default="main", help="visdom environment")
        g.add_argument(
            "--no_html", action="store_true", help="do not write images to checkpoints/<name>/web/"
        )
        return parser
