"""Rebuild 3-D volumes from synthesised sagittal slices and write them as NIfTI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from util.geometry import centred_rows, inside, split_key, volume_path
from util.nifti_io import load_nifti, save_nifti


def shift_rows(image: np.ndarray, shift: int) -> np.ndarray:
    """Move a ``(S, W)`` image down by ``shift`` rows (up when negative), edge rows repeated."""
    size = image.shape[0]
    src = np.clip(np.arange(size) - shift, 0, size - 1)
    return image[src]


def _resize(image: np.ndarray, shape: tuple[int, int], nearest: bool) -> np.ndarray:
    if image.shape == shape:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    mode = "nearest" if nearest else "bilinear"
    kw = {} if nearest else {"align_corners": False}
    return F.interpolate(t, size=shape, mode=mode, **kw)[0, 0].numpy()


def write_synthesised_volumes(
    dataset: Any, slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], out_dir: Path
) -> list[Path]:
    """Write ``<out_dir>/CT/<id>.nii.gz`` and ``<out_dir>/label/<id>.nii.gz`` per vertebra.

    Every synthesised slice (composed CT in [-1, 1] and target mask, B geometry at
    ``img_size``) is moved back so the vertebra's centre row is where it was in the input,
    resized to the volume's in-plane size and written over the input slice; other slices
    keep the input. In the label, the target id is replaced by the synthesised mask, which
    overrides the input's neighbour labels where they overlap. Affine and header are the input's.
    """
    written = []
    size = dataset.img_size
    for key, by_slice in slices.items():
        ct, affine, header = load_nifti(volume_path(dataset.root, "CT", key))
        label, _, label_header = load_nifti(volume_path(dataset.root, "label", key))
        _, vid = split_key(key)
        ct_out, label_out = ct.copy(), label.copy()
        for k, (fake, mask) in by_slice.items():
            x1, x2 = dataset.vertebra_rows_in_slice(key, k)
            c0, _ = centred_rows(x2 - x1 + 1, size)
            centre_shift = (x1 + x2) // 2 - (c0 + (x2 - x1) // 2)
            fake_k = _resize(shift_rows(fake, centre_shift), ct.shape[:2], nearest=False)
            mask_k = (
                _resize(
                    shift_rows(mask.astype(np.float32), centre_shift), ct.shape[:2], nearest=True
                )
                > 0.5
            )
            ct_out[:, :, k] = np.clip(np.rint((fake_k + 1.0) * 127.5), 0, 255).astype(ct.dtype)
            lab = label_out[:, :, k]
            lab[lab == vid] = 0
            # the restored vertebra may be taller than the input's gap: it wins over the
            # neighbours' input labels (whose CT context SHRM moved apart)
            lab[mask_k] = vid
        for folder, data, hdr in (("CT", ct_out, header), ("label", label_out, label_header)):
            path = inside(volume_path(out_dir, folder, key), out_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_nifti(path, data, affine, hdr)
            written.append(path)
    return written
