"""Cohort straightening: shards, resume, the report, DICOM input (data/cohort.py,
util/shard.py, util/dicom_io.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.cohort import WORK_DIR, folder_cases, merge_shards, straighten_shard
from data.straighten_root import StraightenSettings
from util.dicom_io import load_ct, load_dicom_series
from util.nifti_io import save_nifti
from util.shard import Shard, parse_shard, resolve_shard, shard_from_env, take_shard

TS = Path("/work/shared/data/totalseg_example")
needs_ts = pytest.mark.skipif(not TS.is_dir(), reason="shared TotalSegmentator example missing")
Z_CROP = slice(60, 100)  # L4 (part) to L1 (part) of the example: keeps the test fast
VIDS = "21-22"  # L2, L3


def write_dicom_series(data: np.ndarray, affine: np.ndarray, folder: Path) -> None:
    """Write an (X, Y, Z) HU volume with a RAS affine as a CT DICOM series, one file per slice."""
    import SimpleITK as sitk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)).astype(np.int16))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(lps[:3, 3].tolist())
    img.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    folder.mkdir(parents=True)
    d = img.GetDirection()
    tags = {
        "0008|0060": "CT",
        "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
        "0010|0020": "ts_dicom",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.1",
        "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0028|1052": "0",
        "0028|1053": "1",
    }
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.1.{k + 1}")
        writer.SetFileName(str(folder / f"slice_{k:04d}.dcm"))
        writer.Execute(sl)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """The TotalSegmentator example twice, cropped: ``ts_nifti`` (ct.nii.gz) and ``ts_dicom``
    (the same CT as a DICOM series in ct/), each beside its label NIfTI."""
    root = tmp_path_factory.mktemp("cohort")
    ct_img = nib.load(TS / "ct.nii.gz")
    seg = np.asanyarray(nib.load(TS / "vertebrae_labels.nii.gz").dataobj)[:, :, Z_CROP]
    ct = np.asanyarray(ct_img.dataobj)[:, :, Z_CROP].astype(np.int16)
    affine = ct_img.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ [0, 0, Z_CROP.start] + affine[:3, 3]
    for pid in ("ts_nifti", "ts_dicom"):
        save_nifti(root / pid / "vertebrae_labels.nii.gz", seg, affine)
    save_nifti(root / "ts_nifti" / "ct.nii.gz", ct, affine)
    write_dicom_series(ct, affine, root / "ts_dicom" / "ct")
    return root


SETTINGS = StraightenSettings(vertebrae=(21, 22), label_map="totalseg")


def _quiet(*_a, **_k) -> None:
    pass


@needs_ts
def test_dicom_series_reads_back_as_the_nifti(cohort):
    ct, aff = load_ct(cohort / "ts_nifti" / "ct.nii.gz")
    ct_d, aff_d = load_dicom_series(cohort / "ts_dicom" / "ct")
    assert ct_d.shape == ct.shape and ct_d.dtype == np.float32
    np.testing.assert_array_equal(ct_d, ct)
    np.testing.assert_allclose(aff_d, aff, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="no DICOM series"):
        load_dicom_series(cohort / "ts_nifti")


@needs_ts
def test_two_shards_give_the_same_volumes_for_nifti_and_dicom(cohort, tmp_path, run_script):
    out = tmp_path / "root"
    for i in range(2):
        args = ["--cases_root", cohort, "--label_map", "totalseg", "--vertebrae", VIDS]
        assert (
            run_script("straighten", [*map(str, args), "--out", str(out), "--shard", f"{i}/2"]) == 0
        )
    reports = [json.loads((out / WORK_DIR / f"shard_{i}of2.json").read_text()) for i in range(2)]
    assert [sorted(r["cases"]) for r in reports] == [["ts_dicom"], ["ts_nifti"]]  # disjoint
    assert not (out / "vertebra_data.json").exists()  # shards never write the shared index
    assert run_script("straighten", ["--out", str(out), "--merge"]) == 0
    index = json.loads((out / "vertebra_data.json").read_text())
    ids = {f"ts_{kind}_{v}": -1 for kind in ("dicom", "nifti") for v in (21, 22)}
    assert index == {"train": {}, "val": {}, "test": ids}
    one = tmp_path / "one"  # the same cohort in one process: the same index, byte for byte
    straighten_shard(folder_cases(cohort), one, SETTINGS, log=_quiet)
    merge_shards(one)
    for name in ("vertebra_data.json", "straighten_report.json"):
        assert (one / name).read_bytes() == (out / name).read_bytes()
    cohort_rep = json.loads((out / "straighten_cohort.json").read_text())
    assert cohort_rep["summary"] == {"done": 2, "skipped": 0, "failed": 0, "vertebrae": 4}
    for v in (21, 22):
        for folder in ("CT", "label"):
            a = np.asanyarray(nib.load(out / folder / f"ts_nifti_{v}.nii.gz").dataobj)
            b = np.asanyarray(nib.load(out / folder / f"ts_dicom_{v}.nii.gz").dataobj)
            assert a.shape == (256, 256, 64) and a.any()
            np.testing.assert_array_equal(a, b)


@needs_ts
def test_restarted_shard_redoes_only_the_incomplete_case(cohort, tmp_path):
    out = tmp_path / "root"
    first = straighten_shard(folder_cases(cohort), out, SETTINGS, log=_quiet)
    assert {r["status"] for r in first["cases"].values()} == {"done"}
    kept = out / "CT" / "ts_nifti_21.nii.gz"
    mtime = kept.stat().st_mtime_ns
    (out / "label" / "ts_dicom_22.nii.gz").unlink()  # as if killed mid-case
    again = straighten_shard(folder_cases(cohort), out, SETTINGS, log=_quiet)
    status = {pid: r["status"] for pid, r in again["cases"].items()}
    assert status == {"ts_dicom": "done", "ts_nifti": "skipped"}
    assert again["cases"]["ts_nifti"]["reason"] == "already done"
    assert kept.stat().st_mtime_ns == mtime  # not rewritten
    assert (out / "label" / "ts_dicom_22.nii.gz").is_file()
    # other settings: the outputs are no longer complete for them, so the case runs again
    other = StraightenSettings(vertebrae=(21,), label_map="totalseg")
    third = straighten_shard(folder_cases(cohort), out, other, log=_quiet)
    assert {r["status"] for r in third["cases"].values()} == {"done"}
    # a manifest cut short (killed mid-write without the atomic rename) counts as absent
    (out / WORK_DIR / "cases" / "ts_nifti.json").write_text('{"pid": "ts_ni')
    fourth = straighten_shard(folder_cases(cohort), out, other, log=_quiet)
    status = {pid: r["status"] for pid, r in fourth["cases"].items()}
    assert status == {"ts_dicom": "skipped", "ts_nifti": "done"}
    merged = merge_shards(out)
    assert merged["summary"]["vertebrae"] == 2


def test_report_lists_skipped_and_failed_cases(tmp_path, run_script, capsys):
    cases = tmp_path / "cases"
    (cases / "no_label").mkdir(parents=True)
    save_nifti(cases / "no_ct" / "seg.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    save_nifti(cases / "empty" / "seg.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    save_nifti(cases / "empty" / "ct.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    out = tmp_path / "root"
    assert run_script("straighten", ["--cases_root", str(cases), "--out", str(out)]) == 1
    rep = json.loads((out / "straighten_cohort.json").read_text())
    assert rep["summary"] == {"done": 0, "skipped": 2, "failed": 1, "vertebrae": 0}
    assert rep["cases"]["no_label"]["reason"].startswith("no vertebra label file")
    assert rep["cases"]["no_ct"]["reason"].startswith("no CT")
    assert rep["cases"]["empty"]["error"].startswith("ValueError: ")
    assert "no vertebra labels" in rep["cases"]["empty"]["error"]
    printed = capsys.readouterr().out
    assert "failed  empty: ValueError" in printed and "0 done, 2 skipped, 1 failed" in printed


def test_merge_needs_every_shard(tmp_path, run_script, capsys):
    (tmp_path / WORK_DIR).mkdir()
    (tmp_path / WORK_DIR / "shard_0of2.json").write_text("{}")
    assert run_script("straighten", ["--out", str(tmp_path), "--merge"]) == 2
    assert "shard_1of2.json" in capsys.readouterr().err


def test_shards_are_disjoint_deterministic_and_cover_everything():
    items = [f"p{n:03d}" for n in range(11)]
    shards = [take_shard(items[::-1], Shard(i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == items  # a partition, whatever the listing order
    assert [len(s) for s in shards] == [4, 4, 3]
    assert shards[1] == take_shard(items, Shard(1, 3))
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("4/4", "1", "a/2", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="duplicate"):
        take_shard(["a", "a"], Shard())


def test_shard_from_torchrun_environment():
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2)
    assert shard_from_env({}) is None
    assert resolve_shard(None, {}) == Shard(0, 1)
    assert resolve_shard(Shard(0, 3), {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(0, 3)
