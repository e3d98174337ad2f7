"""Tests of data/vertebra_dataset.py on tiny synthetic roots (see conftest.py) and on the real
straightened labels of healthivert_0007."""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from data.vertebra_dataset import VertebraDataset, volume_to_slices
from data.vertebra_geometry import (
    build_slice_sample,
    cam_to_a_geometry,
    central_range,
    centre_vertebra,
    close_context,
    pyramid_weights,
    resize_rows,
)
from util.geometry import band_px, band_rows
from util.nifti_io import ipl_affine, load_nifti, save_nifti

SPLITS = {
    "train": {"p1_20": 0, "sub_a_20": 0, "p3_20": 1, "p3_21": 2},
    "val": {"p9_20": 0},
    "test": {"p1_20": 0, "p3_21": 2},
}
KEYS = (
    "A",
    "B",
    "mask",
    "vert_mask",
    "normal_vert",
    "normal_vert_context",
    "CAM",
    "height",
    "x1",
    "x2",
    "h2",
    "slice_ratio",
    "slice_index",
    "grade",
    "id",
)
REAL_LABELS = Path("/work/shared/data/healthivert_0007/straightened_label")


def make(root: Path, **kwargs) -> VertebraDataset:
    kwargs.setdefault("phase", "train")
    kwargs.setdefault("img_size", 64)
    kwargs.setdefault("seed", 0)
    return VertebraDataset(dataroot=root, **kwargs)


def ct_units(ct_u8: np.ndarray) -> np.ndarray:
    return ct_u8.astype(np.float32) / 127.5 - 1.0


@pytest.mark.parametrize("native,img_size", [(64, 64), (256, 256)])
def test_sample_geometry_exact(vertebra_root_factory, vertebra_volumes, native, img_size):
    depth = 8 if native == 256 else 16
    root = vertebra_root_factory(SPLITS, size=native, depth=depth)
    ds = make(root, img_size=img_size, vert_class="all", slice_mode="all")
    k = ds.valid_slices("p1_20")[0]
    s = ds.get_sample("p1_20", k)
    assert set(s) == set(KEYS)
    size, f = img_size, img_size // 64
    h, h2 = 8 * f, band_px(size)
    assert h2 == {64: 10, 256: 40}[size]
    for key in ("A", "B", "mask", "vert_mask", "normal_vert", "CAM"):
        assert s[key].shape == (1, size, size) and s[key].dtype == torch.float32
    for key in ("x1", "x2", "h2", "slice_index", "grade"):
        assert s[key].dtype == torch.int64 and s[key].ndim == 0
    assert s["height"].dtype == s["slice_ratio"].dtype == torch.float32
    assert s["height"].item() == h and s["h2"].item() == h2
    assert s["x1"].item() == size // 2 - h // 2 and s["x2"].item() == s["x1"].item() + h - 1
    assert s["grade"].item() == 0 and s["id"] == "p1_20" and s["slice_index"].item() == k

    ct, label, cam = vertebra_volumes(20, size=native, depth=depth)
    orig = ct_units(ct[:, :, k])  # native == img_size: no resize
    r0, r1 = 28 * f, 36 * f - 1
    b0, b1 = band_rows(size)
    a, b = s["A"][0].numpy(), s["B"][0].numpy()
    assert (b1 - b0) == h2 and b0 == size // 2 - h2 // 2
    # mask: exactly the band rows, full width
    assert np.array_equal(np.flatnonzero(s["mask"][0].numpy().any(1)), np.arange(b0, b1))
    assert s["mask"][0].numpy()[b0:b1].all()
    # A: band exactly 0, context closed on it
    assert np.all(a[b0:b1] == 0.0)
    np.testing.assert_array_equal(a[b0 - 1], orig[r0 - 1])
    np.testing.assert_array_equal(a[b1], orig[r1 + 1])
    np.testing.assert_array_equal(a[: b0 - 1][-5:], orig[r0 - 6 : r0 - 1])
    assert a.min() >= -1 and a.max() <= 1
    # B: vertebra rows r0..r1 land on x1..x2
    x1 = s["x1"].item()
    np.testing.assert_array_equal(b[x1 : x1 + h], orig[r0 : r1 + 1])
    np.testing.assert_array_equal(b[x1 - 3], orig[r0 - 3])
    vm = s["vert_mask"][0].numpy()
    assert np.array_equal(np.flatnonzero(vm.any(1)), np.arange(x1, x1 + h))
    assert np.array_equal(np.flatnonzero(vm.any(0)), np.arange(16 * f, 48 * f))
    # p1_20 is grade 0; its neighbours 19, 21 are in no split, so they are not normal
    nv = s["normal_vert"][0].numpy()
    shift = x1 - r0
    assert np.array_equal(np.flatnonzero(nv.any(1)), np.arange(28 * f, 36 * f) + shift)
    # the same in A geometry: the target is cut out, the band is empty
    assert s["normal_vert_context"].sum() == 0
    # CAM: context in A geometry, band = the vertebra's CAM rows resized (a rising ramp)
    c = s["CAM"][0].numpy()
    np.testing.assert_allclose(c[b0 - 1], cam[r0 - 1, :, k], atol=1e-3)
    band = c[b0:b1, 0]
    assert np.all(np.diff(band) > 0)
    assert cam[r0, 0, k] - 1e-3 <= band[0] and band[-1] <= cam[r1, 0, k] + 1e-3
    assert c.min() >= 0 and c.max() <= 1


@pytest.mark.parametrize("native,img_size", [(64, 256), (256, 64)])
def test_resize_before_geometry(vertebra_root_factory, native, img_size):
    root = vertebra_root_factory(SPLITS, size=native, depth=8 if native == 256 else 16)
    ds = make(root, img_size=img_size, vert_class="all", slice_mode="all")
    s = ds.get_sample("p1_20", ds.valid_slices("p1_20")[0])
    f = img_size // 64
    assert s["height"].item() == 8 * f  # nearest resize of a box of 8 rows at 64 px
    assert s["h2"].item() == band_px(img_size)
    vm = s["vert_mask"][0].numpy()
    assert vm.sum() == 8 * f * 32 * f
    # B's ramp stays increasing and spans [-1, 1] (bilinear resize of the CT)
    col = s["B"][0, :, img_size // 2].numpy()
    assert np.all(np.diff(col[2:-2]) >= 0) and col.min() >= -1 and col.max() <= 1
    assert col[-3] - col[2] > 1.5


def test_normal_vert_uses_grades(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS)
    ds = make(root, vert_class="abnormal", slice_mode="all")
    assert ds.keys() == ["p3_21"]  # grade 1 counts as normal, as in the original
    s = ds.get_sample("p3_21", 7)
    # 20 has grade 1 (normal), the target 21 grade 2, 22 is in no split (not normal)
    shift = s["x1"].item() - 28
    nv = s["normal_vert"][0].numpy()
    assert np.array_equal(np.flatnonzero(nv.any(1)), np.arange(12, 24) + shift)
    assert s["grade"].item() == 2
    # A geometry: the context above the band closes on it, nothing below
    b0, b1 = band_rows(64)
    nvc = s["normal_vert_context"][0].numpy()
    assert np.array_equal(np.flatnonzero(nvc.any(1)), np.arange(12, 24) + b0 - 28)
    # pid with an underscore: sub_a_20 -> pid "sub_a", target 20
    assert make(root, vert_class="normal").infos["sub_a_20"].pid == "sub_a"


def test_slice_ratio_and_pyramid_weighting(vertebra_root_factory):
    root = vertebra_root_factory({"train": {"p1_20": 0}})
    ds = make(root, seed=3)
    # target slices 2..13 -> central 4/5 = 3..11, centre 7, half range 4
    assert central_range(2, 13) == (3, 11)
    assert ds.valid_slices("p1_20") == list(range(3, 12))
    n = 3000

    def draws(dataset, epochs):
        # an item's slice is a function of (seed, epoch, index): one draw per epoch
        out = []
        for epoch in epochs:
            dataset.set_epoch(epoch)
            out.append(dataset[0]["slice_index"].item())
        return out

    ks = np.array(draws(ds, range(n)))
    ratios = {ds.get_sample("p1_20", k)["slice_ratio"].item() for k in range(3, 12)}
    assert min(ratios) == 0.0 and max(ratios) == 1.0
    weights, ratio = pyramid_weights(3, 11, np.arange(3, 12))
    np.testing.assert_allclose(ratio, np.abs(np.arange(3, 12) - 7) / 4)
    expected = weights / weights.sum()  # 0.04, 0.08, ..., 0.20 at the centre
    np.testing.assert_allclose(expected[4], 0.2)
    freq = np.bincount(ks - 3, minlength=9) / n
    np.testing.assert_allclose(freq, expected, atol=0.03)
    assert freq[4] > 2 * max(freq[0], freq[8])
    # reproducible for a seed (and within an epoch), different for another seed
    again = make(root, seed=3)
    other = make(root, seed=4)
    first = draws(again, range(40))
    assert first == ks[:40].tolist()
    assert draws(other, range(40)) != first
    again.set_epoch(7)
    assert len({again[0]["slice_index"].item() for _ in range(5)}) == 1


def test_tall_slices_excluded_and_all_mode_order(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS, tall_slices={"p1_20": [5, 9]})
    ds = make(root, vert_class="normal", slice_mode="all")
    assert ds.valid_slices("p1_20") == [3, 4, 6, 7, 8, 10, 11]
    items = [(s["id"], s["slice_index"].item()) for s in ds]
    want = [("p1_20", k) for k in (3, 4, 6, 7, 8, 10, 11)] + [
        (key, k) for key in ("sub_a_20", "p3_20") for k in range(3, 12)
    ]
    assert items == want
    assert len(ds) == len(want)
    assert [(s["id"], s["slice_index"].item()) for s in ds] == items  # deterministic
    with pytest.raises(ValueError, match="slice 5 of 'p1_20' is not valid"):
        ds.get_sample("p1_20", 5)
    # random mode never draws an excluded slice
    rnd = make(root, vert_class="normal")
    assert len(rnd) == 3
    assert {rnd[0]["slice_index"].item() for _ in range(200)} <= {3, 4, 6, 7, 8, 10, 11}


def test_vertebra_without_valid_slice_dropped_with_warning(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS, tall_slices={"sub_a_20": range(16)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = make(root, vert_class="normal")
    msgs = [str(w.message) for w in caught if "dropped" in str(w.message)]
    assert len(msgs) == 1 and "sub_a_20" in msgs[0]
    assert ds.keys() == ["p1_20", "p3_20"]


@pytest.mark.parametrize(
    "vert_class,keys",
    [
        ("normal", ["p1_20", "sub_a_20", "p3_20"]),  # grade <= 1, as the original
        ("abnormal", ["p3_21"]),
        ("all", ["p1_20", "sub_a_20", "p3_20", "p3_21"]),
    ],
)
def test_vert_class_filter(vertebra_root_factory, vert_class, keys):
    ds = make(vertebra_root_factory(SPLITS), vert_class=vert_class)
    assert ds.keys() == keys and len(ds) == len(keys)
    assert make(vertebra_root_factory(SPLITS, name="r2"), phase="val", vert_class="all").keys() == [
        "p9_20"
    ]


def test_options():
    parser = VertebraDataset.modify_commandline_options(argparse.ArgumentParser(), True)
    opt = parser.parse_args([])
    assert (opt.vert_class, opt.slice_mode, opt.no_cam) == ("normal", "random", False)
    opt = VertebraDataset.modify_commandline_options(argparse.ArgumentParser(), False).parse_args(
        []
    )
    assert (opt.vert_class, opt.slice_mode) == ("all", "all")
    with pytest.raises(SystemExit):
        parser.parse_args(["--vert_class", "broken"])


def test_from_opt_reads_every_flag(vertebra_root_factory):
    """``from_opt`` (what the registry calls) builds the dataset the typed arguments describe:
    ``--no_cam`` -> ``use_cam=False``, the parsed infinite size -> no limit, the seed kept."""
    root = vertebra_root_factory(SPLITS)
    shutil.rmtree(root / "heatmap")
    parser = VertebraDataset.modify_commandline_options(argparse.ArgumentParser(), False)
    flags = parser.parse_args(["--no_cam", "--max_cache_mb", "2", "--vert_class", "abnormal"])
    shared = {"phase": "train", "img_size": 32, "seed": 7}
    opt = argparse.Namespace(
        dataroot=str(root), **shared, max_dataset_size=float("inf"), **vars(flags)
    )
    ds = data.find_dataset("vertebra").from_opt(opt)
    twin = make(root, **{**shared, "vert_class": "abnormal", "slice_mode": "all"}, use_cam=False)
    assert (ds.use_cam, ds.seed, ds.slice_mode, ds.vert_class) == (False, 7, "all", "abnormal")
    assert ds.cache.max_bytes == 2 * 2**20 and ds.items == twin.items and len(ds) > 3
    assert torch.equal(ds[3]["B"], twin[3]["B"])
    opt.max_dataset_size = 3
    assert len(VertebraDataset.from_opt(opt)) == 3


def test_cache_loads_each_file_once(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS)
    ds = make(root, vert_class="all", slice_mode="all")
    assert ds.cache.loads == 4  # the labels, read once to build the index
    for _ in range(2):
        for _sample in ds:
            pass
    assert ds.cache.loads == 12  # label, CT and heatmap of 4 vertebrae
    # 64 KB per label or CT, 256 KB per float32 heatmap: 0.25 MB holds at most 3 volumes
    small = make(root, vert_class="all", slice_mode="all", max_cache_mb=0.25)
    for i in range(len(small)):
        small[i]
        assert small.cache.nbytes <= 2**18 and len(small.cache) <= 3
    assert small.cache.loads > 12
    # a pickled copy (spawned worker) starts with an empty cache and gives the same samples
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone.cache) == 0 and len(ds.cache) == 12
    assert torch.equal(clone[5]["A"], ds[5]["A"])


def test_missing_files_and_folders(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS)
    (root / "CT" / "p1_20.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"CT/p1_20\.nii\.gz"):
        make(root, vert_class="all")
    root = vertebra_root_factory(SPLITS, name="r2")
    shutil.rmtree(root / "heatmap")
    with pytest.raises(FileNotFoundError, match="heatmap.*--no_cam"):
        make(root)
    ds = make(root, use_cam=False)
    assert torch.count_nonzero(ds[0]["CAM"]) == 0
    (root / "vertebra_data.json").unlink()
    with pytest.raises(FileNotFoundError, match="vertebra_data.json"):
        make(root, use_cam=False)


def test_corrupt_files_name_the_file(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS)
    (root / "CT" / "p1_20.nii.gz").write_bytes(b"not a gzip file at all" * 10)
    with pytest.raises(ValueError, match=r"CT/p1_20\.nii\.gz"):
        make(root)
    # a truncated gzip stream reads its header but fails on the data, at the first sample
    root = vertebra_root_factory(SPLITS, name="r2")
    path = root / "heatmap" / "p1_20.nii.gz"
    data = path.read_bytes()
    assert len(gzip.decompress(data)) > 1000
    path.write_bytes(data[: len(data) // 2])
    ds = make(root)
    with pytest.raises(ValueError, match=r"heatmap/p1_20\.nii\.gz"):
        ds.get_sample("p1_20", 7)


def test_absent_vertebra_and_shape_mismatch(vertebra_root_factory, vertebra_volumes):
    root = vertebra_root_factory(SPLITS)
    ct, label, _ = vertebra_volumes(20)
    label[label == 20] = 0
    save_nifti(root / "label" / "p1_20.nii.gz", label, ipl_affine(4.0))
    with pytest.raises(ValueError, match=r"label/p1_20\.nii\.gz.*vertebra id 20"):
        make(root)
    root = vertebra_root_factory(SPLITS, name="r2")
    save_nifti(root / "CT" / "p1_20.nii.gz", ct[:, :, :12], ipl_affine(4.0))
    with pytest.raises(ValueError, match=r"CT/p1_20\.nii\.gz.*\(64, 64, 12\).*\(64, 64, 16\)"):
        make(root)


def test_empty_split(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS)
    with pytest.raises(ValueError, match=r"vertebra_data\.json.*'val'.*'abnormal'"):
        make(root, phase="val", vert_class="abnormal")
    with pytest.raises(ValueError, match=r"vertebra_data\.json.*'nosuch'"):
        make(root, phase="nosuch")
    with pytest.raises(ValueError, match="vert_class"):
        make(root, vert_class="broken")


def test_healthy_pair(vertebra_root_factory, vertebra_volumes):
    root = vertebra_root_factory(SPLITS)
    ct, label, _ = vertebra_volumes(21, target_rows=(28, 34))  # fractured: 6 rows
    save_nifti(root / "CT" / "p3_21.nii.gz", ct, ipl_affine(4.0))
    save_nifti(root / "label" / "p3_21.nii.gz", label, ipl_affine(4.0))
    ct, label, _ = vertebra_volumes(21)  # healthy: 8 rows
    save_nifti(root / "healthy_CT" / "p3_21.nii.gz", ct, ipl_affine(4.0))
    save_nifti(root / "healthy_label" / "p3_21.nii.gz", label, ipl_affine(4.0))
    ds = make(root, phase="test", vert_class="all", slice_mode="all")
    assert ds.has_healthy("p3_21") and not ds.has_healthy("p1_20")
    frac = ds.get_sample("p3_21", 7)
    healthy = ds.get_sample("p3_21", 7, healthy=True)
    assert frac["height"].item() == 6 and healthy["height"].item() == 8
    assert ds.valid_slices("p3_21", healthy=True) == list(range(3, 12))
    # the healthy truth counts its target as normal; the fractured one does not
    assert (healthy["normal_vert"] * healthy["vert_mask"]).sum() == 8 * 32
    assert (frac["normal_vert"] * frac["vert_mask"]).sum() == 0
    assert ds.vertebra_rows_in_slice("p3_21", 7) == (28, 33)
    with pytest.raises(FileNotFoundError, match="healthy_label"):
        ds.valid_slices("p1_20", healthy=True)


def test_dataloader_workers_reproducible_and_distinct(vertebra_root_factory):
    root = vertebra_root_factory({"train": {f"p{i}_20": 0 for i in range(8)}})
    ds = make(root)

    def slices(loader) -> list[int]:
        return [k for b in loader for k in b["slice_index"].tolist()]

    def epoch_slices(epoch: int, workers: int) -> list[int]:
        ds.set_epoch(epoch)
        return slices(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers))

    # an item's slice is a function of (seed, epoch, index): the same whatever the workers
    first = epoch_slices(1, 2)
    assert first == epoch_slices(1, 2) == epoch_slices(1, 0)
    second = epoch_slices(2, 0)
    assert second != first  # another epoch: new slices
    # persistent workers see the epoch set in the main process (shared memory)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    ds.set_epoch(1)
    assert slices(dl) == first
    ds.set_epoch(2)
    assert slices(dl) == second
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["A"].shape == (4, 1, 64, 64) and batch["height"].shape == (4,)
    assert batch["x1"].dtype == torch.int64 and len(batch["id"]) == 4


def test_pure_geometry_against_loops():
    rng = np.random.default_rng(0)
    size = 64
    img = rng.random((size, 7)).astype(np.float32)
    x1, x2 = 20, 27
    b0, b1 = band_rows(size)
    want = np.zeros_like(img)
    for i in range(size):  # oracle: row by row
        if i < b0:
            want[i] = img[max(0, i - b0 + x1)]
        elif i >= b1:
            want[i] = img[min(size - 1, i - b1 + x2 + 1)]
    np.testing.assert_array_equal(close_context(img, x1, x2, size), want)
    c0 = size // 2 - (x2 - x1 + 1) // 2
    want_b = np.stack([img[min(size - 1, max(0, i - c0 + x1))] for i in range(size)])
    np.testing.assert_array_equal(centre_vertebra(img, x1, x2), want_b)
    np.testing.assert_allclose(resize_rows(img, size), img)
    cam = cam_to_a_geometry(img, x1, x2)
    np.testing.assert_allclose(cam[b0], img[x1], atol=0.5)  # rows taken from the vertebra
    with pytest.raises(ValueError, match="band height"):
        close_context(img, 10, 30)


@pytest.mark.skipif(not REAL_LABELS.is_dir(), reason="healthivert_0007 labels not present")
def test_real_straightened_labels(tmp_path):
    """The geometry on real shapes: CT made from the label, no heatmap."""
    keys = sorted(p.name[: -len(".nii.gz")] for p in REAL_LABELS.glob("*.nii.gz"))
    (tmp_path / "label").mkdir()
    for key in keys:
        src = REAL_LABELS / f"{key}.nii.gz"
        (tmp_path / "label" / src.name).symlink_to(src)
        label, affine, _ = load_nifti(src)
        save_nifti(tmp_path / "CT" / src.name, (label > 0).astype(np.uint8) * 200, affine)
    (tmp_path / "vertebra_data.json").write_text(json.dumps({"test": dict.fromkeys(keys, 0)}))
    ds = make(
        tmp_path, phase="test", img_size=256, vert_class="all", slice_mode="all", use_cam=False
    )
    total = sum(i.hi - i.lo + 1 for i in ds.infos.values())
    frac = len(ds) / total
    assert len(ds.infos) == len(keys) and frac > 0.8
    for key in keys:
        s = ds.get_sample(key, ds.valid_slices(key)[len(ds.valid_slices(key)) // 2])
        h = int(s["height"])
        assert 15 <= h < 40
        rows = np.flatnonzero(s["vert_mask"][0].numpy().any(1))  # may have gaps (processes)
        assert (rows[0], rows[-1]) == (128 - h // 2, 128 - h // 2 + h - 1)
        assert np.all(s["A"][0, 108:148].numpy() == 0)


@pytest.mark.skipif(not REAL_LABELS.is_dir(), reason="healthivert_0007 labels not present")
@pytest.mark.parametrize("convention,heights", [("rows", [25, 25, 26]), ("span", [24, 24, 25])])
def test_small_label_pieces_are_dropped_as_the_original_does(tmp_path, convention, heights):
    """Case 0007, vertebra 22: stray pieces of its label (< 50 px) in slices 26-41 stretched
    its row extent: 9 central slices looked taller than the band and were dropped, 3 kept
    with heights 34/34/39. Without the pieces every central slice is valid, ~24 rows tall."""
    src = REAL_LABELS / "0007_22.nii.gz"
    label, affine, _ = load_nifti(src)
    save_nifti(tmp_path / "label" / src.name, label, affine)
    save_nifti(tmp_path / "CT" / src.name, (label > 0).astype(np.uint8) * 200, affine)
    (tmp_path / "vertebra_data.json").write_text(json.dumps({"test": {"0007_22": 0}}))
    ds = make(
        tmp_path,
        phase="test",
        img_size=256,
        vert_class="all",
        slice_mode="all",
        use_cam=False,
        height_convention=convention,
    )
    assert central_range(6, 62) == (12, 56)
    assert ds.valid_slices("0007_22") == list(range(12, 57))
    got = [ds.get_sample("0007_22", k) for k in (26, 27, 30)]
    assert [int(g["height"]) for g in got] == heights
    # the dropped pieces are not in the vertebra mask either
    for g in got:
        rows = np.flatnonzero(g["vert_mask"][0].numpy().any(1))
        assert rows[-1] - rows[0] + 1 == int(g["height"]) + (convention == "span")


def test_absent_neighbours_are_not_normal(vertebra_root_factory):
    # p1_20 is normal; its neighbours 19 and 21 are in the volume but in no split
    root = vertebra_root_factory({"train": {"p1_20": 0, "p1_21": -1}})
    ds = make(root, vert_class="all")
    assert ds.normal_ids("p1_20") == [20]  # 21 has an unknown grade, 19 no entry
    assert ds.normal_ids("p1_21") == [20]  # 22 has no entry, the target no known grade


def test_original_height_convention_and_cam(vertebra_root_factory):
    root = vertebra_root_factory(SPLITS)
    ours = make(root, vert_class="all", slice_mode="all")
    orig = make(
        root, vert_class="all", slice_mode="all", height_convention="span", cam_in_band="zero"
    )
    a, b = ours.get_sample("p1_20", 7), orig.get_sample("p1_20", 7)
    # the target is on rows 28..35 of the 64 px volume: 8 rows, or 7 with the last in context
    assert (a["height"].item(), b["height"].item()) == (8.0, 7.0)
    b0, b1 = band_rows(64)
    ct_rows = np.rint((b["A"][0, :, 20].numpy() + 1) * 127.5 * 63 / 255).astype(int)
    assert ct_rows[b0 - 1] == 27 and ct_rows[b1] == 35  # the original cuts rows 28..34
    assert b["CAM"][0, b0:b1].abs().sum() == 0 and a["CAM"][0, b0:b1].sum() > 0
    np.testing.assert_array_equal(b["CAM"][0, :b0], a["CAM"][0, :b0])
    assert b["vert_mask"].sum() == a["vert_mask"].sum()  # the mask keeps all 8 rows
    with pytest.raises(ValueError, match="height_convention"):
        make(root, height_convention="x2-x1")


def test_original_slice_weighting(vertebra_root_factory):
    root = vertebra_root_factory({"train": {"p1_20": 0}})
    ds = make(root, slice_weighting="original")
    info = ds.infos["p1_20"]
    # target slices 2..13 (12 slices) -> central 3..11, centre 7, weights 1 - |k - 7| / 8
    d = np.abs(np.arange(3, 12) - 7)
    np.testing.assert_allclose(info.ratios, 2 * d / 12)
    np.testing.assert_allclose(info.probs, (1 - d / 8) / (1 - d / 8).sum())


def test_bad_values_name_the_file(vertebra_root_factory, vertebra_volumes):
    root = vertebra_root_factory(SPLITS)
    ct, label, cam = vertebra_volumes(20)
    save_nifti(root / "heatmap" / "p1_20.nii.gz", (cam * 255).astype(np.uint8), ipl_affine(4.0))
    save_nifti(root / "CT" / "sub_a_20.nii.gz", ct.astype(np.float32) * 8 - 1000, ipl_affine(4.0))
    ds = make(root)
    with pytest.raises(ValueError, match=r"heatmap/p1_20\.nii\.gz.*floats"):
        ds.get_sample("p1_20", 7)
    # (HU values: the message says how to window them)
    with pytest.raises(ValueError, match=r"CT/sub_a_20\.nii\.gz.*outside 0\.\.255.*HU"):
        ds.get_sample("sub_a_20", 7)


def test_sample_from_arrays_matches_dataset(vertebra_root_factory, vertebra_volumes):
    """The path used by iterative synthesis: arrays in memory -> the same sample."""
    root = vertebra_root_factory(SPLITS)
    ds = make(root, img_size=128, vert_class="all", slice_mode="all")
    ct, label, cam = vertebra_volumes(21)
    k = 6
    s = build_slice_sample(
        volume_to_slices(ct, "ct", 128)[k],
        volume_to_slices(label, "label", 128)[k],
        volume_to_slices(cam, "cam", 128)[k],
        21,
        ds.normal_ids("p3_21"),
    )
    ref = ds.get_sample("p3_21", k)
    for key in ("A", "B", "vert_mask", "normal_vert", "CAM", "mask"):
        np.testing.assert_array_equal(s[key], ref[key][0].numpy())
    assert (s["x1"], s["x2"], s["h2"], s["height"]) == (56, 71, 20, 16.0)  # already centred
    # a dataset with the original's conventions hands them on (iterative synthesis uses this)
    orig = make(
        root, img_size=128, vert_class="all", slice_mode="all", height_convention="span",
        band_fill=-1.0,
    )  # fmt: skip
    arrays = [volume_to_slices(v, kind, 128)[k] for v, kind in ((ct, "ct"), (label, "label"))]
    s2 = build_slice_sample(*arrays, None, 21, orig.normal_ids("p3_21"), **orig.slice_options())
    ref2 = orig.get_sample("p3_21", k)
    for key in ("A", "B", "vert_mask"):
        np.testing.assert_array_equal(s2[key], ref2[key][0].numpy())
    assert s2["height"] == 15.0 and s2["A"].min() == -1.0
    assert (s["src_x1"], s["src_x2"]) == ds.vertebra_rows_in_slice("p3_21", k) == (56, 71)
