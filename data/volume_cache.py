"""Volumes of a data root as the slice dataset reads them: native ``(H, W, D)`` NIfTI arrays
turned into slice-major ``(D, S, S)`` arrays at ``img_size``, and a bounded LRU of them."""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from util.nifti_io import NiftiError, check_ct_values


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def volume_to_slices(
    data: np.ndarray, kind: str, img_size: int, path: str | Path = "<array>"
) -> np.ndarray:
    """Native ``(H, W, D)`` volume -> slice-major ``(D, S, S)`` contiguous array at ``S =
    img_size``: ``kind`` ``"ct"`` (uint8 window 0..255) and ``"label"`` (ids 0..255) give
    uint8, ``"cam"`` (floats in [0, 1]) float32. ``path`` only names the source in errors."""
    if kind not in ("ct", "label", "cam"):
        raise ValueError(f"kind must be 'ct', 'label' or 'cam', got {kind!r}")
    if data.ndim != 3:
        raise ValueError(f"{path} has shape {data.shape}, expected a 3-D volume (H, W, D)")
    vol = np.moveaxis(data, 2, 0)
    h, w = vol.shape[1:]
    if kind == "label":
        if np.issubdtype(vol.dtype, np.floating):
            vol = np.rint(vol)
        if vol.min() < 0 or vol.max() > 255:
            raise ValueError(f"{path}: label ids must lie in 0..255")
        vol = vol.astype(np.uint8)
        if (h, w) != (img_size, img_size):
            vol = vol[:, _nearest_index(h, img_size)][:, :, _nearest_index(w, img_size)]
        return np.ascontiguousarray(vol)
    if kind == "ct":
        check_ct_values(vol, path)
    same_size = (h, w) == (img_size, img_size)
    if kind == "ct" and vol.dtype == np.uint8 and same_size:
        return np.ascontiguousarray(vol)  # the common case: nothing to convert
    if kind == "cam" and not np.issubdtype(vol.dtype, np.floating):
        raise ValueError(f"{path}: a heatmap must be stored as floats in [0, 1], not {vol.dtype}")
    hi = 255.0 if kind == "ct" else 1.0
    if vol.dtype != np.uint8 and (vol.min() < -1e-4 or vol.max() > hi + 1e-4):
        raise ValueError(f"{path}: values must lie in [0, {hi:g}] ({kind})")
    if not same_size:
        t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[:, None]
        t = F.interpolate(
            t, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True
        )
        vol = t[:, 0].numpy()
    if kind == "ct":
        return np.ascontiguousarray(np.clip(np.rint(vol), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.clip(vol, 0.0, 1.0), dtype=np.float32)


def header_shape(path: Path) -> tuple[int, ...]:
    """Shape of a NIfTI file from its header (``FileNotFoundError``/``NiftiError`` name it)."""
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        return tuple(nib.load(str(path)).shape)
    except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError, ValueError) as exc:
        raise NiftiError(f"cannot read NIfTI file {path}: {exc}") from exc


class VolumeCache:
    """LRU of loaded volumes keyed by path, bounded in bytes (the newest volume always stays);
    ``loads`` counts file reads."""

    def __init__(self, max_mb: float) -> None:
        if max_mb <= 0:
            raise ValueError(f"max_cache_mb must be > 0, got {max_mb}")
        self.max_bytes = int(max_mb * 2**20)
        self.loads = 0
        self.nbytes = 0
        self._data: OrderedDict[Path, np.ndarray] = OrderedDict()

    def get(self, path: Path, load: Callable[[Path], np.ndarray]) -> np.ndarray:
        if path in self._data:
            self._data.move_to_end(path)
            return self._data[path]
        value = load(path)
        self.loads += 1
        self._data[path] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes and len(self._data) > 1:
            self.nbytes -= self._data.popitem(last=False)[1].nbytes
        return value

    def empty_copy(self) -> VolumeCache:
        return VolumeCache(self.max_bytes / 2**20)

    def __len__(self) -> int:
        return len(self._data)
