"""Grad-CAM++ fracture attention maps (``heatmap/``, HealthiVert's HGAM input).

The library behind ``scripts/make_heatmaps.py``::

    python scripts/make_heatmaps.py --dataroot datasets/phantom \
        --classifier checkpoints/classifier/classifier.pth --evaluate test

For every volume ``CT/<name>`` of the root (``healthy_CT/`` is not needed):

1. Every sagittal slice ``ct[:, :, k]`` is resized to the classifier's ``img_size`` (as the
   dataset does) and scaled to [-1, 1].
2. Grad-CAM++ (Chattopadhay et al. 2018) of the "fractured" logit (``ClassifierOutputTarget(1)``)
   at the classifier's last conv block, with the ``grad-cam`` package's
   ``GradCAMPlusPlus`` (its eq. 19 channel weights), batched over slices:
   ``L = ReLU(sum_c w_c A_c)``. The package would min-max rescale every slice to [0, 1] on its
   own, which stretches the noise of a slice with no evidence up to 1; we take the map before
   that rescale (:class:`UnscaledGradCAMPlusPlus`), so slices keep their relative strength.
3. Each map is upsampled bilinearly from the layer's resolution to the slice size ``(H, W)``
   of the CT file.
4. Normalisation per volume: the maps of all slices are divided by the volume's maximum, so
   the volume's strongest evidence is 1, weaker slices stay darker, and a volume without any
   positive evidence stays all 0 (the classifier sees nothing fractured in it).
5. Written as float32 NIfTI ``<out_dir>/<name>`` with the CT's shape and affine, atomically per
   file (the default ``--out_dir`` is the root's ``heatmap/``, overwritten file by file).

``--evaluate PHASE`` then measures how much of the map falls on the target vertebra
(:func:`evaluate_heatmaps`, built on :func:`heatmap_mass_in_region`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from tqdm import tqdm

from cam.classifier_training import central_slices, read_split
from data.vertebra_dataset import volume_to_slices
from models.fracture_classifier import FRACTURED, FractureClassifier
from util.checkpoint import load_checkpoint
from util.geometry import split_key, volume_path
from util.nifti_io import load_nifti, save_nifti


class UnscaledGradCAMPlusPlus(GradCAMPlusPlus):
    """The package's Grad-CAM++ without its per-image min-max rescale and resize: calling it
    returns ``(B, h, w)`` float32 maps ``ReLU(sum_c w_c A_c) >= 0`` at the target layer's
    resolution (step 2 of the module docstring); the weights ``w_c`` are the package's."""

    def compute_cam_per_layer(
        self, input_tensor: torch.Tensor, targets: list[Any], eigen_smooth: bool
    ) -> list[np.ndarray]:
        acts = [a.cpu().numpy() for a in self.activations_and_grads.activations]
        grads = [g.cpu().numpy() for g in self.activations_and_grads.gradients]
        out = []
        for layer, a, g in zip(self.target_layers, acts, grads):
            cam = self.get_cam_image(input_tensor, layer, targets, a, g, eigen_smooth)
            out.append(np.maximum(cam, 0)[:, None])
        return out

    def aggregate_multi_layers(self, cam_per_target_layer: list[np.ndarray]) -> np.ndarray:
        return np.mean(np.concatenate(cam_per_target_layer, axis=1), axis=1).astype(np.float32)


def load_classifier(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[FractureClassifier, dict]:
    """Rebuild the classifier of a ``scripts/train_classifier.py`` checkpoint (eval mode, on
    ``device``); returns ``(model, checkpoint)``. Errors name the file."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if "classifier" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path} is not a classifier checkpoint (no 'classifier'/'config' entry)")
    model = FractureClassifier.from_config(ckpt["config"])
    try:
        model.load_state_dict(ckpt["classifier"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match its config: {exc}") from exc
    return model.to(device).eval(), ckpt


def slice_cams(
    cam: GradCAMPlusPlus, slices: torch.Tensor, out_size: tuple[int, int], batch_size: int = 64
) -> np.ndarray:
    """Unnormalised Grad-CAM++ maps of the fractured class, ``(N, H, W)`` float32 >= 0.

    Args:
        cam: an :class:`UnscaledGradCAMPlusPlus` on the classifier's last conv block.
        slices: ``(N, 1, S, S)`` CT in [-1, 1].
        out_size: ``(H, W)`` to upsample the maps to (bilinear, ``align_corners=False``).
        batch_size: slices per forward/backward pass.
    """
    out = []
    with torch.enable_grad():  # Grad-CAM needs the backward pass even under no_grad callers
        for i in range(0, len(slices), batch_size):
            x = slices[i : i + batch_size]
            raw = cam(input_tensor=x, targets=[ClassifierOutputTarget(FRACTURED)] * len(x))
            up = F.interpolate(
                torch.from_numpy(raw)[:, None], size=out_size, mode="bilinear", align_corners=False
            )
            out.append(up[:, 0].clamp_min(0).numpy())
    if not out:
        return np.zeros((0, *out_size), np.float32)
    return np.concatenate(out)


def volume_heatmap(
    cam: GradCAMPlusPlus, ct: np.ndarray, img_size: int, batch_size: int = 64
) -> np.ndarray:
    """Heatmap of one CT volume (steps 1-4 of the module docstring).

    Args:
        cam: an :class:`UnscaledGradCAMPlusPlus` on the classifier's last conv block.
        ct: ``(H, W, D)`` uint8 CT window (0..255), sagittal slices along the last axis.
        img_size: the classifier's slice size ``S``.

    Returns ``(H, W, D)`` float32 in [0, 1], max 1 (or all 0 when no slice has evidence).
    """
    if ct.ndim != 3:
        raise ValueError(f"expected a 3-D CT volume (H, W, D), got shape {ct.shape}")
    h, w, _ = ct.shape
    device = next(cam.model.parameters()).device
    slices = torch.from_numpy(volume_to_slices(ct, "ct", img_size)).float()
    x = (slices[:, None] / 127.5 - 1.0).to(device)
    maps = slice_cams(cam, x, (h, w), batch_size)  # (D, H, W)
    peak = float(maps.max()) if maps.size else 0.0
    maps = maps / peak if peak > 0 else np.zeros_like(maps)
    return np.ascontiguousarray(np.moveaxis(maps, 0, 2), dtype=np.float32)


def make_heatmaps(
    dataroot: str | Path,
    classifier: str | Path,
    *,
    out_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    img_size: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Write ``<out_dir>/<name>`` for every ``<dataroot>/CT/<name>`` (``*.nii.gz``, ``*.nii``);
    ``out_dir`` defaults to ``<dataroot>/heatmap``. ``img_size``, when given, must equal the
    classifier's. Returns the written paths (sorted by name)."""
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    ct_dir = Path(dataroot) / "CT"
    if not ct_dir.is_dir():
        raise FileNotFoundError(f"CT folder not found: {ct_dir}")
    paths = sorted(p for p in ct_dir.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not paths:
        raise ValueError(f"no NIfTI volume (*.nii.gz, *.nii) in {ct_dir}")
    model, _ = load_classifier(classifier, device)
    if img_size is not None and img_size != model.img_size:
        raise ValueError(
            f"--img_size {img_size} does not match the classifier's img_size {model.img_size} "
            f"({classifier}): its maps are only meaningful at the scale it was trained at"
        )
    out = Path(out_dir) if out_dir is not None else Path(dataroot) / "heatmap"
    cam = UnscaledGradCAMPlusPlus(model=model, target_layers=[model.target_layer()])
    written = []
    try:
        for path in tqdm(paths, desc="heatmaps", unit="vol", disable=not progress):
            ct, affine, _ = load_nifti(path)
            heat = volume_heatmap(cam, ct, model.img_size, batch_size)
            target = out / path.name
            save_nifti(target, heat, affine)
            written.append(target)
    finally:
        cam.activations_and_grads.release()  # remove the forward hooks from the model
    return written


# ----------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class MassInRegion:
    """``mass_fraction``: share of the heatmap's total mass inside the region;
    ``area_fraction``: share of the pixels in the region (the chance level: what a uniform
    map would give); ``ratio = mass_fraction / area_fraction`` (1 = chance)."""

    mass_fraction: float
    area_fraction: float
    ratio: float


def heatmap_mass_in_region(heatmap: np.ndarray, region: np.ndarray) -> MassInRegion:
    """Mass of a non-negative ``heatmap`` inside a boolean ``region`` of the same shape (any
    number of dimensions, e.g. ``(K, H, W)`` for K slices pooled together).

    ``mass_fraction = sum(heatmap * region) / sum(heatmap)`` (NaN when the map is all 0),
    ``area_fraction = mean(region)``, ``ratio = mass_fraction / area_fraction`` (NaN when
    the region is empty).
    """
    h = np.asarray(heatmap, dtype=np.float64)
    r = np.asarray(region)
    if h.shape != r.shape:
        raise ValueError(f"heatmap shape {h.shape} differs from region shape {r.shape}")
    if not np.isfinite(h).all() or (h < 0).any():
        raise ValueError("heatmap must be finite and non-negative")
    r = r.astype(bool)
    total = h.sum()
    mass = float(h[r].sum() / total) if total > 0 else math.nan
    area = float(r.mean()) if r.size else math.nan
    ratio = mass / area if area > 0 else math.nan
    return MassInRegion(mass, area, ratio)


def evaluate_heatmaps(
    dataroot: str | Path, heatmap_dir: str | Path | None = None, phase: str = "test"
) -> dict[str, dict[str, float]]:
    """Attention on the target vertebra, per group (``fractured``: grade > 0; ``normal``).

    For every vertebra of ``phase``: :func:`heatmap_mass_in_region` of its heatmap over its
    central slices (central 4/5 of its L-R extent that contain it), region = its label there,
    at the files' native resolution. Per group: ``n``, the means of ``mass_fraction`` and
    ``area_fraction``, ``ratio_of_means`` (their quotient) and ``median_ratio`` (over
    vertebrae). Vertebrae with an all-zero map count with mass 0.
    """
    root = Path(dataroot)
    hdir = Path(heatmap_dir) if heatmap_dir is not None else root / "heatmap"
    groups: dict[str, list[MassInRegion]] = {"fractured": [], "normal": []}
    for key, grade in read_split(root, phase).items():
        _, vid = split_key(key)
        label_path = volume_path(root, "label", key)
        label, _, _ = load_nifti(label_path)
        heat, _, _ = load_nifti(hdir / f"{key}.nii.gz", expected_shape=label.shape)
        lab = np.moveaxis(label, 2, 0)
        ks = central_slices(lab, vid)
        if ks.size == 0:
            raise ValueError(f"{label_path} does not contain vertebra {vid}")
        m = heatmap_mass_in_region(np.moveaxis(heat, 2, 0)[ks], lab[ks] == vid)
        if math.isnan(m.mass_fraction):
            m = MassInRegion(0.0, m.area_fraction, 0.0)
        groups["fractured" if grade > 0 else "normal"].append(m)
    out = {}
    for name, ms in groups.items():
        if not ms:
            continue
        mass = float(np.mean([m.mass_fraction for m in ms]))
        area = float(np.mean([m.area_fraction for m in ms]))
        out[name] = {
            "n": len(ms),
            "mass_fraction": mass,
            "area_fraction": area,
            "ratio_of_means": mass / area,
            "median_ratio": float(np.median([m.ratio for m in ms])),
        }
    return out
