"""Conventions shared by every dataset, written once.

Geometry of a sagittal slice (``S = img_size``; rows run superior -> inferior, columns
anterior -> posterior, as in the (I, P, L) straightened volumes):

* **mask = 1 marks the band to synthesise.** The band is ``band_px(S)`` rows (40 at 256 px)
  centred on row ``S // 2``: rows ``[S//2 - h2//2, S//2 - h2//2 + h2)``.
* "A geometry" (the generator's input): the target vertebra is cut out and the context above
  and below is shifted so that it closes on the band; the band itself is filled with 0.
* "B geometry" (the ground truth): the slice shifted so the vertebra of height ``h`` rows
  occupies rows ``[S//2 - h//2, S//2 - h//2 + h)``.
* CT intensities: uint8 window on disk, ``[-1, 1]`` in tensors; masks in ``{0, 1}``.
"""

from __future__ import annotations

import argparse
import math

import torch.utils.data

#: Size, in pixels, that every pixel constant of the original is quoted at.
REFERENCE_SIZE = 256
#: Height of the synthesis band at 256 px (the original's ``h2 = 40``).
BAND_PX_AT_256 = 40
#: Height of the central band that discriminator D_3 sees at 256 px.
D3_BAND_PX_AT_256 = 70
#: HU window mapped linearly to uint8 0..255 when CT is stored (bone window, W 1800 / L 400).
CT_WINDOW_HU = (-500.0, 1300.0)


def scaled_px(px_at_256: int, img_size: int) -> int:
    """Scale a pixel constant quoted at 256 px to ``img_size`` (at least 1 px)."""
    return max(1, int(math.floor(px_at_256 * img_size / REFERENCE_SIZE + 0.5)))


def band_px(img_size: int) -> int:
    """Band height ``h2`` in pixels at ``img_size`` (40 at 256, 10 at 64)."""
    return scaled_px(BAND_PX_AT_256, img_size)


def d3_band_px(img_size: int) -> int:
    """Height of discriminator D_3's central band at ``img_size`` (70 at 256, 18 at 64)."""
    return scaled_px(D3_BAND_PX_AT_256, img_size)


def centred_rows(height: int, img_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a run of ``height`` rows centred on ``img_size // 2``."""
    start = img_size // 2 - height // 2
    return start, start + height


def band_rows(img_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the synthesis band at ``img_size``."""
    return centred_rows(band_px(img_size), img_size)


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
