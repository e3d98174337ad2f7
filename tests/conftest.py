"""Shared pytest fixtures."""

from __future__ import annotations

import json
import runpy
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from util.nifti_io import ipl_affine, save_nifti

REPO = Path(__file__).resolve().parents[1]


def synthetic_vertebra_volumes(
    vid: int,
    *,
    size: int = 64,
    depth: int = 16,
    tall_slices: Iterable[int] = (),
    target_rows: tuple[int, int] = (28, 36),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT (uint8), label (uint8) and heatmap (float32) of shape ``(size, size, depth)``.

    At 64 px (rows scale with ``f = size / 64``): vertebra ``vid - 1`` on rows [12, 24)f,
    the target ``vid`` on ``target_rows`` f (8 rows by default; [26, 38)f, 12 rows, in
    ``tall_slices``), ``vid + 1`` on rows [40, 52)f; all on columns [16, 48)f. The target
    spans slices 2..depth-3, its neighbours 1..depth-2. CT and heatmap are row ramps, so
    every row is identifiable: ``ct[i] = round(255 i / (size - 1))``, ``cam[i] = i / (size-1)``.
    """
    f = size // 64
    label = np.zeros((size, size, depth), np.uint8)
    cols = slice(16 * f, 48 * f)
    label[12 * f : 24 * f, cols, 1 : depth - 1] = vid - 1
    label[40 * f : 52 * f, cols, 1 : depth - 1] = vid + 1
    label[target_rows[0] * f : target_rows[1] * f, cols, 2 : depth - 2] = vid
    for k in tall_slices:
        label[26 * f : 38 * f, cols, k] = vid
    ramp = np.arange(size, dtype=np.float64) / (size - 1)
    ct = np.broadcast_to(np.rint(255 * ramp)[:, None, None], label.shape).astype(np.uint8)
    cam = np.broadcast_to(ramp[:, None, None], label.shape).astype(np.float32)
    return ct, label, cam


def write_vertebra_root(
    root: Path,
    splits: Mapping[str, Mapping[str, int]],
    *,
    size: int = 64,
    depth: int = 16,
    tall_slices: Mapping[str, Iterable[int]] | None = None,
    heatmap: bool = True,
) -> Path:
    """Write a tiny data root (CT/, label/, heatmap/, vertebra_data.json) for every key of
    ``splits`` with :func:`synthetic_vertebra_volumes`, at ``256 / size`` mm spacing."""
    tall_slices = tall_slices or {}
    affine = ipl_affine(256.0 / size)
    for split in splits.values():
        for key in split:
            vid = int(key.rpartition("_")[2])
            ct, label, cam = synthetic_vertebra_volumes(
                vid, size=size, depth=depth, tall_slices=tall_slices.get(key, ())
            )
            save_nifti(root / "CT" / f"{key}.nii.gz", ct, affine)
            save_nifti(root / "label" / f"{key}.nii.gz", label, affine)
            if heatmap:
                save_nifti(root / "heatmap" / f"{key}.nii.gz", cam, affine)
    (root / "vertebra_data.json").write_text(json.dumps(splits), encoding="utf-8")
    return root


@pytest.fixture
def vertebra_root_factory(tmp_path: Path) -> Callable[..., Path]:
    """``make(splits, name="root", **kwargs)`` -> a synthetic vertebra data root under
    ``tmp_path`` (see :func:`write_vertebra_root`)."""

    def make(splits: Mapping[str, Mapping[str, int]], name: str = "root", **kwargs) -> Path:
        return write_vertebra_root(tmp_path / name, splits, **kwargs)

    return make


@pytest.fixture
def vertebra_volumes() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`synthetic_vertebra_volumes`, for tests that need the arrays themselves."""
    return synthetic_vertebra_volumes


@pytest.fixture
def run_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Sequence[object]], int]:
    """``run(name, argv)`` runs ``scripts/<name>.py`` in this process, as
    ``python scripts/<name>.py *argv`` would, and returns its exit status (bad input: 2, with
    one ``error:`` line on stderr)."""

    def run(name: str, argv: Sequence[object]) -> int:
        path = REPO / "scripts" / f"{name}.py"
        monkeypatch.setattr(sys, "argv", [str(path), *map(str, argv)])
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        return 0

    return run
