"""Fracture classifier, Grad-CAM++ heatmaps (cam/heatmaps.py) and its training
(cam/classifier_training.py); scripts/make_heatmaps.py and scripts/train_classifier.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cam.classifier_training import SliceSet, load_slices, train_classifier
from cam.heatmaps import (
    UnscaledGradCAMPlusPlus,
    evaluate_heatmaps,
    heatmap_mass_in_region,
    load_classifier,
    make_heatmaps,
    slice_cams,
    volume_heatmap,
)
from models.fracture_classifier import FRACTURED, FractureClassifier
from util.checkpoint import save_checkpoint
from util.nifti_io import load_nifti

TINY = {"widths": (4, 8, 8), "n_pool": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny convolutions on a shared 2-core machine run ~10x faster on one thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(img_size: int = 32, seed: int = 0) -> FractureClassifier:
    torch.manual_seed(seed)
    return FractureClassifier(img_size=img_size, **TINY)


def _checkpoint(path, model: FractureClassifier) -> None:
    save_checkpoint(path, {"classifier": model.state_dict(), "config": model.config()})


def test_classifier_shapes_and_config_roundtrip():
    model = _tiny().eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert model(x).shape == (3, 2)
    assert model.target_layer() is model.last_conv
    assert model.last_conv(model.features(x)).shape == (3, 8, 16, 16)  # S / 2**n_pool
    clone = FractureClassifier.from_config(model.config())
    clone.load_state_dict(model.state_dict())
    torch.testing.assert_close(clone.eval()(x), model(x))
    default = FractureClassifier(img_size=64)
    assert 100_000 <= sum(p.numel() for p in default.parameters()) <= 300_000
    with pytest.raises(ValueError, match="B, 1, H, W"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of"):
        FractureClassifier(img_size=30, widths=(4, 8, 8), n_pool=2)


def test_package_gradcam_plusplus_map_shape_range():
    model = _tiny()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    cam = GradCAMPlusPlus(model=model, target_layers=[model.target_layer()])
    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(FRACTURED)] * 4)
    cam.activations_and_grads.release()
    assert maps.shape == (4, 32, 32)
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6


def test_unscaled_cam_matches_package_up_to_scale():
    model = _tiny(seed=1)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    raw_cam = UnscaledGradCAMPlusPlus(model=model, target_layers=[model.target_layer()])
    raw = raw_cam(input_tensor=x, targets=[ClassifierOutputTarget(FRACTURED)] * 2)
    raw_cam.activations_and_grads.release()
    pkg = GradCAMPlusPlus(model=model, target_layers=[model.target_layer()])
    pkg_map = pkg(input_tensor=x, targets=[ClassifierOutputTarget(FRACTURED)] * 2)
    pkg.activations_and_grads.release()
    assert raw.shape == (2, 16, 16) and (raw >= 0).all()
    # The package's own post-processing of our map (min-max + resize per layer, then min-max
    # after averaging the layers) gives the package's map exactly.
    np.testing.assert_allclose(scale_cam_image(scale_cam_image(raw, (32, 32))), pkg_map, atol=1e-5)


def test_volume_heatmap_shape_range_and_native_size():
    model = _tiny()
    ct = np.random.default_rng(0).integers(0, 256, (48, 48, 5), dtype=np.uint8)  # resized to 32
    cam = UnscaledGradCAMPlusPlus(model=model, target_layers=[model.target_layer()])
    heat = volume_heatmap(cam, ct, img_size=32, batch_size=2)
    cam.activations_and_grads.release()
    assert heat.shape == ct.shape and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0
    # Per-volume normalisation: the volume's maximum is exactly 1 (unless all zero).
    assert heat.max() == pytest.approx(1.0) or heat.max() == 0.0


def test_mass_in_region_hand_computed():
    heat = np.zeros((4, 4))
    heat[0, 0], heat[0, 1], heat[3, 3] = 2.0, 1.0, 1.0  # total mass 4
    region = np.zeros((4, 4), bool)
    region[0, :2] = True  # 2 of 16 pixels, holds mass 3
    m = heatmap_mass_in_region(heat, region)
    assert m.mass_fraction == pytest.approx(0.75)
    assert m.area_fraction == pytest.approx(0.125)
    assert m.ratio == pytest.approx(6.0)  # (3 / 4) / (2 / 16)
    uniform = heatmap_mass_in_region(np.ones((4, 4)), region)
    assert uniform.ratio == pytest.approx(1.0)  # chance level
    assert np.isnan(heatmap_mass_in_region(np.zeros((4, 4)), region).mass_fraction)
    with pytest.raises(ValueError, match="shape"):
        heatmap_mass_in_region(heat, region[:2])
    with pytest.raises(ValueError, match="non-negative"):
        heatmap_mass_in_region(-heat, region)


def test_make_heatmaps_writes_one_file_per_ct(tmp_path, vertebra_root_factory, run_script):
    splits = {"train": {"p0_20": 0}, "test": {"p1_20": 1, "p2_20": 0}}
    root = vertebra_root_factory(splits, size=64, depth=8)
    ckpt = tmp_path / "clf.pth"
    _checkpoint(ckpt, _tiny(img_size=32))
    out = tmp_path / "heat"
    written = make_heatmaps(root, ckpt, out_dir=out, batch_size=3, progress=False)
    assert [p.name for p in written] == ["p0_20.nii.gz", "p1_20.nii.gz", "p2_20.nii.gz"]
    for p in written:
        ct, ct_aff, _ = load_nifti(root / "CT" / p.name)
        heat, aff, _ = load_nifti(p)
        assert heat.shape == ct.shape and heat.dtype == np.float32
        np.testing.assert_allclose(aff, ct_aff)
        assert heat.min() >= 0.0 and heat.max() <= 1.0
    result = evaluate_heatmaps(root, out, "test")
    assert result["fractured"]["n"] == 1 and result["normal"]["n"] == 1
    # Default output: the root's heatmap/ folder, replaced file by file.
    before = load_nifti(root / "heatmap" / "p0_20.nii.gz")[0]
    assert run_script("make_heatmaps", ["--dataroot", root, "--classifier", ckpt, "--quiet"]) == 0
    after = load_nifti(root / "heatmap" / "p0_20.nii.gz")[0]
    assert not np.array_equal(before, after)


def test_make_heatmaps_errors(tmp_path, vertebra_root_factory, run_script, capsys):
    root = vertebra_root_factory({"train": {"p0_20": 0}}, size=64, depth=8)
    ckpt = tmp_path / "clf.pth"
    with pytest.raises(FileNotFoundError, match="clf.pth"):
        make_heatmaps(root, ckpt, progress=False)
    _checkpoint(ckpt, _tiny(img_size=32))
    with pytest.raises(ValueError, match="img_size 64 does not match"):
        make_heatmaps(root, ckpt, img_size=64, progress=False)
    empty = tmp_path / "empty"
    (empty / "CT").mkdir(parents=True)
    with pytest.raises(ValueError, match="no NIfTI volume"):
        make_heatmaps(empty, ckpt, progress=False)
    assert run_script("make_heatmaps", ["--dataroot", empty, "--classifier", ckpt, "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: no NIfTI volume")


def _blob_set(n: int, size: int, rng: np.random.Generator) -> tuple[SliceSet, np.ndarray]:
    """Noise slices; the odd ones ('fractured') carry a bright disc at a random place."""
    images = rng.normal(100, 20, (n, size, size)).clip(0, 255).astype(np.uint8)
    labels = np.arange(n) % 2
    blobs = np.zeros((n, size, size), bool)
    yy, xx = np.mgrid[:size, :size]
    for i in np.flatnonzero(labels):
        cy, cx = rng.integers(6, size - 6, 2)
        blobs[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
        images[i][blobs[i]] = 250
    return SliceSet(
        images, labels.astype(np.int64), np.arange(n), [str(i) for i in range(n)]
    ), blobs


def test_short_training_concentrates_map_on_blob():
    rng = np.random.default_rng(0)
    train, _ = _blob_set(128, 32, rng)
    test, blobs = _blob_set(16, 32, rng)
    torch.manual_seed(0)
    # Two blocks, no pooling: a receptive field of 7 px, so the map can be as sharp as the blob.
    model = FractureClassifier(img_size=32, widths=(8, 16), n_pool=0)
    hist = train_classifier(
        model,
        train,
        test,
        epochs=6,
        batch_size=8,
        lr=5e-3,
        seed=0,
        progress=False,
        log_epochs=False,
    )
    assert hist[-1]["val_balanced_accuracy"] >= 0.9
    cam = UnscaledGradCAMPlusPlus(model=model, target_layers=[model.target_layer()])
    x = torch.from_numpy(test.images).float()[:, None] / 127.5 - 1.0
    maps = slice_cams(cam, x, (32, 32), batch_size=8)
    cam.activations_and_grads.release()
    frac = test.labels == 1
    m = heatmap_mass_in_region(maps[frac], blobs[frac])
    # Chance is 1 (the blob covers 5 % of the image); seeds 0-4 give 7-9.
    assert m.ratio > 4.0, m


def test_train_cli_writes_rebuildable_checkpoint(tmp_path, vertebra_root_factory, run_script):
    splits = {"train": {"p0_20": 0, "p1_20": 1, "p2_20": 0}, "val": {"p3_20": 1}}
    root = vertebra_root_factory(splits, size=64, depth=8)
    data = load_slices(root, "train", 32, progress=False)
    # Central 4/5 of the target's slices 2..5 -> 2..4 (as the dataset), 8 of 32 rows each.
    assert data.images.shape == (9, 8, 32)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0]
    ckpt = tmp_path / "clf.pth"
    argv = ["--dataroot", str(root), "--out", str(ckpt), "--img_size", "32", "--epochs", "2"]
    argv += ["--batch_size", "4", "--widths", "4,8,8", "--n_pool", "1", "--gpu_ids", "-1"]
    assert run_script("train_classifier", [*argv, "--quiet"]) == 0
    model, meta = load_classifier(ckpt)
    assert model.img_size == 32 and model.widths == (4, 8, 8) and meta["window"] == 0.25
    assert meta["epoch"] in (1, 2) and "val_balanced_accuracy" in meta["metrics"]
    assert run_script("train_classifier", [*argv, "--widths", "4,x"]) == 2
