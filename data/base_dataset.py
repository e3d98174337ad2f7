"""Base class of the datasets found by ``--dataset_mode``.

The geometry conventions every dataset follows (band, A/B geometry, CT window, data-root
layout) live on the ground floor, in ``util/geometry.py``.
"""

from __future__ import annotations

import argparse

import torch.utils.data


class BaseDataset(torch.utils.data.Dataset):
    """Base class of the datasets found by ``--dataset_mode``.

    Subclasses add their flags in :meth:`modify_commandline_options` and read ``opt`` in
    ``__init__``; everything below them takes plain arguments.
    """

    def __init__(self, opt: argparse.Namespace) -> None:
        self.opt = opt
        self.root = opt.dataroot

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        return parser
