"""Phantom anatomy: the vertebra table, the parameter types and the shape of each vertebra as a
signed-depth function, with the Genant fracture deformation of its endplates.

Coordinates are millimetres on the (I, P, L) voxel axes: ``z`` runs inferior, ``y`` posterior,
``x`` left; the spine axis is ``y = x = 0`` (the centre of every vertebral body's axial
section).

Anatomy: context vertebrae T4-T9 above, the sample vertebrae T10-L5 (VerSe ids 17-24), the
sacrum (id 26) below. Each body is a superelliptic cylinder (slightly waisted, rounded rims,
0.8 mm endplate concavity) with a cortical shell and trabecular texture; pedicles, laminae,
spinous and transverse processes stay inside the body's S-I extent at the posterior wall.

Fractures (Genant): ``wedge`` lowers the superior endplate anteriorly (linear to zero at 85 %
of the depth), ``biconcave`` depresses both endplates centrally (zero at the anterior and
posterior rims), ``crush`` lowers the whole superior endplate. Heights are measured with
:func:`util.heights.heights_2d` on a 0.1 mm mid-sagittal render of the body
(:func:`vertebra_heights`); the posterior wall rim's loss (:func:`closure_mm`) is how far the
column above a fracture moves down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from util.heights import heights_2d

#: Sample vertebrae (one volume each), superior -> inferior.
SAMPLE_VERTEBRAE = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
#: Name -> (VerSe id, body height, depth A-P, width L-R, disc above; nominal mm).
ANATOMY: Mapping[str, tuple[int, float, float, float, float]] = {
    "T4": (11, 18.5, 23.0, 29.0, 4.5),
    "T5": (12, 19.0, 24.0, 30.0, 4.5),
    "T6": (13, 19.5, 25.0, 31.0, 4.5),
    "T7": (14, 20.0, 26.0, 32.0, 5.0),
    "T8": (15, 20.5, 27.0, 33.0, 5.0),
    "T9": (16, 21.0, 28.0, 35.0, 5.0),
    "T10": (17, 22.0, 29.0, 37.0, 5.5),
    "T11": (18, 23.0, 30.0, 40.0, 6.0),
    "T12": (19, 24.0, 31.0, 43.0, 7.0),
    "L1": (20, 25.0, 32.0, 45.0, 8.0),
    "L2": (21, 26.0, 33.0, 47.0, 9.0),
    "L3": (22, 27.0, 34.0, 49.0, 10.0),
    "L4": (23, 28.0, 35.0, 50.0, 10.5),
    "L5": (24, 29.0, 35.0, 52.0, 11.0),
    "S1": (26, 130.0, 38.0, 52.0, 10.0),
}
#: Every level of the phantom spine, superior -> inferior.
SPINE_LEVELS = ("T4", "T5", "T6", "T7", "T8", "T9", *SAMPLE_VERTEBRAE, "S1")
#: Upper bound of a body height (mm): keeps a vertebra below the 40-row band at every size.
MAX_BODY_HEIGHT_MM = 31.5
#: Superellipse exponent of the body's axial section (and of the discs).
SUPERELLIPSE_EXP = 2.6
#: Epidural space in front of the canal and lamina thickness (mm).
EPIDURAL_MM, LAMINA_MM = 1.5, 5.0
_CONCAVITY, _ROUND, _ROUND_R0, _WAIST, _WEDGE_END = 0.8, 2.0, 0.75, 0.05, 0.85


@dataclass(frozen=True)
class Fracture:
    """A Genant fracture: grade 1-3, shape, target loss and calibrated severity (mm)."""

    grade: int
    shape: str
    target_loss: float
    severity_mm: float


@dataclass(frozen=True)
class VertebraParams:
    """One vertebra's geometry in mm (``is_sample``: written as a data set volume)."""

    name: str
    verse_id: int
    height_mm: float
    depth_mm: float
    width_mm: float
    disc_above_mm: float
    canal_ap_mm: float
    canal_lr_mm: float
    spinous_mm: float
    transverse_mm: float
    is_sample: bool
    #: Published morphometry only (the defaults leave the simple phantom bit-for-bit): sagittal
    #: wedging of the endplates (deg, > 0 ventral/kyphotic: anterior shorter), the central
    #: concavity of each endplate (mm, ``None``: the fixed 0.8 mm) and a smooth irregularity
    #: of the superior endplate (amplitude mm, phase rad).
    wedge_deg: float = 0.0
    concavity_mm: float | None = None
    irregular_mm: float = 0.0
    irregular_phase: float = 0.0
    #: Rounded rims: each endplate drops by ``round_mm`` at the rim, quadratically from the
    #: relative radius ``round_start`` (the published phantom rounds more, measured on CT).
    round_mm: float = _ROUND
    round_start: float = _ROUND_R0


@dataclass(frozen=True)
class PatientParams:
    """Everything that defines one phantom patient (superior -> inferior vertebrae)."""

    seed: int
    vertebrae: tuple[VertebraParams, ...]
    fractures: Mapping[int, Fracture]
    cortical_mm: float
    trabecular_hu: float
    cortical_hu: float
    skin_post_mm: float
    skin_ant_mm: float
    fat_mm: float
    noise_hu: float
    #: "F" or "M" (published morphometry), ``None`` for the simple phantom.
    sex: str | None = None
    #: Appearance (defaults: the simple phantom; the published one follows the real CT of
    #: docs/ARCHITECTURE.md): SD of the trabecular texture (HU), disc nucleus/annulus HU,
    #: paraspinal muscle HU, fat-marbling threshold of the muscle field (lower: more fat),
    #: in-plane Gaussian correlation of the noise (sigma, mm; 0: white).
    trabecular_sd_hu: float = 45.0
    disc_hu: tuple[float, float] = (80.0, 105.0)
    muscle_hu: float = 52.0
    marbling: float = 1.3
    noise_corr_mm: float = 0.0


def endplate_surfaces(
    vp: VertebraParams,
    fr: Fracture | None,
    z_top: float,
    z_bot: float,
    y: np.ndarray,
    x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Superior/inferior endplate levels (mm) over the axial grid, and the superellipse radius."""
    a, b = 0.5 * vp.depth_mm, 0.5 * vp.width_mm
    r = ((np.abs(y) / a) ** SUPERELLIPSE_EXP + (np.abs(x) / b) ** SUPERELLIPSE_EXP) ** (
        1.0 / SUPERELLIPSE_EXP
    )
    rc = np.minimum(r, 1.0)
    # Endplate concavity plus rounded rims.
    conc = _CONCAVITY if vp.concavity_mm is None else vp.concavity_mm
    r0 = vp.round_start
    dip = conc * (1 - rc**2) + vp.round_mm * np.clip((rc - r0) / (1 - r0), 0, 1) ** 2
    top, bot = z_top + dip, z_bot - dip
    if vp.wedge_deg:
        # Physiological wedging: the height at y is z_bot - z_top + y tan(wedge), split evenly
        # between the two endplates (y > 0 posterior).
        tilt = 0.5 * y * np.tan(np.radians(vp.wedge_deg))
        top, bot = top - tilt, bot + tilt
    if vp.irregular_mm:
        # Degenerative endplate irregularity: a smooth undulation of the superior endplate.
        u = np.clip(rc, 0, 1)
        top = top + vp.irregular_mm * np.sin(3 * np.pi * y / vp.depth_mm + vp.irregular_phase) * (
            1 - u**2
        )
    if fr is not None:
        d = fr.severity_mm
        if fr.shape == "wedge":
            u = y / vp.depth_mm + 0.5  # 0 anterior wall, 1 posterior wall
            top = top + d * np.clip(1 - u / _WEDGE_END, 0, 1)
        elif fr.shape == "biconcave":
            w = np.clip(1 - (2 * y / vp.depth_mm) ** 2, 0, 1) ** 1.5
            w = w * np.clip(1 - (2 * x / vp.width_mm) ** 4, 0, 1)
            top, bot = top + 0.5 * d * w, bot - 0.5 * d * w
        elif fr.shape == "crush":
            top = top + d
        else:
            raise ValueError(f"unknown fracture shape {fr.shape!r}")
    return top, bot, r


def closure_mm(vp: VertebraParams, fr: Fracture | None) -> float:
    """Height (mm) lost at the posterior wall rim: how far everything above moves down."""
    if fr is None:
        return 0.0
    h = endplate_surfaces(vp, None, 0.0, 0.0, np.array(0.5 * vp.depth_mm), np.array(0.0))
    f = endplate_surfaces(vp, fr, 0.0, 0.0, np.array(0.5 * vp.depth_mm), np.array(0.0))
    return float((f[0] - h[0]) + (h[1] - f[1]))


def body_depth(
    vp: VertebraParams,
    fr: Fracture | None,
    z_top: float,
    z_bot: float,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
) -> np.ndarray:
    """Signed depth (mm, > 0 inside) of the body; z (Z,1,1), y (1,Y,1), x (1,1,X)."""
    top, bot, r = endplate_surfaces(vp, fr, z_top, z_bot, y, x)
    rho = np.sqrt(y**2 + x**2)
    rb = np.where(r > 1e-6, rho / np.maximum(r, 1e-6), 1e3)  # boundary radius along the ray
    half = 0.5 * (z_bot - z_top)
    waist = 1 - _WAIST * np.clip(1 - ((z - z_top - half) / half) ** 2, 0, 1)
    return np.minimum(np.minimum(z - top, bot - z), rb * waist - rho)


def posterior_depth(
    vp: VertebraParams,
    fr: Fracture | None,
    z_top: float,
    z_bot: float,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
) -> np.ndarray:
    """Signed depth (mm) of pedicles, laminae, spinous and transverse processes, all kept
    inside the body's S-I extent at the posterior wall (shrinks with a crush)."""
    a = 0.5 * vp.depth_mm
    zt, zb, _ = endplate_surfaces(vp, fr, z_top, z_bot, np.array(a - 1.0), np.array(0.0))
    zt, zb = float(zt) + 0.8, float(zb) - 0.8
    he = zb - zt
    cy, cx = 0.5 * vp.canal_ap_mm, 0.5 * vp.canal_lr_mm
    yc, ax = a + EPIDURAL_MM + cy, np.abs(x)
    # 1. Pedicles: elliptic (x, z) section, from the posterior wall to the canal's middle.
    pw = 0.16 * vp.width_mm
    xp, zp, hp = cx + 0.5 * pw + 0.5, zt + 0.3 * he, 0.28 * he
    e = np.sqrt(((ax - xp) / (0.5 * pw)) ** 2 + ((z - zp) / hp) ** 2)
    d = np.minimum((1 - e) * min(0.5 * pw, hp), np.minimum(y - (a - 3), yc + 0.2 * cy - y))
    # 2. Laminae: a ring around the posterior canal.
    ri = np.sqrt(((y - yc) / (cy + 1)) ** 2 + (x / (cx + 1)) ** 2)
    ro = np.sqrt(((y - yc) / (cy + 1 + LAMINA_MM)) ** 2 + (x / (cx + 1 + LAMINA_MM)) ** 2)
    ring = np.minimum((ri - 1) * (min(cy, cx) + 1), (1 - ro) * (min(cy, cx) + 1 + LAMINA_MM))
    ring = np.minimum(ring, y - yc + 0.3 * cy)
    d = np.maximum(d, np.minimum(ring, np.minimum(z - (zt + 0.1 * he), zb - z)))
    # 3. Spinous process: midline plate, tapering and slanting down towards its tip.
    y0 = yc + cy + 1 + 0.5 * LAMINA_MM
    t = np.clip((y - y0) / vp.spinous_mm, 0, 1)
    zc, hh = zt + he * (0.5 + 0.2 * t), he * (0.3 - 0.1 * t)
    sp = np.minimum(
        np.minimum(2.5 + 1.5 * t - ax, hh - np.abs(z - zc)),
        np.minimum(y - y0 + 2, y0 + vp.spinous_mm - y),
    )
    d = np.maximum(d, sp)
    # 4. Transverse processes at pedicle level (thoracic ones point backwards).
    if vp.transverse_mm > 0:
        k = 0.35 if vp.name.startswith("T") else 0.05
        ytc = yc + k * np.maximum(ax - xp, 0)
        tp = np.minimum(
            np.minimum(3.5 - np.abs(y - ytc), 0.15 * he - np.abs(z - zp)),
            np.minimum(ax - xp + 2, xp + vp.transverse_mm - ax),
        )
        d = np.maximum(d, tp)
    return d


def vertebra_heights(
    vp: VertebraParams, fr: Fracture | None = None, step_mm: float = 0.1
) -> dict[str, float]:
    """Anterior/middle/posterior body heights (mm) measured with ``util.heights.heights_2d`` on
    a ``step_mm`` mid-sagittal render of the body (the definition heights.json uses)."""
    a, h = 0.5 * vp.depth_mm, vp.height_mm
    # Wedged bodies reach beyond [0, h] at one wall (the simple phantom keeps its 2 mm grid).
    m = 2.0 if not (vp.wedge_deg or vp.irregular_mm) else 6.0
    y = np.arange(-a - 1, a + 1, step_mm)[None, :, None]
    z = np.arange(-m, h + m, step_mm)[:, None, None]
    mask = body_depth(vp, fr, 0.0, h, z, y, np.zeros((1, 1, 1)))[..., 0] >= 0
    res = heights_2d(mask, row_mm=step_mm)
    return {
        "anterior_mm": round(res.anterior_mm, 3),
        "middle_mm": round(res.middle_mm, 3),
        "posterior_mm": round(res.posterior_mm, 3),
    }


def height_loss(healthy: Mapping[str, float], fractured: Mapping[str, float]) -> float:
    """Genant height loss: ``max over thirds of 1 - fractured / healthy``."""
    return max(1 - fractured[k] / healthy[k] for k in ("anterior_mm", "middle_mm", "posterior_mm"))
