"""The ground floor: slice geometry, the CT window and the data-root layout, written once.

Nothing here imports the project or any third-party package, so every layer (``util``,
``data``, ``models``, the scripts) can use it.

Geometry of a sagittal slice (``S = img_size``; rows run superior -> inferior, columns
anterior -> posterior, as in the (I, P, L) straightened volumes):

* **mask = 1 marks the band to synthesise.** The band is ``band_px(S)`` rows (40 at 256 px)
  centred on row ``S // 2``: rows ``[S//2 - h2//2, S//2 - h2//2 + h2)``.
* "A geometry" (the generator's input): the target vertebra is cut out and the context above
  and below is shifted so that it closes on the band; the band itself is filled with 0.
* "B geometry" (the ground truth): the slice shifted so the vertebra of height ``h`` rows
  occupies rows ``[S//2 - h//2, S//2 - h//2 + h)``.
* CT intensities: uint8 window on disk, ``[-1, 1]`` in tensors; masks in ``{0, 1}``.

Data root (``--dataroot``)::

    CT/<key>.nii.gz  label/<key>.nii.gz  heatmap/<key>.nii.gz  vertebra_data.json
    healthy_CT/<key>.nii.gz  healthy_label/<key>.nii.gz  heights.json   (phantom only)

with ``key = "<pid>_<vid>"`` (:func:`split_key`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

# ----------------------------------------------------------------------------- pixels
#: Size, in pixels, that every pixel constant of the original is quoted at.
REFERENCE_SIZE = 256
#: Height of the synthesis band at 256 px (the original's ``h2 = 40``).
BAND_PX_AT_256 = 40
#: Height of the central band that discriminator D_3 sees at 256 px.
D3_BAND_PX_AT_256 = 70
#: Pieces of the target vertebra's label (8-connected, in one slice) smaller than this at 256 px
#: are dropped, and a slice needs more target pixels than this to be used (the original's 50).
MIN_PIECE_PX_AT_256 = 50
#: HU window mapped linearly to uint8 0..255 when CT is stored (bone window, W 1800 / L 400).
CT_WINDOW_HU = (-500.0, 1300.0)


def scaled_px(px_at_256: int, img_size: int) -> int:
    """Scale a pixel constant quoted at 256 px to ``img_size`` (at least 1 px)."""
    return max(1, int(math.floor(px_at_256 * img_size / REFERENCE_SIZE + 0.5)))


def scaled_area_px(px_at_256: float, img_size: int) -> float:
    """An area in pixels quoted at 256 px, at ``img_size`` (scales with the square)."""
    return px_at_256 * (img_size / REFERENCE_SIZE) ** 2


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


# ----------------------------------------------------------------------------- data root
#: Split file of a data root: ``{"train": {"<pid>_<vid>": grade, ...}, "val": ..., "test": ...}``.
SPLIT_FILE = "vertebra_data.json"
#: Phantom only: true anterior/middle/posterior heights per key.
HEIGHTS_FILE = "heights.json"
#: Volume folders of a data root (``healthy_*`` only in the phantom).
VOLUME_FOLDERS = ("CT", "label", "heatmap", "healthy_CT", "healthy_label")
#: ``--phase`` values of the whole-vertebra tools and the split(s) each one covers:
#: ``all_eval`` is every vertebra a model never trained on; ``all`` adds the training split.
PHASES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "train": ("train",),
        "val": ("val",),
        "test": ("test",),
        "all_eval": ("val", "test"),
        "all": ("train", "val", "test"),
    }
)

# A patient id: letters, digits, '.', '-' and '_', not starting with '.' or '-' (so never
# '..', never a path separator): an id from a split file cannot name a path outside its root.
_PID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def split_key(key: str) -> tuple[str, int]:
    """``"<pid>_<vid>"`` -> ``(pid, vid)``, split at the last ``_``.

    Raises ``ValueError`` naming the id unless ``vid`` is a label number and ``pid`` a plain
    name (letters, digits, ``._-``; no path separator, no ``..``).
    """
    if not isinstance(key, str):
        raise ValueError(f"vertebra id {key!r} is not a string")
    pid, sep, vid = key.rpartition("_")
    if not sep or not pid or not vid.isdigit() or not vid.isascii():
        raise ValueError(f"vertebra id {key!r} is not of the form <pid>_<label id>")
    if not _PID.fullmatch(pid) or ".." in pid:
        raise ValueError(
            f"vertebra id {key!r}: the patient id may hold only letters, digits, '.', '-' "
            "and '_' (no path separators, no '..')"
        )
    return pid, int(vid)


def make_key(pid: str, vid: int) -> str:
    """``(pid, vid)`` -> ``"<pid>_<vid>"``, checked like :func:`split_key`."""
    key = f"{pid}_{int(vid)}"
    split_key(key)
    return key


def volume_path(root: str | Path, folder: str, key: str) -> Path:
    """``<root>/<folder>/<key>.nii.gz``, with ``key`` checked (:func:`split_key`) so that the
    path stays inside ``root/folder``. ``folder`` is one of :data:`VOLUME_FOLDERS`."""
    if folder not in VOLUME_FOLDERS:
        raise ValueError(f"unknown volume folder {folder!r}; one of {', '.join(VOLUME_FOLDERS)}")
    split_key(key)
    return Path(root) / folder / f"{key}.nii.gz"


def inside(path: str | Path, root: str | Path) -> Path:
    """``path`` resolved, after checking that it lies inside ``root`` (``ValueError`` names
    both otherwise). Use it on every output path built from data before writing."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise ValueError(f"refusing to write {path}: it is outside the output folder {root}")
    return resolved
