"""Shards of a work list: each of N processes (a job array or ``torchrun`` ranks) takes a
disjoint, deterministic subset, and the union over all shards is the whole list.

Assignment is round-robin over the items sorted by their key: item ``p`` (0-based, in key
order) goes to shard ``p % N``. It depends only on the set of keys (not on the order a folder
listing returns them), so a restarted shard takes the same items again, and shard sizes
differ by at most one. Adding cases to a cohort moves later items between shards: run the
whole cohort with one N.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0 <= index < count)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard {self.index}/{self.count}: need 0 <= i < N and N >= 1")

    @property
    def name(self) -> str:
        """``"1of4"``: a file-name tag for this shard."""
        return f"{self.index}of{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/N"`` -> ``Shard(i, N)``; raises ``ValueError`` naming the text otherwise."""
    i, sep, n = text.partition("/")
    try:
        if not sep:
            raise ValueError
        shard = Shard(int(i), int(n))
    except ValueError as exc:
        detail = str(exc) or "use 'i/N', e.g. '0/4'"
        raise ValueError(f"--shard {text!r}: {detail}") from None
    return shard


def shard_arg(text: str) -> Shard:
    """``argparse`` type for ``--shard i/N``."""
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of this process under ``torchrun`` (``RANK`` / ``WORLD_SIZE``, both set by
    it); None when they are not set. A Slurm job array passes ``--shard`` explicitly
    (``SLURM_ARRAY_TASK_ID`` counts from the ``--array`` range's start, not always 0)."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        return Shard(int(env["RANK"]), int(env["WORLD_SIZE"]))
    except ValueError as exc:
        raise ValueError(f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}: {exc}") from None


def resolve_shard(explicit: Shard | None, environ: Mapping[str, str] | None = None) -> Shard:
    """``--shard`` when given, else the environment's (:func:`shard_from_env`), else 0/1."""
    if explicit is not None:
        return explicit
    return shard_from_env(environ) or Shard()


def take_shard(items: Sequence[T], shard: Shard, key: Callable[[T], str] = str) -> list[T]:
    """The items of ``shard``: round-robin over ``items`` sorted by ``key`` (keys must be
    unique, or two processes could not tell their items apart)."""
    ordered = sorted(items, key=key)
    dup = [k for k, n in Counter(key(x) for x in ordered).items() if n > 1]
    if dup:
        raise ValueError(f"duplicate keys cannot be sharded: {sorted(dup)[:5]}")
    return ordered[shard.index :: shard.count]


def shard_files(folder: str | os.PathLike, prefix: str, count: int | None = None) -> list[Path]:
    """The N per-shard files ``<folder>/<prefix><i>of<N>.json``, i = 0..N-1, that a merge
    reads. ``count`` defaults to the N of the files found (one N only). Raises
    ``FileNotFoundError`` naming the missing shards."""
    folder = Path(folder)
    counts = {int(p.stem.rsplit("of", 1)[1]) for p in folder.glob(f"{prefix}*of*.json")}
    if count is None:
        if len(counts) != 1:
            raise ValueError(
                f"{folder}: {prefix}*.json files of {sorted(counts) or 'no'} shard counts"
            )
        count = counts.pop()
    paths = [folder / f"{prefix}{Shard(i, count).name}.json" for i in range(count)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {missing} (run those shards)")
    return paths
