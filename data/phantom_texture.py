"""Phantom CT appearance: hashed lattice noise, smooth random fields, partial-volume painting
and the soft tissue around the spine.

Everything is an analytic function of position (partial-volume edges, smooth random fields
seeded per patient/structure), so any window of the spine renders identically at a given
spacing. Coordinates as in :mod:`data.phantom_anatomy`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from data.phantom_anatomy import PatientParams, VertebraParams

_HU_AIR, _HU_FAT, _HU_SOFT = -1000.0, -100.0, 40.0
#: Keeps lattice/slice indices non-negative in seed sequences.
INDEX_OFFSET = 1_000_000


def hash_normal(seed: int, tag: int, iz: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Standard normal values that depend only on (seed, tag, lattice index): a splitmix64 hash
    of the key, two uniforms, Box-Muller. Any sub-range of a lattice gets the same values."""
    m = np.uint64
    base = (seed * 0x9E3779B97F4A7C15 ^ tag * 0xC2B2AE3D27D4EB4F) & 0xFFFFFFFFFFFFFFFF
    key = (
        m(base)
        ^ (iz.astype(m) + m(INDEX_OFFSET)) * m(0x165667B19E3779F9)
        ^ (iy.astype(m) + m(INDEX_OFFSET)) * m(0x27D4EB2F165667C5)
        ^ (ix.astype(m) + m(INDEX_OFFSET)) * m(0x85EBCA77C2B2AE63)
    )
    key ^= key >> m(30)
    key *= m(0xBF58476D1CE4E5B9)
    key ^= key >> m(27)
    key *= m(0x94D049BB133111EB)
    key ^= key >> m(31)
    u1 = ((key >> m(32)).astype(np.float64) + 1.0) / 2.0**32
    u2 = (key & m(0xFFFFFFFF)).astype(np.float64) / 2.0**32
    return (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


def smooth_field(
    seed: int,
    tag: int,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    lattice: tuple[float, float, float],
    spacing: float,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Smooth unit-variance random field on the (Z, Y, X) grid ``coords`` (1D, mm).

    1. Lattice values N(0, 1) at points ``index * lattice`` (hashed, so windows agree).
    2. Separable Gaussian weights (sigma = lattice), widened by the voxel's box blur
       (sigma_e^2 = sigma^2 + s^2 / 12) with the amplitude a blur would keep (sigma / sigma_e).
    3. Normalised by sqrt(sqrt(pi) sigma / lattice), the unblurred per-axis standard deviation.
    """
    mats = []
    for pos, o, lat in zip(coords, origin, lattice):
        pos = pos.astype(np.float64) - o
        sig_e = math.sqrt(lat**2 + spacing**2 / 12.0)
        idx = np.arange(math.floor(pos.min() / lat) - 4, math.ceil(pos.max() / lat) + 5)
        w = np.exp(-0.5 * ((pos[:, None] - idx[None, :] * lat) / sig_e) ** 2) * (lat / sig_e)
        mats.append((idx, (w / math.sqrt(math.sqrt(math.pi))).astype(np.float32)))
    (iz, mz), (iy, my), (ix, mx) = mats
    vals = hash_normal(seed, tag, iz[:, None, None], iy[None, :, None], ix[None, None, :])
    vals = np.matmul(my, vals @ mx.T)  # (Lz, Y, X)
    return (mz @ vals.reshape(len(iz), -1)).reshape(len(mz), len(my), len(mx))


def paint(hu: np.ndarray, depth: np.ndarray, value: np.ndarray | float, s: float) -> np.ndarray:
    """Blend ``value`` into ``hu`` with partial-volume occupancy ``clip(depth / s + 0.5)``."""
    occ = np.clip(depth / s + 0.5, 0, 1)
    hu *= 1 - occ
    hu += occ * value
    return occ


def coord_slice(c: np.ndarray, lo: float, hi: float) -> slice:
    """Indices of the sorted coordinates ``c`` inside ``[lo, hi)``."""
    return slice(int(np.searchsorted(c, lo)), int(np.searchsorted(c, hi)))


def soft_tissue(
    p: PatientParams,
    ref: VertebraParams,
    zl: dict[str, float],
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    s: float,
) -> np.ndarray:
    """Soft tissue, visceral fat, paraspinal muscle, psoas, aorta, subcutaneous fat and air.
    Each structure is computed only on the sub-box it can touch."""
    a, xx = 0.5 * ref.depth_mm, x[None, None, :]
    hu = np.full((len(z), len(y), len(x)), _HU_SOFT, np.float32)
    # 1. Viscera in front of the spine: soft tissue with fat lobules.
    sy = coord_slice(y, -1e9, -(a + 4) + s)
    if sy.stop > sy.start:
        fv = smooth_field(p.seed, 1, (z, y[sy], x), (12.0, 12.0, 12.0), s)
        ff = 1 / (
            1 + np.exp(-3 * (smooth_field(p.seed, 2, (z, y[sy], x), (9.0, 9.0, 9.0), s) - 0.5))
        )
        wv = np.clip((-y[sy] - (a + 4)) / 6 + 0.5, 0, 1)[None, :, None]
        hu[:, sy] += wv * ((_HU_SOFT - 2 + 12 * fv) * (1 - ff) + _HU_FAT * ff - _HU_SOFT)
    # 2. Paraspinal muscles behind the canal, marbled with fat.
    sy = coord_slice(y, a + 14 - s, 1e9)
    if sy.stop > sy.start:
        fm = smooth_field(p.seed, 3, (z, y[sy], x), (6.0, 4.0, 4.0), s)
        marb = np.clip((fm - p.marbling) * 2, 0, 1)
        wm = np.clip((y[sy] - (a + 14)) / 5 + 0.5, 0, 1)[None, :, None]
        hu[:, sy] += wm * ((p.muscle_hu + 6 * fm) * (1 - marb) + _HU_FAT * marb - _HU_SOFT)
    # 3. Psoas, growing from T12 to L3, beside the lumbar bodies.
    sz, sy = coord_slice(z, zl["T12"], 1e9), coord_slice(y, -16, 16)
    grow = np.clip((z[sz] - zl["T12"]) / (zl["L3"] - zl["T12"]), 0.05, 1)[:, None, None]
    yy = y[sy][None, :, None]
    for side in (-1, 1):
        e = np.sqrt(
            (yy / (14 * grow)) ** 2 + ((xx - side * (ref.width_mm / 2 + 14)) / (12 * grow)) ** 2
        )
        paint(hu[sz, sy], (1 - e) * 10 * grow, p.muscle_hu - 4, s)
    # 4. Aorta (non-contrast blood), left of the midline, down to its L4 bifurcation.
    sz, sy = coord_slice(z, -1e9, zl["L4"] + s), coord_slice(y, -(a + 27), -(a + 1))
    zz, yy = z[sz][:, None, None], y[sy][None, :, None]
    r_ao = np.sqrt((yy + a + 14) ** 2 + (xx - 9) ** 2)
    paint(hu[sz, sy], np.minimum(11 - r_ao, zl["L4"] - zz), _HU_SOFT, s)
    # 5. Body contour: skin front and back, subcutaneous fat beneath it, air outside.
    zz = z[:, None]
    post = p.skin_post_mm + 6 * np.sin(2 * np.pi * zz / 320 + p.seed % 7)
    ant = p.skin_ant_mm + 10 * np.sin(2 * np.pi * zz / 410 + p.seed % 5)
    for sy in (
        coord_slice(y, -1e9, -(p.skin_ant_mm - 10 - p.fat_mm - s)),
        coord_slice(y, p.skin_post_mm - 6 - p.fat_mm - s, 1e9),
    ):
        d_skin = np.minimum(post - y[sy][None, :], y[sy][None, :] + ant)[:, :, None]
        paint(hu[:, sy], p.fat_mm - d_skin, _HU_FAT, s)
        paint(hu[:, sy], -d_skin, _HU_AIR, s)
    return hu


def add_white_noise(
    hu: np.ndarray, seed: int, k: np.ndarray, amp: float, corr_vox: float = 0.0
) -> None:
    """Add noise of standard deviation ``amp`` (HU) to ``hu`` (Z, Y, X) in place, seeded per
    absolute slice index ``k[i]`` of row ``i`` so that any window of a spine agrees; white, or
    with ``corr_vox > 0`` filtered in-plane by a Gaussian of that sigma (voxels) and scaled
    back to ``amp`` (the kernel's L2 norm), as a reconstruction kernel correlates CT noise."""
    norm = 1.0
    if corr_vox > 0:
        delta = np.zeros((33, 33), np.float32)
        delta[16, 16] = 1
        norm = 1.0 / float(np.sqrt((ndimage.gaussian_filter(delta, corr_vox) ** 2).sum()))
    for i, kk in enumerate(k):
        rng = np.random.default_rng([seed, 7, int(kk) + INDEX_OFFSET])
        w = rng.standard_normal(hu.shape[1:], dtype=np.float32)
        if corr_vox > 0:
            w = ndimage.gaussian_filter(w, corr_vox, mode="wrap") * norm
        hu[i] += amp * w
