"""Dataset registry: ``--dataset_mode <mode>`` selects the class registered as ``<mode>``
(``@DATASETS.register("vertebra")`` in ``data/vertebra_dataset.py``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset

from data.base_dataset import DATASETS, BaseDataset
from util.cli import worker_error_message
from util.run_dir import shield_from_stop_signals

__all__ = [
    "DATASETS",
    "BaseDataset",
    "EpochSampler",
    "create_dataset",
    "dataset_modes",
    "find_dataset",
    "set_epoch",
]


def dataset_modes() -> list[str]:
    """Names accepted by ``--dataset_mode``."""
    return DATASETS.names()


def find_dataset(mode: str) -> type[BaseDataset]:
    """The dataset class registered as ``mode``; ``ValueError`` lists the choices."""
    return DATASETS.get(mode)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that is a function of ``(seed, epoch)`` only."""
    state = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


class EpochSampler(Sampler[int]):
    """Order of the items of an epoch, a function of ``(seed, epoch)`` only (a permutation when
    ``shuffle``, else ``0..n-1``), so that a resumed run sees the same order as an
    uninterrupted one. :meth:`set_epoch` chooses the epoch and how many items of it were
    already trained (they are skipped, not loaded).

    With ``world_size`` > 1 (torchrun) it is also torch's ``DistributedSampler``: process
    ``rank`` takes every ``world_size``-th item of the order left after the skipped ones,
    padded with the first ones so that every process has as many (as many batches). So the
    k-th batches of all processes together are the k-th batch of one process with
    ``world_size`` times the batch size, and ``skip`` counts items of the whole order: a run
    resumes with any number of processes (:meth:`position`). (``DistributedSampler`` itself
    cannot skip, and its order is not this one.)"""

    def __init__(
        self, n: int, *, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of {world_size} processes")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 1, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), max(0, int(skip))

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order = order[self.skip :]
        if self.world_size > 1 and order:
            pad = len(self) * self.world_size - len(order)
            order = (order + order * (pad // len(order) + 1))[: len(order) + pad]
            order = order[self.rank :: self.world_size]
        return iter(order)

    def __len__(self) -> int:
        return -(-max(0, self.n - self.skip) // self.world_size)

    def position(self, taken: int) -> int:
        """Items of the epoch's order trained once each process has taken ``taken`` of this
        epoch's items (the ``skip`` of a run resumed there)."""
        return min(self.n, self.skip + taken * self.world_size)


class ClearErrorLoader(DataLoader):
    """A ``DataLoader`` that re-raises an error of a worker process as the same exception
    type with the worker's original message (what 0 workers would raise), not torch's
    "Caught ValueError in DataLoader worker process 0" traceback dump."""

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as exc:
                message = worker_error_message(str(exc))
                if message is None:
                    raise
                try:
                    clear = type(exc)(message)
                except Exception:  # noqa: BLE001 - a type that takes other arguments
                    raise exc from None
                raise clear from exc
            yield batch


def _worker_init(worker_id: int) -> None:
    shield_from_stop_signals()


def create_dataset(opt: argparse.Namespace, rank: int = 0, world_size: int = 1) -> ClearErrorLoader:
    """Dataset chosen by ``opt.dataset_mode`` in a ``DataLoader`` whose item order is an
    :class:`EpochSampler` (shuffled when training, unless ``--serial_batches``).

    Each epoch's order and every random choice of the dataset are functions of ``(opt.seed,
    epoch, item)`` (call :func:`set_epoch` before each epoch), whatever the number of workers,
    so that a resumed run is bit-identical to an uninterrupted one. Workers leave SIGINT and
    SIGTERM to the main process, and their errors come back as the worker's own message.
    ``rank`` of ``world_size`` (torchrun) loads its share of each batch (:class:`EpochSampler`);
    on CUDA the batches come in pinned memory (asynchronous copies to the GPU).
    """
    dataset = find_dataset(opt.dataset_mode).from_opt(opt)
    if len(dataset) > opt.max_dataset_size:
        dataset = Subset(dataset, range(int(opt.max_dataset_size)))
    shuffle = opt.isTrain and not opt.serial_batches
    sampler = EpochSampler(
        len(dataset), seed=opt.seed, shuffle=shuffle, rank=rank, world_size=world_size
    )
    # a generator of its own keeps the DataLoader from drawing on torch's global RNG
    generator = torch.Generator()
    generator.manual_seed(opt.seed)
    loader = ClearErrorLoader(
        dataset,
        batch_size=opt.batch_size,
        sampler=sampler,
        num_workers=opt.num_workers,
        generator=generator,
        worker_init_fn=_worker_init if opt.num_workers > 0 else None,
        persistent_workers=opt.num_workers > 0 and opt.isTrain,
        drop_last=False,
        pin_memory=str(getattr(opt, "device", "cpu")).startswith("cuda"),
    )
    if getattr(opt, "verbose", False):
        print(f"dataset [{type(dataset).__name__}] with {len(dataset)} items was created")
    return loader


def set_epoch(loader: DataLoader, epoch: int, skip: int = 0) -> None:
    """Prepare ``loader`` (from :func:`create_dataset`) for ``epoch``: its item order, the
    dataset's per-item randomness, and ``skip`` items already trained in this epoch."""
    if isinstance(loader.sampler, EpochSampler):
        loader.sampler.set_epoch(epoch, skip)
    dataset = loader.dataset
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
