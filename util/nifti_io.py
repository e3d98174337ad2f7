"""NIfTI reading and writing with errors that name the file."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from util.geometry import CT_WINDOW_HU
from util.io import atomic_path


class NiftiError(ValueError):
    """A NIfTI file is missing, unreadable or not what the caller expects."""


def ct_value_problem(data: np.ndarray) -> str | None:
    """What is wrong with the values of a CT volume (None when nothing): CT is stored on the
    uint8 window 0..255 (HU window :data:`~util.geometry.CT_WINDOW_HU` mapped linearly), so
    HU values (outside 0..255) and floats scaled to [0, 1] are refused, not silently used."""
    if data.dtype == np.uint8 or data.size == 0:
        return None
    lo, hi = float(np.min(data)), float(np.max(data))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "CT holds NaN or infinite values"
    if lo < 0 or hi > 255:
        return (
            f"CT values {lo:g}..{hi:g} outside 0..255 ({data.dtype}): HU values must be "
            f"windowed, [{CT_WINDOW_HU[0]:g}, {CT_WINDOW_HU[1]:g}] HU -> 0..255 uint8, as "
            "scripts/straighten.py writes them"
        )
    if np.issubdtype(data.dtype, np.floating) and hi <= 1.0:
        return (
            f"CT values {lo:g}..{hi:g} ({data.dtype}) look scaled to [0, 1]: CT must be stored "
            "on the 0..255 window (uint8); multiply by 255"
        )
    return None


def check_ct_values(data: np.ndarray, path: str | os.PathLike) -> None:
    """Raise :class:`NiftiError` naming ``path`` when :func:`ct_value_problem` finds one."""
    problem = ct_value_problem(data)
    if problem is not None:
        raise NiftiError(f"{path}: {problem}")


def ipl_affine(spacing_mm: float | tuple[float, float, float] = 1.0) -> np.ndarray:
    """Affine of a volume in (I, P, L) orientation: axis 0 runs inferior, 1 posterior,
    2 left, in RAS+ world coordinates (so ``nib.aff2axcodes`` gives ``('I', 'P', 'L')``)."""
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    aff = np.zeros((4, 4))
    aff[2, 0] = -sp[0]  # axis 0 -> -S
    aff[1, 1] = -sp[1]  # axis 1 -> -A
    aff[0, 2] = -sp[2]  # axis 2 -> -R
    aff[3, 3] = 1.0
    return aff


def load_nifti(
    path: str | os.PathLike,
    *,
    expected_shape: tuple[int, ...] | None = None,
    dtype: type | np.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI file fully into memory.

    Returns ``(data, affine, header)``; ``data`` is cast to ``dtype`` when given. Raises
    ``FileNotFoundError`` for a missing file and :class:`NiftiError` (naming the file) for a
    corrupt one, a wrong shape or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (
        OSError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        nib.filebasedimages.ImageFileError,
        ValueError,
    ) as exc:
        raise NiftiError(f"cannot read NIfTI file {path}: {exc}") from exc
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        raise NiftiError(f"{path} has shape {tuple(data.shape)}, expected {tuple(expected_shape)}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise NiftiError(f"{path} contains NaN or infinite values")
    return data, img.affine.copy(), img.header.copy()


def save_nifti(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
) -> None:
    """Write ``data`` as a NIfTI file atomically (temp file + rename)."""
    path = Path(path)
    img = nib.Nifti1Image(np.asarray(data), affine, header=header)
    if header is not None:
        img.set_data_dtype(np.asarray(data).dtype)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path) as tmp:
        # nibabel chooses compression from the suffix, so give the temp file the same one.
        tmp_named = tmp.with_name(tmp.name + suffix)
        try:
            nib.save(img, str(tmp_named))
            os.replace(tmp_named, tmp)
        finally:
            if tmp_named.exists():
                tmp_named.unlink()
