"""Procedural straightened spine CT: the framework's embedded data set.

:func:`render_patient` assembles a patient (:mod:`data.phantom_patients`) from the vertebra
shapes of :mod:`data.phantom_anatomy` and the tissue appearance of :mod:`data.phantom_texture`:
soft tissue, visceral fat, paraspinal muscle, psoas, aorta, subcutaneous fat and air around
the spine; discs fill the gaps between endplates; the spinal canal (CSF, cord above L1) runs
behind the bodies; white noise is seeded per slice, so any window of the spine renders
identically at a given spacing.

**Column closure**: the spine is built from the sacrum upwards, so everything above a
fractured vertebra moves down by the height lost at its posterior wall rim (the full loss for
a crush, zero for wedge and biconcave, whose posterior wall and rims are intact); the disc
above fills the deformed endplate.

Full-spine use (e.g. to test a straightening tool by bending it): :func:`render_patient`
returns the whole straightened spine as ``SpineRender`` (HU, labels, heatmap, coordinates in
mm, per-vertebra centroids and heights). ``fov_ap_mm`` / ``fov_lr_mm`` widen the in-plane
field and ``z_margin_mm`` the S-I margin around the sample vertebrae.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from data.phantom_anatomy import (
    EPIDURAL_MM,
    LAMINA_MM,
    SUPERELLIPSE_EXP,
    Fracture,
    PatientParams,
    VertebraParams,
    body_depth,
    closure_mm,
    endplate_surfaces,
    posterior_depth,
    vertebra_heights,
)
from data.phantom_texture import add_white_noise, coord_slice, paint, smooth_field, soft_tissue

_HU_CSF, _HU_CORD = 10.0, 35.0


@dataclass(frozen=True)
class RenderedVertebra:
    """Per-vertebra metadata of a render; heights are dicts of ``anterior/middle/posterior_mm``.
    ``centroid_vox`` / ``centroid_mm``: body centroid as (z, y, x), ``None`` when the body is
    not fully inside the rendered window."""

    name: str
    verse_id: int
    is_sample: bool
    grade: int
    shape: str
    fractured: bool
    centroid_vox: tuple[float, int, int] | None
    centroid_mm: tuple[float, float, float] | None
    healthy_heights: dict[str, float]
    fractured_heights: dict[str, float]


@dataclass
class SpineRender:
    """A rendered straightened spine, arrays (Z, Y, X) in (I, P, L) order.

    ``ct_hu`` float32 HU; ``labels`` uint8 VerSe ids; ``heatmap`` float32 in [0, 1]; ``z_mm``,
    ``y_mm``, ``x_mm`` voxel-centre coordinates (mm, spine axis at y = x = 0); ``body_labels``
    uint8 VerSe ids of the vertebral bodies alone (no posterior elements).
    """

    ct_hu: np.ndarray
    labels: np.ndarray
    heatmap: np.ndarray
    spacing_mm: float
    z_mm: np.ndarray
    y_mm: np.ndarray
    x_mm: np.ndarray
    vertebrae: tuple[RenderedVertebra, ...] = field(default_factory=tuple)
    body_labels: np.ndarray | None = None

    def info(self, verse_id: int) -> RenderedVertebra:
        for v in self.vertebrae:
            if v.verse_id == verse_id:
                return v
        raise ValueError(f"vertebra id {verse_id} is not part of this render")


def _layout(p: PatientParams, applied: frozenset[int]) -> list[tuple[float, float]]:
    """(z_top, z_bot) nominal endplate levels per vertebra, built up from the sacrum (z = 0)."""
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(p.vertebrae)
    out[-1] = (0.0, p.vertebrae[-1].height_mm)
    for i in range(len(p.vertebrae) - 2, -1, -1):
        below = p.vertebrae[i + 1]
        fb = p.fractures.get(below.verse_id) if below.verse_id in applied else None
        z_bot = out[i + 1][0] + closure_mm(below, fb) - below.disc_above_mm
        out[i] = (z_bot - p.vertebrae[i].height_mm, z_bot)
    return out


def _paint_canal(
    box: np.ndarray,
    verts: tuple[VertebraParams, ...],
    zl: dict[str, float],
    z: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    s: float,
) -> None:
    """Spinal canal (CSF) behind the bodies, its size interpolated between levels, with the
    cord down to the conus (L1)."""
    zc = np.array([zl[v.name] for v in verts])

    def along(vals: list[float]) -> np.ndarray:
        return np.interp(z, zc, vals).astype(np.float32)[:, None, None]

    cy = along([0.5 * v.canal_ap_mm for v in verts])
    cx = along([0.5 * v.canal_lr_mm for v in verts])
    yc = along([0.5 * v.depth_mm + EPIDURAL_MM + 0.5 * v.canal_ap_mm for v in verts])
    e = np.sqrt(((yy - yc) / cy) ** 2 + (xx / cx) ** 2)
    paint(box, (1 - e) * np.minimum(cy, cx), _HU_CSF, s)
    e = np.sqrt(((yy - yc) / 4.5) ** 2 + (xx / 5.5) ** 2)
    paint(box, np.minimum((1 - e) * 4.5, zl["L1"] - z[:, None, None]), _HU_CORD, s)


def _paint_disc(
    box: np.ndarray,
    up: tuple,
    dn: tuple,
    z: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    s: float,
    hu: tuple[float, float] = (80.0, 105.0),
) -> None:
    """Disc between two ``(params, fracture, z_top, z_bot)`` levels: it fills the space between
    the upper inferior endplate and the lower superior endplate (1 mm under both, hidden by
    the bone painted afterwards); nucleus ``hu[0]``, annulus ``hu[1]`` HU."""
    (vu, fu, tu, bu), (vd, fd, td, bd) = up, dn
    sl = coord_slice(
        z, bu - 4 - (fu.severity_mm if fu else 0), td + 4 + (fd.severity_mm if fd else 0)
    )
    if sl.stop <= sl.start:
        return
    bot_u = endplate_surfaces(vu, fu, tu, bu, yy, xx)[1]
    top_d = endplate_surfaces(vd, fd, td, bd, yy, xx)[0]
    a, b = 0.26 * (vu.depth_mm + vd.depth_mm), 0.26 * (vu.width_mm + vd.width_mm)
    r = ((np.abs(yy) / a) ** SUPERELLIPSE_EXP + (np.abs(xx) / b) ** SUPERELLIPSE_EXP) ** (
        1 / SUPERELLIPSE_EXP
    )
    rho = np.sqrt(yy**2 + xx**2)
    lat = np.where(r > 1e-6, rho / np.maximum(r, 1e-6), 1e3) - rho
    zs = z[sl, None, None]
    d = np.minimum(np.minimum(zs - bot_u + 1, top_d + 1 - zs), lat)
    paint(box[sl], d, hu[0] + (hu[1] - hu[0]) * np.clip((r - 0.45) / 0.45, 0, 1), s)


def _paint_vertebra(
    box: np.ndarray,
    lab: np.ndarray,
    body: np.ndarray,
    heat: np.ndarray,
    p: PatientParams,
    v: VertebraParams,
    fr: Fracture | None,
    zt: float,
    zb: float,
    z: np.ndarray,
    yb: np.ndarray,
    x: np.ndarray,
    s: float,
) -> float | None:
    """Paint one vertebra into the spine box (HU, label, body label, 0.05 x body occupancy in
    ``heat``).
    Returns the body's S-I centroid (mm), ``None`` when the body leaves the window."""
    sl = coord_slice(z, zt - 2, zb + 2)
    if sl.stop <= sl.start:
        return None
    zs, yy, xx = z[sl, None, None], yb[None, :, None], x[None, None, :]
    # 1. Signed depth of body and posterior elements; the label is where it is >= 0.
    db = body_depth(v, fr, zt, zb, zs, yy, xx)
    d = np.maximum(db, posterior_depth(v, fr, zt, zb, zs, yy, xx))
    # 2. Trabecular HU: texture in vertebra coordinates (it moves with the bone) plus a
    #    sclerotic band under collapsed endplates, computed over the body rows only.
    trab = np.full(d.shape, p.trabecular_hu + 30, np.float32)
    bs = coord_slice(yb, -0.5 * v.depth_mm - 2, 0.5 * v.depth_mm + 2)
    tb = p.trabecular_hu + p.trabecular_sd_hu * smooth_field(
        p.seed, 100 + v.verse_id, (z[sl], yb[bs], x), (2.4, 1.3, 1.3), s, origin=(zt, 0.0, 0.0)
    )
    if fr is not None:
        top, bot, _ = endplate_surfaces(v, fr, zt, zb, yy[:, bs], xx)
        top0, bot0, _ = endplate_surfaces(v, None, zt, zb, yy[:, bs], xx)
        tb += 150 * (
            np.clip((top - top0) / 2, 0, 1) * np.exp(-(zs - top) / 3)
            + np.clip((bot0 - bot) / 2, 0, 1) * np.exp(-(bot - zs) / 3)
        )
    trab[:, bs] = tb
    # 3. Partial-volume blend: cortical shell (depth < cortical_mm) over trabecular bone.
    occ = np.clip(d / s + 0.5, 0, 1)
    inner = np.clip((d - p.cortical_mm) / s + 0.5, 0, 1)
    sub = box[sl]
    sub *= 1 - occ
    sub += (occ - inner) * p.cortical_hu + inner * trab
    lab[sl][d >= 0] = v.verse_id
    body[sl][db >= 0] = v.verse_id
    occ_b = np.clip(db / s + 0.5, 0, 1)
    np.maximum(heat[sl], 0.05 * occ_b, out=heat[sl])
    w = occ_b.sum(axis=(1, 2))
    if sl.start == 0 or sl.stop == len(z) or w.sum() == 0:
        return None
    return float((w * z[sl]).sum() / w.sum())


def _blob(v: VertebraParams, fr: Fracture, zt: float, zc: float) -> tuple[tuple, tuple]:
    """Centre (z, y, x) and sigmas (mm) of the heatmap blob over the deformed part."""
    h, dd, w = v.height_mm, v.depth_mm, v.width_mm
    if fr.shape == "wedge":  # anterior-superior corner
        return (zt + 0.25 * h + 0.3 * fr.severity_mm, -dd / 3, 0.0), (0.3 * h, 0.25 * dd, 0.3 * w)
    if fr.shape == "biconcave":
        return (zc, 0.0, 0.0), (0.3 * h, 0.25 * dd, 0.3 * w)
    return (zc, 0.0, 0.0), (0.4 * h, 0.4 * dd, 0.35 * w)


def _grid(
    s: float, z_range_mm: tuple[float, float], fov_ap_mm: float, fov_lr_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Absolute slice indices ``k`` and voxel-centre coordinates ``z``, ``y``, ``x`` (mm,
    float32) of the render grid at spacing ``s``; the spine axis sits at ``(Y//2, X//2)``."""
    lo, hi = z_range_mm
    k = np.arange(math.floor(lo / s), math.ceil(hi / s) + 1)
    z = (k * s).astype(np.float32)
    ny, nx = int(round(fov_ap_mm / s)), int(round(fov_lr_mm / s))
    y = ((np.arange(ny) - ny // 2) * s).astype(np.float32)
    x = ((np.arange(nx) - nx // 2) * s).astype(np.float32)
    return k, z, y, x


def _rendered_vertebra(
    v: VertebraParams,
    fr: Fracture | None,
    zc: float | None,
    centroid_vox: tuple[float, int, int] | None,
) -> RenderedVertebra:
    """Metadata of one painted vertebra (body centroid ``zc`` in mm, ``None`` outside)."""
    hh = vertebra_heights(v) if v.is_sample else {}
    return RenderedVertebra(
        name=v.name,
        verse_id=v.verse_id,
        is_sample=v.is_sample,
        grade=fr.grade if fr else 0,
        shape=fr.shape if fr else "none",
        fractured=fr is not None,
        centroid_vox=centroid_vox,
        centroid_mm=None if zc is None else (zc, 0.0, 0.0),
        healthy_heights=hh,
        fractured_heights=vertebra_heights(v, fr) if (fr and v.is_sample) else dict(hh),
    )


def render_patient(
    p: PatientParams,
    spacing_mm: float,
    *,
    fractures: bool | Iterable[int] = True,
    fov_ap_mm: float = 256.0,
    fov_lr_mm: float = 64.0,
    z_margin_mm: float | None = None,
    z_range_mm: tuple[float, float] | None = None,
) -> SpineRender:
    """Render a patient's whole straightened spine (or the window ``z_range_mm``).

    Args:
        p: from :func:`data.phantom_patients.sample_patient_params`.
        spacing_mm: isotropic voxel size (mm).
        fractures: ``True`` all of ``p.fractures``, ``False`` none, or the VerSe ids to apply
            (the others are rendered healthy).
        fov_ap_mm, fov_lr_mm: in-plane field; the spine axis sits at voxel ``(Y//2, X//2)``.
        z_margin_mm: S-I margin beyond the first/last sample vertebra's healthy centre
            (default ``fov_ap_mm / 2 + 2`` voxels, enough to crop a cube-sided volume).
        z_range_mm: render only voxels with ``z`` in this range (same grid, same values).

    Returns:
        SpineRender with (Z, Y, X) arrays; z = 0 is the sacrum's superior endplate. Its
        heatmap is quantised to 1/1024 (exactly 0 below 1e-3) for compact files.
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    chosen = p.fractures if fractures is True else (() if fractures is False else fractures)
    applied = frozenset(int(v) for v in chosen)
    if not applied <= set(p.fractures):
        raise ValueError(f"fractures {sorted(applied - set(p.fractures))} are not in params")
    s, verts = float(spacing_mm), p.vertebrae
    lay = _layout(p, applied)
    fr_of = [p.fractures[v.verse_id] if v.verse_id in applied else None for v in verts]
    # 1. Grid: fixed by the healthy layout, so fractured and healthy renders share it.
    if z_range_mm is None:
        healthy = zip(_layout(p, frozenset()), verts)
        centres = [0.5 * (t + b) for (t, b), v in healthy if v.is_sample]
        margin = fov_ap_mm / 2 + 2 * s if z_margin_mm is None else z_margin_mm
        z_range_mm = (min(centres) - margin, max(centres) + margin)
    k, z, y, x = _grid(s, z_range_mm, fov_ap_mm, fov_lr_mm)
    ny, nx = len(y), len(x)
    # 2. Soft tissue, then the spine box (the y rows that hold bone and canal).
    zl = {v.name: 0.5 * (t + b) for (t, b), v in zip(lay, verts)}
    hu = soft_tissue(p, next(v for v in verts if v.name == "L1"), zl, z, y, x, s)
    labels = np.zeros(hu.shape, np.uint8)
    body = np.zeros(hu.shape, np.uint8)
    heat = np.zeros(hu.shape, np.float32)
    tip = max(
        0.5 * v.depth_mm + EPIDURAL_MM + v.canal_ap_mm + LAMINA_MM + v.spinous_mm for v in verts
    )
    j0 = int(np.searchsorted(y, -0.5 * max(v.depth_mm for v in verts) - 6))
    j1 = int(np.searchsorted(y, tip + 6))
    yb, box = y[j0:j1], hu[:, j0:j1]
    _paint_canal(box, verts, zl, z, yb[None, :, None], x[None, None, :], s)
    levels = list(zip(verts, fr_of, *zip(*lay)))
    for up, dn in zip(levels[:-1], levels[1:]):
        _paint_disc(box, up, dn, z, yb[None, :, None], x[None, None, :], s, p.disc_hu)
    # 3. Vertebrae, their metadata and the provisional heatmap blobs of the fractured ones.
    infos = []
    for v, fr, zt, zb in levels:
        zc = _paint_vertebra(
            box, labels[:, j0:j1], body[:, j0:j1], heat[:, j0:j1], p, v, fr, zt, zb, z, yb, x, s
        )
        if fr is not None and zc is not None:
            c, sg = _blob(v, fr, zt, zc)
            g = [np.exp(-0.5 * ((a - ci) / si) ** 2) for a, ci, si in zip((z, y, x), c, sg)]
            np.maximum(heat, g[0][:, None, None] * g[1][None, :, None] * g[2], out=heat)
        vox = None if zc is None else (float((zc - z[0]) / s), ny // 2, nx // 2)
        infos.append(_rendered_vertebra(v, fr, zc, vox))
    heat = np.round(np.where(heat < 1e-3, 0, heat) * 1024) / 1024
    # 4. White noise, seeded per absolute slice index so that windows agree.
    add_white_noise(hu, p.seed, k, p.noise_hu * s**-1.5, p.noise_corr_mm / s)
    heat = np.clip(heat, 0, 1).astype(np.float32)
    return SpineRender(hu, labels, heat, s, z, y, x, tuple(infos), body)


def window_to_uint8(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> uint8 0..255 by the linear window ``(lo, hi)`` (clipped)."""
    lo, hi = window
    return np.clip(np.rint((hu - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def crop_vertebra(render: SpineRender, verse_id: int, img_size: int) -> slice:
    """Rows of ``render`` for an ``img_size``-row volume whose centre row holds the body
    centroid of ``verse_id`` (``ValueError`` when the window does not fit)."""
    info = render.info(verse_id)
    if info.centroid_vox is None:
        raise ValueError(f"vertebra {verse_id} is not fully inside the rendered window")
    start = int(round(info.centroid_vox[0])) - img_size // 2
    if start < 0 or start + img_size > render.ct_hu.shape[0]:
        raise ValueError(f"a {img_size}-row crop around vertebra {verse_id} leaves the render")
    return slice(start, start + img_size)
