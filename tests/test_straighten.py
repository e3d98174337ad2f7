"""Spine straightening: a bent analytic phantom comes back straight; real data (TotalSegmentator
example, HealthiVert case 0007) give the right geometry and match the original project."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data.check import check_dataset
from util.nifti_io import save_nifti
from util.straighten import (
    AIR_HU,
    Centreline,
    load_centroid_json,
    sample_grid,
    straighten_case,
    straighten_volume,
    window_ct,
)

DATA = Path("/work/shared/data")
TS = DATA / "totalseg_example"
HV = DATA / "healthivert_0007"
SHAPE = (64, 64, 40)  # small boxes keep the tests fast; the CLI writes 256 x 256 x 64

# ---- analytic phantom in straight coordinates (s inferior, a posterior, l left; mm) ---------
VIDS = (18, 19, 20, 21, 22)
PITCH = 28.0  # centroid spacing along the spine
H_ANT, H_POST = 16.0, 22.0  # wedge body: height grows linearly from front to back
A_BODY = (-14.0, 10.0)  # body A-P extent around the curve


def _phantom(s: np.ndarray, a: np.ndarray, l: np.ndarray) -> np.ndarray:  # noqa: E741
    """Labels of the straight spine: wedge bodies plus a posterior process left of midline
    (so a flip of P or L would show)."""
    out = np.zeros(np.broadcast(s, a, l).shape, dtype=np.uint8)
    for n, vid in enumerate(VIDS):
        ds = s - n * PITCH
        frac = np.clip((a - A_BODY[0]) / (A_BODY[1] - A_BODY[0]), 0, 1)
        half_h = 0.5 * (H_ANT + (H_POST - H_ANT) * frac)
        body = (np.abs(ds) <= half_h) & (a >= A_BODY[0]) & (a <= A_BODY[1]) & (np.abs(l) <= 14)
        proc = (np.abs(ds) <= 5) & (a >= 14) & (a <= 26) & (l >= 0) & (l <= 6)
        out[body | proc] = vid
    return out


def _bend(x: np.ndarray, origin: np.ndarray, e_i: np.ndarray, e_b: np.ndarray, radius: float):
    """World points (..., 3) -> straight (s, b, w) for a spine bent on a circular arc that
    starts at ``origin`` heading ``e_i`` and turns towards ``e_b`` (b along the in-plane normal,
    w along ``e_i x e_b``)."""
    rel = x - (origin + radius * e_b)
    u, v, w = rel @ e_i, rel @ e_b, rel @ np.cross(e_i, e_b)
    return radius * np.arctan2(u, -v), radius - np.hypot(u, v), w


def _bent_case(plane: str):
    """Curved label volume on an oblique anisotropic grid, its affine and exact centroids."""
    e_i = np.array([0.0, 0.0, -1.0])  # inferior in RAS
    post, left = np.array([0.0, -1.0, 0.0]), np.array([-1.0, 0.0, 0.0])
    e_b = -post if plane == "sagittal" else left  # bend towards anterior / left
    origin = np.array([10.0, -20.0, 100.0]) - 20 * e_i

    def to_straight(x):
        s, b, w = _bend(x, origin, e_i, e_b, radius=160.0)
        s = s - 20.0  # first centroid 20 mm down the arc
        # e_i x anterior = right, e_i x left = anterior (RAS)
        if plane == "sagittal":  # b along anterior, w along right
            return s, -b, -w
        return s, -w, b  # b along left, w along anterior

    rot = np.linalg.qr(np.array([[0.9, 0.2, 0.1], [-0.1, 0.95, 0.2], [0.1, -0.2, 0.9]]))[0]
    spacing = np.array([1.1, 0.9, 1.3])
    affine = np.eye(4)
    affine[:3, :3] = rot * spacing
    # Grid covering the bent phantom: bounding box of the centreline +- 40 mm.
    s_all = np.linspace(-40, PITCH * 4 + 40, 50)
    phi = (s_all + 20) / 160.0
    pts = origin + 160.0 * np.sin(phi)[:, None] * e_i + 160.0 * (1 - np.cos(phi))[:, None] * e_b
    lo, hi = pts.min(0) - 40, pts.max(0) + 40
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    vox = corners @ np.linalg.inv(affine[:3, :3]).T
    affine[:3, 3] = vox.min(0) @ affine[:3, :3].T
    shape = tuple(np.ceil(vox.max(0) - vox.min(0)).astype(int) + 1)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    s, a, lat = to_straight(world)
    label = _phantom(s, a, lat)
    centroids = {}
    for vid in VIDS:
        m = label == vid
        centroids[vid] = (np.argwhere(m).mean(0) @ affine[:3, :3].T) + affine[:3, 3]
    return label, affine, centroids, to_straight


def _heights(label: np.ndarray, vid: int, spacing: float = 1.0) -> np.ndarray:
    """(anterior, middle, posterior) body height in mm: mean column height (rows of ``vid``)
    in each third of the body's A-P run, over the 5 central sagittal slices. The body is the
    run of columns that starts at the anterior-most column (the canal separates it from the
    posterior elements in mid-sagittal slices); 10 % is trimmed at each end."""
    m = label == vid
    k0 = int(round(ndimage.center_of_mass(m)[2]))
    out = []
    for k in range(k0 - 2, k0 + 3):
        h = m[:, :, k].sum(0)
        cols = np.nonzero(h)[0]
        run = cols[: np.argmax(np.diff(np.append(cols, cols[-1] + 2)) > 1) + 1]
        trim = max(1, len(run) // 10)
        run = run[trim:-trim]
        out.append([h[t].mean() for t in np.array_split(run, 3)])
    return np.mean(out, 0) * spacing


def _expected(vol_vid: int, centroid_straight, shape=SHAPE) -> np.ndarray:
    grids = [np.arange(n) - n // 2 for n in shape]
    i, j, k = np.meshgrid(*grids, indexing="ij")
    s0, a0, l0 = centroid_straight
    return _phantom(s0 + i, a0 + j, l0 + k)


@pytest.mark.parametrize("plane", ["sagittal", "coronal"])
def test_bent_phantom_straightens_back(plane):
    label, affine, centroids, to_straight = _bent_case(plane)
    ct = np.where(label > 0, 700.0, -50.0).astype(np.float32)
    vols = {v.vid: v for v in straighten_case(label, affine, ct=ct, out_shape=SHAPE)}
    assert sorted(vols) == list(VIDS)
    for vid, vol in vols.items():
        cs = [float(x) for x in to_straight(centroids[vid])]
        exp = _expected(vid, cs)
        got = vol.label == vid
        dice = 2 * (got & (exp == vid)).sum() / (got.sum() + (exp == vid).sum())
        assert dice > 0.9, (plane, vid, dice)
        # (c) heights before (straight phantom) and after straightening agree within 1 mm
        np.testing.assert_allclose(_heights(vol.label, vid), _heights(exp, vid), atol=1.0)
        # orientation: the process (the label beyond 14 mm behind the centre) sits posterior
        # (axis 1) and left of the midline (axis 2); a flipped axis moves it across
        proc = got.copy()
        proc[:, : SHAPE[1] // 2 + 14] = False
        assert proc.sum() > 300 and ndimage.center_of_mass(proc)[2] > SHAPE[2] // 2 + 1
        # anatomy around it: the vertebra above is at lower rows (axis 0 runs inferior)
        if vid - 1 in VIDS:
            assert ndimage.center_of_mass(vol.label == vid - 1)[0] < SHAPE[0] // 2 - 20
        # CT: bone window value inside, nothing outside the scan is brighter than air
        assert np.median(vol.ct[got]) == window_ct(np.array(700.0))
        assert vol.ct.dtype == np.uint8 and vol.label.dtype == np.uint8
    # interior vertebra heights: the phantom's truth (anterior 16 mm < posterior 22 mm)
    h = _heights(vols[20].label, 20)
    assert h[0] < h[1] < h[2] and 15.0 < h[0] < 19.0 and 19.0 < h[2] < 23.0


def test_centroid_lands_on_centre_voxel_and_outside_is_air():
    label, affine, centroids, _ = _bent_case("sagittal")
    line = Centreline(np.stack([centroids[v] for v in VIDS]))
    grid = sample_grid(line, centroids[20], SHAPE)
    origin, step_p, step_l = grid
    c = np.array(SHAPE) // 2
    centre = origin[c[0]] + c[1] * step_p[c[0]] + c[2] * step_l[c[0]]
    np.testing.assert_allclose(centre, centroids[20], atol=1e-3)
    # a grid far beyond the scan: everything is air, inside fraction 0
    far = (origin + 1000.0, step_p, step_l)
    hu, inside = straighten_volume(
        label.astype(np.float32), affine, far, SHAPE, order=1, cval=AIR_HU
    )
    assert inside == 0.0 and np.all(hu == AIR_HU) and np.all(window_ct(hu) == 0)


def test_centroid_json_direction_and_errors(tmp_path):
    shape, aff = (280, 180, 179), nib.load(HV / "raw_0007_msk.nii.gz").affine
    ijk = np.array([50.0, 102.0, 100.0])
    # The same voxel given in PIR codes (P = j, I = i, R = flipped k).
    entries = [
        {"direction": ["P", "I", "R"]},
        {"label": 19, "X": ijk[1], "Y": ijk[0], "Z": shape[2] - 1 - ijk[2]},
    ]
    path = tmp_path / "ctd.json"
    path.write_text(json.dumps(entries))
    world = load_centroid_json(path, shape, aff)[19]
    np.testing.assert_allclose(world, ijk @ aff[:3, :3].T + aff[:3, 3], atol=1e-9)
    path.write_text('[{"label": 19, "X": 1.0}]')
    with pytest.raises(ValueError, match="needs 'label'"):
        load_centroid_json(path, shape, aff)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_centroid_json(path, shape, aff)
    with pytest.raises(FileNotFoundError):
        load_centroid_json(tmp_path / "none.json", shape, aff)
    one = np.zeros((20, 20, 20), np.uint8)
    one[5:15, 5:15, 5:15] = 20
    with pytest.raises(ValueError, match="at least 2"):
        list(straighten_case(one, np.eye(4), min_volume_mm3=0))
    with pytest.raises(ValueError, match="no vertebra label"):
        list(straighten_case(np.zeros((4, 4, 4), np.uint8), np.eye(4)))


@pytest.mark.skipif(not TS.is_dir(), reason="shared TotalSegmentator example not available")
def test_totalseg_example_cli_writes_a_valid_dataroot(tmp_path, capsys, run_script):
    out = tmp_path / "root"
    rc = run_script(
        "straighten",
        [
            "--ct",
            str(TS / "ct.nii.gz"),
            "--seg",
            str(TS / "vertebrae_labels.nii.gz"),
            "--label_map",
            "totalseg",
            "--pid",
            "ts_0001",
            "--vertebrae",
            "20-21",
            "--out",
            str(out),
        ],
    )
    assert rc == 0
    index = json.loads((out / "vertebra_data.json").read_text())
    assert index == {"train": {}, "val": {}, "test": {"ts_0001_20": -1, "ts_0001_21": -1}}
    for vid in (20, 21):
        for folder, dtype in (("CT", np.uint8), ("label", np.uint8), ("heatmap", np.float32)):
            img = nib.load(out / folder / f"ts_0001_{vid}.nii.gz")
            data = np.asanyarray(img.dataobj)
            assert data.shape == (256, 256, 64) and data.dtype == dtype
            assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
        lab = np.asanyarray(nib.load(out / "label" / f"ts_0001_{vid}.nii.gz").dataobj)
        # VerSe ids only (TotalSegmentator 26..33 -> 26 and 18..24), the target near the centre
        assert set(np.unique(lab)) <= {0, 18, 19, 20, 21, 22, 23, 24, 26} and vid in lab
        com = np.array(ndimage.center_of_mass(lab == vid))
        assert np.all(np.abs(com - [128, 128, 32]) < 4), com  # 3 mm input voxels
        # the next vertebra (L1 -> L2, ...) lies inferior: larger row index
        assert ndimage.center_of_mass(lab == vid + 1)[0] > 128 + 15
    assert check_dataset(out) == []
    report = json.loads((out / "straighten_report.json").read_text())
    assert set(report) == {"ts_0001_20", "ts_0001_21"}


@pytest.mark.skipif(not TS.is_dir(), reason="shared TotalSegmentator example not available")
def test_totalseg_frame_matches_patient_axes():
    from util.labels import totalseg_to_verse
    from util.straighten import centroids_from_label, ordered_centreline

    img = nib.load(TS / "vertebrae_labels.nii.gz")
    seg = totalseg_to_verse(np.asanyarray(img.dataobj).astype(np.int64))
    body = np.asanyarray(nib.load(TS / "vertebrae_body.nii.gz").dataobj) > 0
    ctd = centroids_from_label(seg, img.affine, 1000.0)
    line = ordered_centreline(ctd)
    t, p, lft = line.frame(np.array([line.closest_s(ctd[21])]))
    # RAS world: inferior (0,0,-1), posterior (0,-1,0), left (-1,0,0); a lumbar spine is near
    assert t[0] @ [0, 0, -1] > 0.9 and p[0] @ [0, -1, 0] > 0.9 and lft[0] @ [-1, 0, 0] > 0.9
    # the vertebral body lies anterior of the centroid (smaller P index)
    vol = next(
        straighten_case(
            np.where(body, seg, 0),
            img.affine,
            centroids=ctd,
            vertebrae=[21],
            out_shape=(96, 96, 48),
        )
    )
    assert ndimage.center_of_mass(vol.label == 21)[1] < 48 - 5


@pytest.mark.skipif(not HV.is_dir(), reason="shared HealthiVert case 0007 not available")
def test_case_0007_matches_original_straightened_bodies():
    img = nib.load(HV / "raw_0007_msk.nii.gz")
    seg = np.asanyarray(img.dataobj)
    ctd = load_centroid_json(HV / "raw_0007_centroids.json", seg.shape, img.affine)
    vids = list(range(18, 24))
    for vol in straighten_case(seg, img.affine, centroids=ctd, vertebrae=vids):
        theirs = np.asanyarray(nib.load(HV / f"straightened_label/0007_{vol.vid}.nii.gz").dataobj)
        # The original keeps the vertebral body only: cut ours at the body's posterior wall
        # (end of the anterior run of columns in the mid-sagittal slice).
        mid = vol.label[:, :, 32] == vol.vid
        cols = np.nonzero(mid.any(0))[0]
        wall = cols[np.argmax(np.diff(np.append(cols, cols[-1] + 2)) > 1)]
        ours = np.where(np.arange(256)[None, :, None] <= wall, vol.label, 0)
        n_ours, n_theirs = (ours == vol.vid).sum(), (theirs == vol.vid).sum()
        assert abs(n_ours / n_theirs - 1) < 0.05, (vol.vid, n_ours, n_theirs)
        h_ours, h_theirs = _heights(ours, vol.vid), _heights(theirs, vol.vid)
        assert np.all(np.abs(h_ours / h_theirs - 1) < 0.05), (vol.vid, h_ours, h_theirs)


@pytest.mark.skipif(not HV.is_dir(), reason="shared HealthiVert case 0007 not available")
def test_rigid_vertebrae_keep_native_heights():
    """Perpendicular planes bend a vertebra with the curve; rigid_fraction 0.4 keeps the heights
    of a rigid reslice (same axis at the centroid, no bending) within 1 mm."""
    from util.straighten import ordered_centreline

    img = nib.load(HV / "raw_0007_msk.nii.gz")
    seg = np.asanyarray(img.dataobj).astype(np.uint8)
    ctd = load_centroid_json(HV / "raw_0007_centroids.json", seg.shape, img.affine)
    line = ordered_centreline(ctd)
    shape = (96, 128, 64)
    worst_bent = 0.0
    for vid in (19, 20, 23):
        tan = line.frame(np.array([line.closest_s(ctd[vid])]))[0][0]
        rigid_line = Centreline(np.stack([ctd[vid] - 20 * tan, ctd[vid] + 20 * tan]))
        grid = sample_grid(rigid_line, ctd[vid], shape)
        native, _ = straighten_volume(seg, img.affine, grid, shape, order=0, cval=0)
        h_native = _heights(native, vid)
        for rf in (0.0, 0.4):
            vol = next(
                straighten_case(
                    seg,
                    img.affine,
                    centroids=ctd,
                    vertebrae=[vid],
                    out_shape=shape,
                    rigid_fraction=rf,
                )
            )
            diff = np.abs(_heights(vol.label, vid) - h_native)
            if rf == 0.4:
                assert np.all(diff < 1.0), (vid, diff)
            else:
                worst_bent = max(worst_bent, diff.max())
    assert worst_bent > 1.0  # the bending is real on this lordotic case (about 2.5 mm at L1)


def test_cli_errors(tmp_path, capsys, run_script):
    assert run_script("straighten", ["--seg", tmp_path / "none.nii.gz", "--out", tmp_path]) == 2
    assert "file not found" in capsys.readouterr().err
    seg = np.zeros((8, 8, 8), np.uint8)
    save_nifti(tmp_path / "empty.nii.gz", seg, np.eye(4))
    assert run_script("straighten", ["--seg", tmp_path / "empty.nii.gz", "--out", tmp_path]) == 2
    assert "no vertebra labels" in capsys.readouterr().err
    (tmp_path / "g.csv").write_text("id,grade\na_20,7\n")
    assert (
        run_script(
            "straighten",
            [
                "--seg",
                str(tmp_path / "empty.nii.gz"),
                "--grades",
                str(tmp_path / "g.csv"),
                "--out",
                str(tmp_path),
            ],
        )
        == 2
    )
    assert "grade 7" in capsys.readouterr().err
