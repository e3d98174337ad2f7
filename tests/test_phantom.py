"""Procedural phantom: determinism, data-root layout, anatomy and fracture ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.phantom import generate_dataset
from data.phantom_anatomy import ANATOMY, SAMPLE_VERTEBRAE, height_loss
from data.phantom_patients import GENANT_BANDS, plan_fractures, sample_patient_params
from data.phantom_render import crop_vertebra, render_patient
from util.geometry import band_px
from util.heights import body_heights

S = 64  # img_size of the generated sets: 64 x 64 x 16 voxels at 4 mm
DIRS = ("CT", "label", "heatmap", "healthy_CT", "healthy_label")
SAMPLE_IDS = [ANATOMY[n][0] for n in SAMPLE_VERTEBRAE]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("phantom")
    out = {}
    for key, seed, workers in (("a", 0, 2), ("b", 0, 1), ("c", 1, 2)):
        out[key] = base / key
        generate_dataset(out[key], 4, img_size=S, seed=seed, workers=workers, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _json(root: Path, name: str) -> dict:
    return json.loads((root / name).read_text())


def _vid(case: str) -> int:
    return int(case.rsplit("_", 1)[1])


def test_same_seed_is_byte_identical_whatever_the_workers(roots: dict[str, Path]) -> None:
    a, b = _files(roots["a"]), _files(roots["b"])
    assert list(a) == list(b)
    assert [k for k in a if a[k] != b[k]] == []


def test_other_seed_differs(roots: dict[str, Path]) -> None:
    ct_a = _load(roots["a"] / "CT" / "phantom000_20.nii.gz")
    ct_c = _load(roots["c"] / "CT" / "phantom000_20.nii.gz")
    assert np.mean(ct_a != ct_c) > 0.5
    assert _json(roots["a"], "heights.json") != _json(roots["c"], "heights.json")


def test_layout_shapes_dtypes_orientation_and_json_keys(roots: dict[str, Path]) -> None:
    root = roots["a"]
    splits = _json(root, "vertebra_data.json")
    heights = _json(root, "heights.json")
    assert set(splits) == {"train", "val", "test"}
    cases = {c for d in splits.values() for c in d}
    assert len(cases) == 4 * len(SAMPLE_VERTEBRAE) == len(heights)
    assert set(heights) == cases
    # Splits by patient: no patient in two splits, each split non-empty at 4 patients.
    pids = {k: {c.rsplit("_", 1)[0] for c in d} for k, d in splits.items()}
    assert all(pids.values())
    assert not (
        pids["train"] & pids["val"] or pids["train"] & pids["test"] or pids["val"] & pids["test"]
    )
    for sub, dtype in (("CT", np.uint8), ("label", np.uint8), ("heatmap", np.float32)):
        names = {p.name[: -len(".nii.gz")] for p in (root / sub).glob("*.nii.gz")}
        assert names == cases, sub
        img = nib.load(str(root / sub / f"{sorted(cases)[0]}.nii.gz"))
        assert img.shape == (S, S, S // 4)
        assert np.asanyarray(img.dataobj).dtype == dtype
        assert nib.aff2axcodes(img.affine) == ("I", "P", "L")
        assert np.allclose(img.header.get_zooms(), 256 / S)
    for split in splits.values():
        for case, grade in split.items():
            assert grade == heights[case]["grade"]


def test_centre_voxel_holds_the_named_vertebra(roots: dict[str, Path]) -> None:
    known = set(SAMPLE_IDS) | {ANATOMY[n][0] for n in ANATOMY} | {0}
    for path in sorted((roots["a"] / "label").glob("*.nii.gz")):
        lab = _load(path)
        vid = _vid(path.name[: -len(".nii.gz")])
        assert lab[S // 2, S // 2, S // 8] == vid, path.name
        assert set(np.unique(lab).tolist()) <= known
        # Neighbours above and below are in the volume too.
        idx = SAMPLE_IDS.index(vid)
        for nb in (SAMPLE_IDS[idx - 1] if idx else 16, SAMPLE_IDS[idx + 1] if idx < 7 else 26):
            assert (lab == nb).any(), (path.name, nb)


def test_fracture_grades_fall_in_genant_bands(roots: dict[str, Path]) -> None:
    heights = _json(roots["a"], "heights.json")
    n_frac = 0
    for case, rec in heights.items():
        if rec["grade"] == 0:
            assert rec["shape"] == "none" and rec["fractured"] == rec["healthy"]
            continue
        n_frac += 1
        lo, hi = GENANT_BANDS[rec["grade"]]
        assert lo <= height_loss(rec["healthy"], rec["fractured"]) <= hi, case
        assert _vid(case) not in (SAMPLE_IDS[0], SAMPLE_IDS[-1])
    assert n_frac == round(0.2 * len(heights))


def test_healthy_files_exist_exactly_for_fractured(roots: dict[str, Path]) -> None:
    heights = _json(roots["a"], "heights.json")
    fractured = {c for c, r in heights.items() if r["grade"] > 0}
    for sub in ("healthy_CT", "healthy_label"):
        assert {p.name[: -len(".nii.gz")] for p in (roots["a"] / sub).glob("*")} == fractured


def _body_column_heights(lab: np.ndarray, vid: int, spacing: float) -> np.ndarray:
    """Column heights (mm) of the body (the anterior run of label columns) in the mid slice."""
    cols = (lab[:, :, lab.shape[2] // 2] == vid).sum(axis=0)
    on = np.flatnonzero(cols)
    gap = np.flatnonzero(np.diff(on) > 1)  # the canal separates body and posterior arch
    end = on[gap[0]] if len(gap) else on[-1]
    return cols[on[0] : end + 1] * spacing


def test_labels_remeasured_show_the_loss(roots: dict[str, Path]) -> None:
    """At 4 mm the loss re-measured on healthy vs fractured label volumes agrees with
    heights.json within the quantisation (one voxel on ~25 mm)."""
    root, heights = roots["a"], _json(roots["a"], "heights.json")
    for case, rec in heights.items():
        if rec["grade"] == 0:
            continue
        vid = _vid(case)
        h = _body_column_heights(_load(root / "healthy_label" / f"{case}.nii.gz"), vid, 4.0)
        f = _body_column_heights(_load(root / "label" / f"{case}.nii.gz"), vid, 4.0)
        n = min(len(h), len(f))
        thirds = np.array_split(np.arange(n), 3)
        loss = max(1 - f[t].mean() / h[t].mean() for t in thirds)
        assert abs(loss - height_loss(rec["healthy"], rec["fractured"])) < 0.2, case
        assert loss > 0.1, case


@pytest.mark.parametrize("shape", ["wedge", "biconcave", "crush"])
def test_fine_render_remeasured_matches_grade(shape: str) -> None:
    """At 0.5 mm, util.heights on the rendered labels reproduces the grade's band."""
    grades = {18: 1, 20: 2, 22: 3}
    p = sample_patient_params(np.random.default_rng(5), {v: (g, shape) for v, g in grades.items()})
    vert = {v.verse_id: v for v in p.vertebrae}
    for vid, grade in grades.items():
        losses, info = [], None
        for fractures in (True, False):
            probe = render_patient(p, 4.0, fractures=fractures)
            c = probe.info(vid).centroid_mm[0]
            r = render_patient(
                p, 0.5, fractures=fractures, fov_ap_mm=64, fov_lr_mm=24, z_range_mm=(c - 25, c + 25)
            )
            body = (r.labels == vid) & (r.y_mm[None, :, None] < 0.5 * vert[vid].depth_mm + 0.5)
            losses.append(body_heights(body, (0.5, 0.5, 0.5), frame="image").as_array())
            info = r.info(vid) if fractures else info
        measured = float(np.max(1 - losses[0] / losses[1]))
        truth = height_loss(info.healthy_heights, info.fractured_heights)
        lo, hi = GENANT_BANDS[grade]
        assert abs(measured - truth) < 0.03, (shape, vid, measured, truth)
        assert lo - 0.01 <= measured <= hi + 0.01


def test_column_closure() -> None:
    """A crush moves every vertebra above down by its severity; a wedge moves nothing."""
    for shape in ("crush", "wedge"):
        p = sample_patient_params(np.random.default_rng(2), {22: (3, shape)})
        sev = p.fractures[22].severity_mm
        a = {v.verse_id: v.centroid_mm for v in render_patient(p, 2.0).vertebrae}
        b = {v.verse_id: v.centroid_mm for v in render_patient(p, 2.0, fractures=False).vertebrae}
        for vid in (17, 19, 21, 23, 24):
            shift = a[vid][0] - b[vid][0]
            expect = sev if (shape == "crush" and vid < 22) else 0.0
            assert abs(shift - expect) < 0.3, (shape, vid, shift, expect)


def test_heights_increase_down_the_spine(roots: dict[str, Path]) -> None:
    heights = _json(roots["a"], "heights.json")
    mean = [
        np.mean([r["healthy"]["posterior_mm"] for c, r in heights.items() if _vid(c) == v])
        for v in SAMPLE_IDS
    ]
    # Published morphometry: posterior heights rise T10 -> L3; L5's posterior wall is short
    # (lordotic wedging), so the rise is checked T10-L3.
    assert np.polyfit(np.arange(6), mean[:6], 1)[0] > 0.5  # mm per level
    assert mean[5] - mean[0] > 3.0


def test_heatmap_marks_fractures(roots: dict[str, Path]) -> None:
    root, heights = roots["a"], _json(roots["a"], "heights.json")
    for case, rec in heights.items():
        heat = _load(root / "heatmap" / f"{case}.nii.gz")
        lab = _load(root / "label" / f"{case}.nii.gz")
        assert heat.dtype == np.float32 and heat.min() >= 0 and heat.max() <= 1
        own = heat[lab == _vid(case)]
        if rec["grade"] > 0:
            assert own.max() > 0.5 and heat.max() > 0.8, case
        else:
            assert own.mean() < 0.2, case


def test_vertebra_rows_stay_below_the_band(roots: dict[str, Path]) -> None:
    h2 = band_px(S)
    for path in sorted((roots["a"] / "label").glob("*.nii.gz")):
        lab, vid = _load(path), _vid(path.name[: -len(".nii.gz")])
        ks = np.flatnonzero((lab == vid).any(axis=(0, 1)))
        centre, half = (ks[0] + ks[-1]) / 2, 0.4 * (ks[-1] - ks[0] + 1)
        for k in ks[np.abs(ks - centre) <= half]:
            rows = np.flatnonzero((lab[:, :, k] == vid).any(axis=1))
            assert rows[-1] - rows[0] + 1 < h2, (path.name, k)


def test_one_patient_at_256_px() -> None:
    p = sample_patient_params(np.random.default_rng(3), {20: (2, "wedge")})
    r = render_patient(p, 1.0)
    assert r.ct_hu.shape[1:] == (256, 64) and r.ct_hu.dtype == np.float32
    for vid in SAMPLE_IDS:
        lab = r.labels[crop_vertebra(r, vid, 256)]
        assert lab.shape == (256, 256, 64) and lab[128, 128, 32] == vid
        rows = np.flatnonzero((lab[:, :, 32] == vid).any(axis=1))
        assert rows[-1] - rows[0] + 1 < 40
    # Tissue classes sit where they should: air behind the back, CSF in the canal, bone shell.
    mid = r.ct_hu[:, :, 32]
    assert mid[:, -1].mean() < -900
    c = int(round(r.info(20).centroid_vox[0]))
    canal_y = 128 + int(0.5 * p.vertebrae[9].depth_mm + 1.5 + 8)
    assert abs(np.median(r.ct_hu[c - 3 : c + 4, canal_y, 30:35]) - 10) < 30
    assert 100 < np.median(mid[c - 3 : c + 4, 124:133]) < 450


def test_window_render_equals_full_render() -> None:
    p = sample_patient_params(np.random.default_rng(4), {21: (3, "crush")})
    full = render_patient(p, 4.0)
    win = render_patient(p, 4.0, z_range_mm=(float(full.z_mm[40]), float(full.z_mm[90])))
    i0 = int(np.searchsorted(full.z_mm, win.z_mm[0]))
    assert np.array_equal(win.labels, full.labels[i0 : i0 + len(win.z_mm)])
    assert np.allclose(win.ct_hu, full.ct_hu[i0 : i0 + len(win.z_mm)], atol=0.5)


def test_plan_fractures_statistics() -> None:
    plan = plan_fractures(np.random.default_rng(0), 50)
    fr = [g for d in plan for g in d.values()]
    assert len(fr) == 80 and max(len(d) for d in plan) <= 2
    assert sorted({v for d in plan for v in d}) <= SAMPLE_IDS[1:-1]
    grades = [g for g, _ in fr]
    assert (grades.count(1), grades.count(2), grades.count(3)) == (44, 24, 12)


def test_bad_arguments(tmp_path: Path, run_script) -> None:
    with pytest.raises(ValueError, match="n_patients"):
        generate_dataset(tmp_path / "x", 0, img_size=S)
    for size in (40, 16):
        with pytest.raises(ValueError, match="img_size"):
            generate_dataset(tmp_path / "x", 1, img_size=size)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(tmp_path / "full", 1, img_size=32)
    argv = ["--out", tmp_path / "full", "--n_patients", "1", "--img_size", "32", "--quiet"]
    assert run_script("make_phantom", argv) == 2
    assert run_script("make_phantom", [*argv, "--overwrite"]) == 0
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # only phantom files go
    assert len(list((tmp_path / "full" / "CT").glob("*.nii.gz"))) == len(SAMPLE_VERTEBRAE)
