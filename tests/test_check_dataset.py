"""data/check.py: a clean root passes; a broken one reports every problem in one run;
scripts/check_dataset.py's exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from data.check import check_dataset
from util.nifti_io import ipl_affine, save_nifti

SHAPE = (32, 32, 8)
ROOT = Path(__file__).resolve().parents[1]


def _write(root: Path, vid: str, *, shape=SHAPE, vert: int | None = None, heat_max=1.0):
    """Write a consistent CT/label/heatmap triple for ``vid`` (pid_vert)."""
    vert = int(vid.rsplit("_", 1)[1]) if vert is None else vert
    lab = np.zeros(shape, np.uint8)
    lab[10:20, 10:20, 2:6] = vert
    ct = np.full(shape, 40, np.uint8)
    heat = np.linspace(0, heat_max, np.prod(shape), dtype=np.float32).reshape(shape)
    aff = ipl_affine(1.0)
    save_nifti(root / "CT" / f"{vid}.nii.gz", ct, aff)
    save_nifti(root / "label" / f"{vid}.nii.gz", lab, aff)
    save_nifti(root / "heatmap" / f"{vid}.nii.gz", heat, aff)


def _index(root: Path, index: dict) -> None:
    (root / "vertebra_data.json").write_text(json.dumps(index))


def test_clean_root_passes(tmp_path):
    _write(tmp_path, "p_01_20")  # pid with '_' is split at the last '_'
    _write(tmp_path, "p2_21")
    _index(tmp_path, {"train": {"p_01_20": 0}, "val": {"p2_21": 2}, "test": {}})
    assert check_dataset(tmp_path) == []
    assert check_dataset(tmp_path, require_splits=("train", "val")) == []
    # test may not be empty when it is required
    probs = check_dataset(tmp_path, require_splits=("test",))
    assert [p.message for p in probs] == ["split 'test' is empty"]


def test_every_problem_reported_at_once(tmp_path):
    _write(tmp_path, "ok_20")
    _write(tmp_path, "nohm_20")
    (tmp_path / "heatmap" / "nohm_20.nii.gz").unlink()
    _write(tmp_path, "shape_20")
    save_nifti(
        tmp_path / "label" / "shape_20.nii.gz", np.full((16, 32, 8), 20, np.uint8), ipl_affine(1.0)
    )
    _write(tmp_path, "absent_20", vert=21)  # label holds 21, the name says 20
    _write(tmp_path, "hot_20", heat_max=1.5)
    _write(tmp_path, "ras_20")
    save_nifti(tmp_path / "CT" / "ras_20.nii.gz", np.zeros(SHAPE, np.uint8), np.eye(4))
    _write(tmp_path, "hu_20")
    save_nifti(tmp_path / "CT" / "hu_20.nii.gz", np.full(SHAPE, 300.0, np.float32), ipl_affine())
    _write(tmp_path, "corrupt_20")
    (tmp_path / "CT" / "corrupt_20.nii.gz").write_bytes(b"not a nifti")
    ids = ["ok_20", "nohm_20", "shape_20", "absent_20", "hot_20", "ras_20", "corrupt_20", "hu_20"]
    index = {"train": {i: 0 for i in ids}, "val": {}, "test": {"ok_20": 5}}
    _index(tmp_path, index)
    probs = check_dataset(tmp_path, require_splits=("train", "val"))
    text = [str(p) for p in probs]
    expected = {
        "vertebra_data.json: split 'val' is empty",
        "ok_20: listed in both 'train' and 'test'",
    }
    assert expected <= set(text), text
    by_id = {}
    for p in probs:
        by_id.setdefault(p.where, []).append(p.message)
    assert any("missing file" in m and "heatmap" in m for m in by_id["nohm_20"])
    assert any("shapes differ" in m for m in by_id["shape_20"])
    assert any("vertebra 20 absent" in m for m in by_id["absent_20"])
    assert any("outside [0, 1]" in m for m in by_id["hot_20"])
    assert any("orientation" in m for m in by_id["ras_20"])
    assert any("cannot read" in m for m in by_id["corrupt_20"])
    # the message goes on to say how HU values are windowed
    (hu,) = by_id["hu_20"]
    assert hu.startswith("CT values 300..300 outside 0..255 (float32): HU values must be")
    assert "ok_20" not in by_id or all("listed in both" in m for m in by_id["ok_20"])
    # a bad grade in a fresh index, and a totally empty index
    _index(tmp_path, {"train": {"ok_20": 7}, "val": {}, "test": {}})
    assert [str(p) for p in check_dataset(tmp_path)] == ["ok_20: grade 7 not in (-1, 0, 1, 2, 3)"]
    _index(tmp_path, {"train": {}, "val": {}})
    msgs = {p.message for p in check_dataset(tmp_path)}
    assert msgs == {"split 'test' is missing", "every split is empty"}


def test_cli_exit_status(tmp_path):
    _write(tmp_path, "a_20")
    _write(tmp_path, "b_20", heat_max=2.0)
    _index(tmp_path, {"train": {"a_20": 0, "b_20": 0}, "val": {}, "test": {}})
    cmd = [sys.executable, "-m", "scripts.check_dataset", "--dataroot", str(tmp_path)]
    bad = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "b_20: heatmap values 0..2 outside [0, 1]" in bad.stderr
    assert "a_20" in bad.stdout  # the per-id table
    (tmp_path / "heatmap" / "b_20.nii.gz").unlink()
    _write(tmp_path, "b_20")
    good = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert good.returncode == 0 and "passes every check" in good.stdout
