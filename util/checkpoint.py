"""Checkpoint files: one dict per file, written atomically, loaded without running code.

A checkpoint holds only tensors, plain containers (dict, list, tuple) and plain values (str,
int, float, bool, None): :func:`save_checkpoint` refuses anything else (naming the entry), and
:func:`load_checkpoint` reads with ``torch.load(weights_only=True)``, so a crafted file can
never execute code; one that needs more is refused with a message naming the file and the
object. The RNG states are stored in that form too (numpy's key as a tensor).

The only other objects on the allow-list (:data:`SAFE_GLOBALS`) are what format-1 files
(written before weights-only loading) need for their numpy RNG state: a numpy ``uint32``
array, rebuilt by numpy's data-only reconstructor.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from util.io import OutputError, atomic_path

#: Bumped when the layout of the checkpoint dict changes. 2: RNG states as tensors/tuples
#: (weights-only loadable) and the learning-rate schedulers saved after their epoch's step.
CHECKPOINT_FORMAT = 2
#: Formats :func:`load_checkpoint` still reads.
READABLE_FORMATS = (1, 2)

#: Beyond tensors and plain containers, what a checkpoint may hold: numpy's reconstruction of
#: a ``uint32`` array (the numpy RNG key of format-1 files). Nothing here can run code.
SAFE_GLOBALS: tuple[Any, ...] = (
    (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
)

_PLAIN = (str, int, float, bool, type(None))


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, unsafe, of another format or does not fit the model."""


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU) and every CUDA device, as tensors, tuples and
    plain values only (so that the checkpoint loads weights-only)."""
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where devices exist); also reads
    the numpy state of format-1 files (a numpy array)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((kind, key.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- files
def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the entry (``checkpoint['rng']['numpy'][1]``) unless ``obj``
    holds only tensors, dicts, lists, tuples and plain values."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, _PLAIN):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint holds "
        "only tensors, dicts, lists, tuples, str, int, float, bool and None"
    )


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename onto it.

    A crash (or an exception) mid-save leaves the previous file at ``path`` untouched; a
    temporary file left by a kill is removed by ``util.run_dir.remove_orphaned_temps``.
    Raises ``TypeError`` for content that would not load weights-only and
    :class:`~util.io.OutputError` (naming ``path``) when the file cannot be written.
    """
    checkpoint = {"format": CHECKPOINT_FORMAT, **checkpoint}
    check_plain(checkpoint)
    with atomic_path(path) as tmp:
        try:
            torch.save(checkpoint, tmp)
        except RuntimeError as exc:  # torch reports a full disk as a RuntimeError
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise OutputError(f"cannot write {path}: {reason}") from exc


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, weights-only.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` (naming the
    file) for one that is corrupt, needs objects outside the allow-list, or has another format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            # (torch warns about the odd pickle protocol of a corrupt file before refusing it)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to parse the bytes is a bad file
        raise _load_error(path, exc) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict")
    if ckpt.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"checkpoint {path} has format {ckpt.get('format')!r}, expected one of "
            f"{READABLE_FORMATS} (written by another version of this code?)"
        )
    return ckpt


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def _load_error(path: Path, exc: Exception) -> CheckpointError:
    """One line for a file ``torch.load`` could not read: refused objects by name, else the
    last line of torch's message."""
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text:
        found = _GLOBAL.search(text)
        what = next(g for g in found.groups() if g) if found else "an object"
        return CheckpointError(
            f"refusing to load checkpoint {path}: it needs {what}, which is not a tensor, a "
            "plain container or on the allow-list (unpickling it could run code)"
        )
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    return CheckpointError(
        f"checkpoint {path} is corrupt or not a checkpoint ({type(exc).__name__}: {reason[:200]})"
    )
