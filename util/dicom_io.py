"""CT volumes from a NIfTI file or a DICOM series folder (read with SimpleITK), with a
nibabel-style RAS+ affine, so both reach the straightening as the same ``(data, affine)``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from util.nifti_io import NiftiError, load_nifti

#: DICOM/ITK world coordinates are LPS+; nibabel's are RAS+ (flip the first two axes).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read the one DICOM series in ``folder``.

    Returns ``(data, affine)``: ``data`` float32 of shape ``(X, Y, Z)`` (columns, rows,
    slices: the voxel order of a NIfTI file) in the stored units after the rescale slope and
    intercept (HU for CT); ``affine`` maps voxel ``(i, j, k)`` to RAS+ mm, as nibabel's.
    Raises ``FileNotFoundError`` when the folder holds no series and ``ValueError`` (naming
    the folder) when it holds several or cannot be read.
    """
    import SimpleITK as sitk  # a heavy import, needed only for DICOM input

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {folder}")
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise FileNotFoundError(f"no DICOM series in {folder}")
    if len(ids) > 1:
        raise ValueError(f"{folder} holds {len(ids)} DICOM series; give one folder per series")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ValueError(f"cannot read the DICOM series in {folder}: {first}") from None
    if img.GetDimension() != 3:
        raise ValueError(f"{folder}: expected a 3D series, got {img.GetDimension()}D")
    data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)).astype(np.float32)
    lps = np.eye(4)
    direction = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=float)  # scale columns
    lps[:3, 3] = img.GetOrigin()
    return data, LPS_TO_RAS @ lps


def load_ct(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` of a CT given as a NIfTI file or a DICOM series folder; float32."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path)
    data, affine, _ = load_nifti(path, dtype=np.float32)
    if data.ndim != 3:
        raise NiftiError(f"{path}: expected a 3D CT, got shape {data.shape}")
    return data, affine
