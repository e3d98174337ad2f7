"""Base class of the datasets found by ``--dataset_mode``.

The geometry conventions every dataset follows (band, A/B geometry, CT window, data-root
layout) live on the ground floor, in ``util/geometry.py``.
"""

from __future__ import annotations

import argparse
from typing import Self

import torch.utils.data

from util.registry import Registry


class BaseDataset(torch.utils.data.Dataset):
    """Base class of the datasets found by ``--dataset_mode``.

    A subclass takes typed keyword arguments in ``__init__``, adds its flags in
    :meth:`modify_commandline_options` and reads ``opt`` only in :meth:`from_opt`, the one
    constructor the registry (``data.create_dataset``) and the entry points use.
    """

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> Self:
        """Build the dataset from parsed options."""
        raise NotImplementedError(f"{cls.__name__} must implement from_opt(opt)")

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        return parser


#: ``--dataset_mode``: datasets by name; built-in ones in ``data/*_dataset.py``.
DATASETS: Registry[BaseDataset] = Registry(
    "--dataset_mode", BaseDataset, package="data", suffix="dataset"
)
