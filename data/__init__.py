"""Dataset registry: ``--dataset_mode <mode>`` selects the class registered as ``<mode>``
(``@DATASETS.register("vertebra")`` in ``data/vertebra_dataset.py``)."""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, Subset

from data.base_dataset import DATASETS, BaseDataset

__all__ = ["DATASETS", "BaseDataset", "create_dataset", "dataset_modes", "find_dataset"]


def dataset_modes() -> list[str]:
    """Names accepted by ``--dataset_mode``."""
    return DATASETS.names()


def find_dataset(mode: str) -> type[BaseDataset]:
    """The dataset class registered as ``mode``; ``ValueError`` lists the choices."""
    return DATASETS.get(mode)


def create_dataset(opt: argparse.Namespace) -> DataLoader:
    """Dataset chosen by ``opt.dataset_mode`` (built by its ``from_opt``) wrapped in a seeded
    ``DataLoader``.

    Shuffling uses a generator seeded with ``opt.seed`` so that a run is reproducible; each
    worker's numpy/python RNG is derived from torch's per-worker seed.
    """
    dataset = find_dataset(opt.dataset_mode).from_opt(opt)
    if len(dataset) > opt.max_dataset_size:
        dataset = Subset(dataset, range(int(opt.max_dataset_size)))
    generator = torch.Generator()
    generator.manual_seed(opt.seed)
    shuffle = opt.isTrain and not opt.serial_batches
    loader = DataLoader(
        dataset,
        batch_size=opt.batch_size,
        shuffle=shuffle,
        num_workers=opt.num_workers,
        generator=generator,
        persistent_workers=opt.num_workers > 0 and opt.isTrain,
        drop_last=False,
    )
    if getattr(opt, "verbose", False):
        print(f"dataset [{type(dataset).__name__}] with {len(dataset)} items was created")
    return loader
