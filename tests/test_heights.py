"""util/heights.py: exact heights of synthetic bodies, robustness, CLI, and a real scan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from util import heights as H
from util.nifti_io import ipl_affine, save_nifti

REPO = Path(__file__).resolve().parents[1]
TOTALSEG = Path("/work/shared/data/totalseg_example")


def _box_ipl(shape=(48, 56, 40), rows=(10, 30), cols=(8, 44), slices=(5, 35)) -> np.ndarray:
    vol = np.zeros(shape, dtype=bool)
    vol[rows[0] : rows[1], cols[0] : cols[1], slices[0] : slices[1]] = True
    return vol


def _hts(h: H.VertebraHeights) -> tuple[float, float, float]:
    return h.anterior_mm, h.middle_mm, h.posterior_mm


@pytest.mark.parametrize("frame", ["image", "pca"])
def test_box_ipl_exact(frame):
    body = _box_ipl()  # 20 rows tall, 36 deep, 30 wide
    h = H.body_heights(body, (1.0, 1.0, 1.0), frame=frame)
    assert _hts(h) == pytest.approx((20.0, 20.0, 20.0), abs=1e-9)
    assert h.tilt_deg == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("frame", ["image", "pca"])
def test_box_ras_anisotropic_exact(frame):
    # RAS array: axis 0 = R (1 mm), 1 = A (0.5 mm), 2 = S (2 mm); box 12 voxels tall = 24 mm
    seg = np.zeros((40, 90, 30), dtype=np.uint8)
    seg[5:35, 10:80, 8:20] = 20
    affine = np.diag([1.0, 0.5, 2.0, 1.0])
    h = H.measure_heights(seg, affine, 20, body=(seg > 0).astype(np.uint8), frame=frame)
    assert _hts(h) == pytest.approx((24.0, 24.0, 24.0), abs=1e-9)
    ipl, spacing = H.to_ipl(seg, affine)
    assert ipl.shape == (30, 90, 40)
    np.testing.assert_allclose(spacing, [2.0, 0.5, 1.0])


def _wedge(anterior: int = 14, posterior: int = 24, depth: int = 30) -> np.ndarray:
    """(I, P, L) body: flat inferior endplate at row 40, height rising linearly A -> P."""
    vol = np.zeros((64, 50, 30), dtype=bool)
    for j in range(depth):
        hj = int(round(anterior + (posterior - anterior) * (j + 0.5) / depth))
        vol[40 - hj : 40, 10 + j, 5:25] = True
    return vol


def test_wedge_anterior_lower_than_posterior():
    body = _wedge()
    img = H.body_heights(body, (1.0, 1.0, 1.0), frame="image")
    # linear height at the centre of each third: 14 + 10 * (1/6, 1/2, 5/6)
    assert _hts(img) == pytest.approx((15.67, 19.0, 22.33), abs=1.0)
    pca = H.body_heights(body, (1.0, 1.0, 1.0), frame="pca")
    assert pca.anterior_mm < pca.middle_mm < pca.posterior_mm
    assert pca.posterior_mm - pca.anterior_mm > 4.0


def test_single_noisy_voxels_change_nothing():
    body = _box_ipl()
    clean = H.body_heights(body, (1.0, 1.0, 1.0), frame="image")
    noisy = body.copy()
    noisy[20, 2, 20] = True  # stray voxel far anterior of the body, central slice
    noisy[2, 25, 20] = True  # stray voxel far above the body, central slice
    noisy[45, 50, 21] = True  # stray voxel posterior-inferior
    assert _hts(H.body_heights(noisy, (1.0, 1.0, 1.0), frame="image")) == _hts(clean)


def test_heights_2d():
    mask = np.zeros((30, 40))
    mask[5:15, 10:22] = 1.0  # 10 rows x 12 cols
    assert _hts(H.heights_2d(mask, row_mm=2.0)) == (20.0, 20.0, 20.0)
    mask[5:8, 10:14] = 0.0  # anterior-superior corner missing: 7 rows there
    h = H.heights_2d(mask)
    assert (h.anterior_mm, h.middle_mm, h.posterior_mm) == (7.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="2"):
        H.heights_2d(np.zeros((3, 4, 5)))


def _vertebra_with_arch(label: int = 20) -> np.ndarray:
    """(I, P, L) label: body 20 rows tall (rows 20-40), posterior arch 34 rows tall behind a
    canal gap on the midline, joined to the body by pedicles outside the mid-sagittal slab."""
    seg = np.zeros((64, 80, 48), dtype=np.uint8)
    seg[20:40, 8:38, 8:40] = label  # body
    seg[14:48, 46:70, 14:34] = label  # arch (laminae + spinous process)
    seg[22:32, 38:46, 8:14] = label  # left pedicle
    seg[22:32, 38:46, 34:40] = label  # right pedicle
    return seg


def test_label_only_body_estimate_excludes_arch():
    seg = _vertebra_with_arch()
    body = H.estimate_body(seg == 20, (1.0, 1.0, 1.0))
    assert body.any()
    assert not body[:, 46:, :].any()  # nothing of the arch
    assert body[:, :, 24].sum() == 20 * 30  # the whole mid-sagittal body section
    h = H.measure_heights(seg, ipl_affine(1.0), 20)
    assert _hts(h) == pytest.approx((20.0, 20.0, 20.0), abs=1e-9)


def test_measure_errors():
    seg = _vertebra_with_arch()
    aff = ipl_affine(1.0)
    with pytest.raises(ValueError, match="absent"):
        H.measure_heights(seg, aff, 21)
    with pytest.raises(ValueError, match="shape"):
        H.measure_heights(seg, aff, 20, body=np.ones((2, 2, 2)))
    cut = seg.copy()
    cut[:22] = 0
    cut[0:25, 8:38, 8:40] = 20  # body reaching the top of the volume
    with pytest.raises(ValueError, match="edge"):
        H.measure_heights(cut, aff, 20, body=(cut > 0).astype(np.uint8))
    with pytest.raises(ValueError, match="frame"):
        H.body_heights(_box_ipl(), (1, 1, 1), frame="sideways")


def test_cli_writes_json(tmp_path):
    seg = _vertebra_with_arch(20)  # VerSe 20 = L1
    seg_path = tmp_path / "seg.nii.gz"
    save_nifti(seg_path, seg, ipl_affine(1.0))
    out = tmp_path / "out" / "heights.json"
    assert H.main(["--seg", str(seg_path), "--label_map", "verse", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data) == ["L1"]
    assert data["L1"]["anterior_mm"] == 20.0 and data["L1"]["posterior_mm"] == 20.0
    assert set(data["L1"]) == {"anterior_mm", "middle_mm", "posterior_mm", "tilt_deg"}

    body_path = tmp_path / "body.nii.gz"
    save_nifti(body_path, np.zeros((3, 3, 3), np.uint8), ipl_affine(1.0))
    with pytest.raises(ValueError, match="shape"):
        H.main(["--seg", str(seg_path), "--body", str(body_path), "--out", str(out)])
    with pytest.raises(ValueError, match="label id 21"):
        H.main(["--seg", str(seg_path), "--labels", "21", "--out", str(out)])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "util.heights",
            "--seg",
            str(tmp_path / "nope.nii.gz"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "nope.nii.gz" in proc.stderr


@pytest.mark.skipif(not TOTALSEG.is_dir(), reason="shared TotalSegmentator example missing")
def test_totalseg_example_plausible():
    img = nib.load(str(TOTALSEG / "vertebrae_labels.nii.gz"))
    seg = np.asanyarray(img.dataobj)
    body = np.asanyarray(nib.load(str(TOTALSEG / "vertebrae_body.nii.gz")).dataobj)
    with_body, skipped = H.measure_all(seg, img.affine, body=body, label_map="totalseg")
    label_only, _ = H.measure_all(seg, img.affine, label_map="totalseg")
    assert {"L1", "L2", "L3", "L4", "L5"} <= set(with_body)
    assert "T11" in skipped  # only a sliver of T11 is in the scan
    for name in ("L1", "L2", "L3", "L4", "L5"):
        hb = with_body[name].as_array()
        assert ((hb > 20.0) & (hb < 35.0)).all(), (name, hb)
        # the label-only body estimate agrees within about one 3 mm voxel
        np.testing.assert_allclose(label_only[name].as_array(), hb, atol=3.0)
    # upper lumbar: anterior not above posterior; L5 wedged the other way; L5 tilted most
    assert with_body["L1"].anterior_mm <= with_body["L1"].posterior_mm
    assert with_body["L5"].anterior_mm > with_body["L5"].posterior_mm
    assert with_body["L5"].tilt_deg > with_body["L3"].tilt_deg + 20


def test_label_maps():
    from util import labels as LB

    assert LB.id_to_name(20) == "L1" and LB.id_to_name(28) == "T13" and LB.id_to_name(25) == "L6"
    assert LB.id_to_name(43, "totalseg") == "T1" and LB.id_to_name(32, "totalseg") == "T12"
    assert LB.id_to_name(44, "totalseg") == "C7" and LB.id_to_name(50, "totalseg") == "C1"
    assert LB.name_to_id("l5", "totalseg") == 27
    # every TotalSegmentator vertebra maps to the VerSe id of the same name
    for ts_id, name in LB.TOTALSEG_ID_TO_NAME.items():
        assert LB.VERSE_ID_TO_NAME[LB.totalseg_to_verse(ts_id)] == name
    vol = np.array([[0, 31, 32], [43, 50, 5]], dtype=np.uint8)  # 5 = an organ id
    np.testing.assert_array_equal(LB.totalseg_to_verse(vol), [[0, 20, 19], [8, 1, 0]])
    with pytest.raises(ValueError, match="not a vertebra"):
        LB.totalseg_to_verse(5)
    with pytest.raises(ValueError, match="label_map"):
        LB.id_to_name(20, "verse2020")


def test_body_mask_off_the_label_grid_is_an_error_naming_it(tmp_path):
    save_nifti(tmp_path / "seg.nii.gz", _box_ipl().astype(np.uint8) * 20, ipl_affine(1.0))
    save_nifti(tmp_path / "small.nii.gz", np.ones((4, 4, 4), np.uint8), ipl_affine(1.0))
    save_nifti(tmp_path / "moved.nii.gz", _box_ipl().astype(np.uint8), ipl_affine(2.0))
    seg = str(tmp_path / "seg.nii.gz")
    with pytest.raises(ValueError, match="small.nii.gz has shape"):
        H.load_seg_and_body(seg, str(tmp_path / "small.nii.gz"))
    with pytest.raises(ValueError, match="moved.nii.gz and .*seg.nii.gz have different affines"):
        H.load_seg_and_body(seg, str(tmp_path / "moved.nii.gz"))
    assert H.load_seg_and_body(seg, None)[2] is None
