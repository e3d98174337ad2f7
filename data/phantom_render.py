"""Procedural straightened spine CT: the framework's embedded data set.

Coordinates are millimetres on the (I, P, L) voxel axes: ``z`` runs inferior, ``y`` posterior,
``x`` left; the spine axis is ``y = x = 0`` (the centre of every vertebral body's axial
section). Everything is an analytic function of position (partial-volume edges, smooth random
fields seeded per patient/structure, white noise seeded per slice), so any window of the spine
renders identically at a given spacing.

Anatomy: context vertebrae T4-T9 above, the sample vertebrae T10-L5 (VerSe ids 17-24), the
sacrum (id 26) below. Each body is a superelliptic cylinder (slightly waisted, rounded rims,
0.8 mm endplate concavity) with a cortical shell and trabecular texture; pedicles, laminae,
spinous and transverse processes stay inside the body's S-I extent at the posterior wall.
Discs fill the gaps between endplates; the spinal canal (CSF, cord above L1) runs behind the
bodies; soft tissue, visceral fat, paraspinal muscle, psoas, aorta, subcutaneous fat and air
surround them.

Fractures (Genant): ``wedge`` lowers the superior endplate anteriorly (linear to zero at 85 %
of the depth), ``biconcave`` depresses both endplates centrally (zero at the anterior and
posterior rims), ``crush`` lowers the whole superior endplate. The severity is calibrated so
that the height loss ``1 - fractured / healthy`` of the most affected third, measured with
:func:`util.heights.heights_2d` on a 0.1 mm mid-sagittal render of the body, hits a target
drawn inside the grade's band. **Column closure**: the spine is built from the sacrum upwards,
so everything above a fractured vertebra moves down by the height lost at its posterior wall
rim (the full loss for a crush, zero for wedge and biconcave, whose posterior wall and rims are
intact); the disc above fills the deformed endplate.

Full-spine use (e.g. to test a straightening tool by bending it): :func:`render_patient`
returns the whole straightened spine as ``SpineRender`` (HU, labels, heatmap, coordinates in
mm, per-vertebra centroids and heights). ``fov_ap_mm`` / ``fov_lr_mm`` widen the in-plane
field and ``z_margin_mm`` the S-I margin around the sample vertebrae.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
_ORDER = ("T4", "T5", "T6", "T7", "T8", "T9", *SAMPLE_VERTEBRAE, "S1")
#: Upper bound of a body height (mm): keeps a vertebra below the 40-row band at every size.
MAX_BODY_HEIGHT_MM = 31.5
#: Genant bands of the height loss per grade, and the sub-ranges targets are drawn from.
GENANT_BANDS = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 1.0)}
TARGET_LOSS = {1: (0.205, 0.245), 2: (0.27, 0.38), 3: (0.42, 0.53)}
GRADE_PROPORTIONS = {1: 0.55, 2: 0.30, 3: 0.15}
SHAPE_PROPORTIONS = {"wedge": 0.5, "biconcave": 0.3, "crush": 0.2}
#: Fraction of sample vertebrae fractured and the per-patient cap.
FRACTURE_RATE, MAX_FRACTURES_PER_PATIENT = 0.2, 2

_P_EXP, _CONCAVITY, _ROUND, _ROUND_R0, _WAIST = 2.6, 0.8, 2.0, 0.75, 0.05
_EPIDURAL, _LAMINA, _WEDGE_END = 1.5, 5.0, 0.85
_HU_AIR, _HU_FAT, _HU_SOFT, _HU_MUSCLE, _HU_CSF, _HU_CORD = -1000.0, -100.0, 40.0, 52.0, 10.0, 35.0
_OFF = 1_000_000  # keeps lattice/slice indices non-negative in seed sequences


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


@dataclass(frozen=True)
class VertebraInfo:
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
    ``y_mm``, ``x_mm`` voxel-centre coordinates (mm, spine axis at y = x = 0).
    """

    ct_hu: np.ndarray
    labels: np.ndarray
    heatmap: np.ndarray
    spacing_mm: float
    z_mm: np.ndarray
    y_mm: np.ndarray
    x_mm: np.ndarray
    vertebrae: tuple[VertebraInfo, ...] = field(default_factory=tuple)

    def info(self, verse_id: int) -> VertebraInfo:
        for v in self.vertebrae:
            if v.verse_id == verse_id:
                return v
        raise ValueError(f"vertebra id {verse_id} is not part of this render")


# --------------------------------------------------------------------------- geometry
def _surfaces(
    vp: VertebraParams,
    fr: Fracture | None,
    z_top: float,
    z_bot: float,
    y: np.ndarray,
    x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Superior/inferior endplate levels (mm) over the axial grid, and the superellipse radius."""
    a, b = 0.5 * vp.depth_mm, 0.5 * vp.width_mm
    r = ((np.abs(y) / a) ** _P_EXP + (np.abs(x) / b) ** _P_EXP) ** (1.0 / _P_EXP)
    rc = np.minimum(r, 1.0)
    # Endplate concavity plus rounded rims.
    dip = _CONCAVITY * (1 - rc**2) + _ROUND * np.clip((rc - _ROUND_R0) / (1 - _ROUND_R0), 0, 1) ** 2
    top, bot = z_top + dip, z_bot - dip
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


def _closure(vp: VertebraParams, fr: Fracture | None) -> float:
    """Height (mm) lost at the posterior wall rim: how far everything above moves down."""
    if fr is None:
        return 0.0
    h = _surfaces(vp, None, 0.0, 0.0, np.array(0.5 * vp.depth_mm), np.array(0.0))
    f = _surfaces(vp, fr, 0.0, 0.0, np.array(0.5 * vp.depth_mm), np.array(0.0))
    return float((f[0] - h[0]) + (h[1] - f[1]))


def _body_depth(
    vp: VertebraParams,
    fr: Fracture | None,
    z_top: float,
    z_bot: float,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
) -> np.ndarray:
    """Signed depth (mm, > 0 inside) of the body; z (Z,1,1), y (1,Y,1), x (1,1,X)."""
    top, bot, r = _surfaces(vp, fr, z_top, z_bot, y, x)
    rho = np.sqrt(y**2 + x**2)
    rb = np.where(r > 1e-6, rho / np.maximum(r, 1e-6), 1e3)  # boundary radius along the ray
    half = 0.5 * (z_bot - z_top)
    waist = 1 - _WAIST * np.clip(1 - ((z - z_top - half) / half) ** 2, 0, 1)
    return np.minimum(np.minimum(z - top, bot - z), rb * waist - rho)


def _posterior_depth(
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
    zt, zb, _ = _surfaces(vp, fr, z_top, z_bot, np.array(a - 1.0), np.array(0.0))
    zt, zb = float(zt) + 0.8, float(zb) - 0.8
    he = zb - zt
    cy, cx = 0.5 * vp.canal_ap_mm, 0.5 * vp.canal_lr_mm
    yc, ax = a + _EPIDURAL + cy, np.abs(x)
    # 1. Pedicles: elliptic (x, z) section, from the posterior wall to the canal's middle.
    pw = 0.16 * vp.width_mm
    xp, zp, hp = cx + 0.5 * pw + 0.5, zt + 0.3 * he, 0.28 * he
    e = np.sqrt(((ax - xp) / (0.5 * pw)) ** 2 + ((z - zp) / hp) ** 2)
    d = np.minimum((1 - e) * min(0.5 * pw, hp), np.minimum(y - (a - 3), yc + 0.2 * cy - y))
    # 2. Laminae: a ring around the posterior canal.
    ri = np.sqrt(((y - yc) / (cy + 1)) ** 2 + (x / (cx + 1)) ** 2)
    ro = np.sqrt(((y - yc) / (cy + 1 + _LAMINA)) ** 2 + (x / (cx + 1 + _LAMINA)) ** 2)
    ring = np.minimum((ri - 1) * (min(cy, cx) + 1), (1 - ro) * (min(cy, cx) + 1 + _LAMINA))
    ring = np.minimum(ring, y - yc + 0.3 * cy)
    d = np.maximum(d, np.minimum(ring, np.minimum(z - (zt + 0.1 * he), zb - z)))
    # 3. Spinous process: midline plate, tapering and slanting down towards its tip.
    y0 = yc + cy + 1 + 0.5 * _LAMINA
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
    y = np.arange(-a - 1, a + 1, step_mm)[None, :, None]
    z = np.arange(-2.0, h + 2.0, step_mm)[:, None, None]
    mask = _body_depth(vp, fr, 0.0, h, z, y, np.zeros((1, 1, 1)))[..., 0] >= 0
    res = heights_2d(mask, row_mm=step_mm)
    return {
        "anterior_mm": round(res.anterior_mm, 3),
        "middle_mm": round(res.middle_mm, 3),
        "posterior_mm": round(res.posterior_mm, 3),
    }


def height_loss(healthy: Mapping[str, float], fractured: Mapping[str, float]) -> float:
    """Genant height loss: ``max over thirds of 1 - fractured / healthy``."""
    return max(1 - fractured[k] / healthy[k] for k in ("anterior_mm", "middle_mm", "posterior_mm"))


def _calibrate(vp: VertebraParams, grade: int, shape: str, target: float) -> Fracture:
    """Bisection on the severity so that the measured height loss equals ``target``."""
    healthy = vertebra_heights(vp)
    lo, hi = 0.0, vp.height_mm
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        loss = height_loss(healthy, vertebra_heights(vp, Fracture(grade, shape, target, mid)))
        lo, hi = (mid, hi) if loss < target else (lo, mid)
    return Fracture(grade, shape, round(target, 4), 0.5 * (lo + hi))


# --------------------------------------------------------------------------- parameters
def plan_fractures(rng: np.random.Generator, n_patients: int) -> list[dict[int, tuple[int, str]]]:
    """Fractures of a whole data set: ``FRACTURE_RATE`` of the sample vertebrae (at most
    ``MAX_FRACTURES_PER_PATIENT`` per patient, never the first or last sample vertebra),
    grades and shapes by largest-remainder quotas of their proportions, shuffled."""
    n_frac = min(
        round(FRACTURE_RATE * n_patients * len(SAMPLE_VERTEBRAE)),
        MAX_FRACTURES_PER_PATIENT * n_patients,
    )
    slots = rng.choice(n_patients * MAX_FRACTURES_PER_PATIENT, size=n_frac, replace=False)
    counts = np.bincount(slots // MAX_FRACTURES_PER_PATIENT, minlength=n_patients)

    def quota(props: Mapping) -> list:
        raw = {k: p * n_frac for k, p in props.items()}
        n = {k: int(math.floor(v)) for k, v in raw.items()}
        for k in sorted(raw, key=lambda k: n[k] - raw[k])[: n_frac - sum(n.values())]:
            n[k] += 1
        out = [k for k in props for _ in range(n[k])]
        return [out[i] for i in rng.permutation(len(out))]

    grades, shapes = quota(GRADE_PROPORTIONS), quota(SHAPE_PROPORTIONS)
    candidates = [ANATOMY[n][0] for n in SAMPLE_VERTEBRAE[1:-1]]
    plan, i = [], 0
    for c in counts:
        levels = sorted(rng.choice(candidates, size=int(c), replace=False).tolist())
        plan.append({int(v): (int(grades[i + j]), shapes[i + j]) for j, v in enumerate(levels)})
        i += int(c)
    return plan


def sample_patient_params(
    rng: np.random.Generator, fractures: Mapping[int, tuple[int, str]] | None = None
) -> PatientParams:
    """Draw one patient. ``fractures``: VerSe id -> (grade 1-3, shape); ``None`` draws 0-2
    fractures at random. Anatomy varies in scale, disc heights, depth/width, bone density."""
    ids = {ANATOMY[n][0]: n for n in SAMPLE_VERTEBRAE[1:-1]}
    if fractures is None:
        k = int(rng.choice(3, p=[0.1, 0.25, 0.65]))
        g = rng.choice(list(GRADE_PROPORTIONS), size=k, p=list(GRADE_PROPORTIONS.values()))
        s = rng.choice(list(SHAPE_PROPORTIONS), size=k, p=list(SHAPE_PROPORTIONS.values()))
        levels = rng.choice(sorted(ids), size=k, replace=False)
        fractures = {int(v): (int(gg), str(ss)) for v, gg, ss in zip(levels, g, s)}
    for vid, (grade, shape) in fractures.items():
        if vid not in ids:
            raise ValueError(
                f"fracture at vertebra id {vid}: only ids {sorted(ids)} "
                "(not the first/last sample vertebra) can be fractured"
            )
        if grade not in TARGET_LOSS or shape not in SHAPE_PROPORTIONS:
            raise ValueError(f"fracture at {vid}: bad grade {grade} or shape {shape!r}")
    scale_h = float(np.clip(rng.normal(1, 0.04), 0.92, 1.08))
    scale_dw = float(np.clip(rng.normal(1, 0.06), 0.88, 1.12))
    disc_f = float(rng.uniform(0.75, 1.2))
    verts = []
    for name in _ORDER:
        vid, h, dep, wid, disc = ANATOMY[name]
        j = rng.normal(0, 1, size=4)
        lumbar, sacrum = name.startswith("L"), name == "S1"
        if not sacrum:
            h = min(h * scale_h * (1 + 0.015 * j[0]), MAX_BODY_HEIGHT_MM)
        verts.append(
            VertebraParams(
                name=name,
                verse_id=vid,
                height_mm=float(h),
                depth_mm=float(dep * scale_dw * (1 + 0.02 * j[1])),
                width_mm=float(wid * scale_dw * (1 + 0.02 * j[2])),
                disc_above_mm=float(disc * disc_f * (1 + 0.08 * j[3])),
                canal_ap_mm=10.0 if sacrum else (16.0 if lumbar else 15.0),
                canal_lr_mm=18.0 if sacrum else (22.0 if lumbar else 16.0),
                spinous_mm=10.0 if sacrum else (30.0 if lumbar else 34.0),
                transverse_mm=0.0 if sacrum else (24.0 if lumbar else 18.0),
                is_sample=name in SAMPLE_VERTEBRAE,
            )
        )
    by_id = {v.verse_id: v for v in verts}
    fr = {}
    for vid, (grade, shape) in sorted(fractures.items()):
        target = float(rng.uniform(*TARGET_LOSS[grade]))
        fr[int(vid)] = _calibrate(by_id[vid], grade, shape, target)
    return PatientParams(
        seed=int(rng.integers(2**31 - 1)),
        vertebrae=tuple(verts),
        fractures=fr,
        cortical_mm=float(rng.uniform(0.9, 1.5)),
        trabecular_hu=float(rng.uniform(150, 260)),
        cortical_hu=float(rng.uniform(750, 950)),
        skin_post_mm=float(rng.uniform(88, 115)),
        skin_ant_mm=float(rng.uniform(110, 220)),
        fat_mm=float(rng.uniform(8, 25)),
        noise_hu=float(rng.uniform(12, 25)),
    )


# --------------------------------------------------------------------------- rendering
def _layout(p: PatientParams, applied: frozenset[int]) -> list[tuple[float, float]]:
    """(z_top, z_bot) nominal endplate levels per vertebra, built up from the sacrum (z = 0)."""
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(p.vertebrae)
    out[-1] = (0.0, p.vertebrae[-1].height_mm)
    for i in range(len(p.vertebrae) - 2, -1, -1):
        below = p.vertebrae[i + 1]
        fb = p.fractures.get(below.verse_id) if below.verse_id in applied else None
        z_bot = out[i + 1][0] + _closure(below, fb) - below.disc_above_mm
        out[i] = (z_bot - p.vertebrae[i].height_mm, z_bot)
    return out


def _hash_normal(seed: int, tag: int, iz: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Standard normal values that depend only on (seed, tag, lattice index): a splitmix64 hash
    of the key, two uniforms, Box-Muller. Any sub-range of a lattice gets the same values."""
    m = np.uint64
    base = (seed * 0x9E3779B97F4A7C15 ^ tag * 0xC2B2AE3D27D4EB4F) & 0xFFFFFFFFFFFFFFFF
    key = (
        m(base)
        ^ (iz.astype(m) + m(_OFF)) * m(0x165667B19E3779F9)
        ^ (iy.astype(m) + m(_OFF)) * m(0x27D4EB2F165667C5)
        ^ (ix.astype(m) + m(_OFF)) * m(0x85EBCA77C2B2AE63)
    )
    key ^= key >> m(30)
    key *= m(0xBF58476D1CE4E5B9)
    key ^= key >> m(27)
    key *= m(0x94D049BB133111EB)
    key ^= key >> m(31)
    u1 = ((key >> m(32)).astype(np.float64) + 1.0) / 2.0**32
    u2 = (key & m(0xFFFFFFFF)).astype(np.float64) / 2.0**32
    return (np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


def _field(
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
    vals = _hash_normal(seed, tag, iz[:, None, None], iy[None, :, None], ix[None, None, :])
    vals = np.matmul(my, vals @ mx.T)  # (Lz, Y, X)
    return (mz @ vals.reshape(len(iz), -1)).reshape(len(mz), len(my), len(mx))


def _paint(hu: np.ndarray, depth: np.ndarray, value: np.ndarray | float, s: float) -> np.ndarray:
    """Blend ``value`` into ``hu`` with partial-volume occupancy ``clip(depth / s + 0.5)``."""
    occ = np.clip(depth / s + 0.5, 0, 1)
    hu *= 1 - occ
    hu += occ * value
    return occ


def _rng_slice(c: np.ndarray, lo: float, hi: float) -> slice:
    """Indices of the sorted coordinates ``c`` inside ``[lo, hi)``."""
    return slice(int(np.searchsorted(c, lo)), int(np.searchsorted(c, hi)))


def _background(
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
    sy = _rng_slice(y, -1e9, -(a + 4) + s)
    if sy.stop > sy.start:
        fv = _field(p.seed, 1, (z, y[sy], x), (12.0, 12.0, 12.0), s)
        ff = 1 / (1 + np.exp(-3 * (_field(p.seed, 2, (z, y[sy], x), (9.0, 9.0, 9.0), s) - 0.5)))
        wv = np.clip((-y[sy] - (a + 4)) / 6 + 0.5, 0, 1)[None, :, None]
        hu[:, sy] += wv * ((_HU_SOFT - 2 + 12 * fv) * (1 - ff) + _HU_FAT * ff - _HU_SOFT)
    # 2. Paraspinal muscles behind the canal, marbled with fat.
    sy = _rng_slice(y, a + 14 - s, 1e9)
    if sy.stop > sy.start:
        fm = _field(p.seed, 3, (z, y[sy], x), (6.0, 4.0, 4.0), s)
        marb = np.clip((fm - 1.3) * 2, 0, 1)
        wm = np.clip((y[sy] - (a + 14)) / 5 + 0.5, 0, 1)[None, :, None]
        hu[:, sy] += wm * ((_HU_MUSCLE + 6 * fm) * (1 - marb) + _HU_FAT * marb - _HU_SOFT)
    # 3. Psoas, growing from T12 to L3, beside the lumbar bodies.
    sz, sy = _rng_slice(z, zl["T12"], 1e9), _rng_slice(y, -16, 16)
    grow = np.clip((z[sz] - zl["T12"]) / (zl["L3"] - zl["T12"]), 0.05, 1)[:, None, None]
    yy = y[sy][None, :, None]
    for side in (-1, 1):
        e = np.sqrt(
            (yy / (14 * grow)) ** 2 + ((xx - side * (ref.width_mm / 2 + 14)) / (12 * grow)) ** 2
        )
        _paint(hu[sz, sy], (1 - e) * 10 * grow, _HU_MUSCLE - 4, s)
    # 4. Aorta (non-contrast blood), left of the midline, down to its L4 bifurcation.
    sz, sy = _rng_slice(z, -1e9, zl["L4"] + s), _rng_slice(y, -(a + 27), -(a + 1))
    zz, yy = z[sz][:, None, None], y[sy][None, :, None]
    r_ao = np.sqrt((yy + a + 14) ** 2 + (xx - 9) ** 2)
    _paint(hu[sz, sy], np.minimum(11 - r_ao, zl["L4"] - zz), _HU_SOFT, s)
    # 5. Body contour: skin front and back, subcutaneous fat beneath it, air outside.
    zz = z[:, None]
    post = p.skin_post_mm + 6 * np.sin(2 * np.pi * zz / 320 + p.seed % 7)
    ant = p.skin_ant_mm + 10 * np.sin(2 * np.pi * zz / 410 + p.seed % 5)
    for sy in (
        _rng_slice(y, -1e9, -(p.skin_ant_mm - 10 - p.fat_mm - s)),
        _rng_slice(y, p.skin_post_mm - 6 - p.fat_mm - s, 1e9),
    ):
        d_skin = np.minimum(post - y[sy][None, :], y[sy][None, :] + ant)[:, :, None]
        _paint(hu[:, sy], p.fat_mm - d_skin, _HU_FAT, s)
        _paint(hu[:, sy], -d_skin, _HU_AIR, s)
    return hu


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
    yc = along([0.5 * v.depth_mm + _EPIDURAL + 0.5 * v.canal_ap_mm for v in verts])
    e = np.sqrt(((yy - yc) / cy) ** 2 + (xx / cx) ** 2)
    _paint(box, (1 - e) * np.minimum(cy, cx), _HU_CSF, s)
    e = np.sqrt(((yy - yc) / 4.5) ** 2 + (xx / 5.5) ** 2)
    _paint(box, np.minimum((1 - e) * 4.5, zl["L1"] - z[:, None, None]), _HU_CORD, s)


def _paint_disc(
    box: np.ndarray, up: tuple, dn: tuple, z: np.ndarray, yy: np.ndarray, xx: np.ndarray, s: float
) -> None:
    """Disc between two ``(params, fracture, z_top, z_bot)`` levels: it fills the space between
    the upper inferior endplate and the lower superior endplate (1 mm under both, hidden by
    the bone painted afterwards); nucleus 80 HU, annulus 105 HU."""
    (vu, fu, tu, bu), (vd, fd, td, bd) = up, dn
    sl = _rng_slice(
        z, bu - 4 - (fu.severity_mm if fu else 0), td + 4 + (fd.severity_mm if fd else 0)
    )
    if sl.stop <= sl.start:
        return
    bot_u = _surfaces(vu, fu, tu, bu, yy, xx)[1]
    top_d = _surfaces(vd, fd, td, bd, yy, xx)[0]
    a, b = 0.26 * (vu.depth_mm + vd.depth_mm), 0.26 * (vu.width_mm + vd.width_mm)
    r = ((np.abs(yy) / a) ** _P_EXP + (np.abs(xx) / b) ** _P_EXP) ** (1 / _P_EXP)
    rho = np.sqrt(yy**2 + xx**2)
    lat = np.where(r > 1e-6, rho / np.maximum(r, 1e-6), 1e3) - rho
    zs = z[sl, None, None]
    d = np.minimum(np.minimum(zs - bot_u + 1, top_d + 1 - zs), lat)
    _paint(box[sl], d, 80 + 25 * np.clip((r - 0.45) / 0.45, 0, 1), s)


def _paint_vertebra(
    box: np.ndarray,
    lab: np.ndarray,
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
    """Paint one vertebra into the spine box (HU, label, 0.05 x body occupancy in ``heat``).
    Returns the body's S-I centroid (mm), ``None`` when the body leaves the window."""
    sl = _rng_slice(z, zt - 2, zb + 2)
    if sl.stop <= sl.start:
        return None
    zs, yy, xx = z[sl, None, None], yb[None, :, None], x[None, None, :]
    # 1. Signed depth of body and posterior elements; the label is where it is >= 0.
    db = _body_depth(v, fr, zt, zb, zs, yy, xx)
    d = np.maximum(db, _posterior_depth(v, fr, zt, zb, zs, yy, xx))
    # 2. Trabecular HU: texture in vertebra coordinates (it moves with the bone) plus a
    #    sclerotic band under collapsed endplates, computed over the body rows only.
    trab = np.full(d.shape, p.trabecular_hu + 30, np.float32)
    bs = _rng_slice(yb, -0.5 * v.depth_mm - 2, 0.5 * v.depth_mm + 2)
    tb = p.trabecular_hu + 45 * _field(
        p.seed, 100 + v.verse_id, (z[sl], yb[bs], x), (2.4, 1.3, 1.3), s, origin=(zt, 0.0, 0.0)
    )
    if fr is not None:
        top, bot, _ = _surfaces(v, fr, zt, zb, yy[:, bs], xx)
        top0, bot0, _ = _surfaces(v, None, zt, zb, yy[:, bs], xx)
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
        p: from :func:`sample_patient_params`.
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
    centres = [0.5 * (t + b) for (t, b), v in zip(_layout(p, frozenset()), verts) if v.is_sample]
    margin = fov_ap_mm / 2 + 2 * s if z_margin_mm is None else z_margin_mm
    lo, hi = (min(centres) - margin, max(centres) + margin) if z_range_mm is None else z_range_mm
    k = np.arange(math.floor(lo / s), math.ceil(hi / s) + 1)
    z = (k * s).astype(np.float32)
    ny, nx = int(round(fov_ap_mm / s)), int(round(fov_lr_mm / s))
    y = ((np.arange(ny) - ny // 2) * s).astype(np.float32)
    x = ((np.arange(nx) - nx // 2) * s).astype(np.float32)
    # 2. Soft tissue, then the spine box (the y rows that hold bone and canal).
    zl = {v.name: 0.5 * (t + b) for (t, b), v in zip(lay, verts)}
    hu = _background(p, next(v for v in verts if v.name == "L1"), zl, z, y, x, s)
    labels = np.zeros(hu.shape, np.uint8)
    heat = np.zeros(hu.shape, np.float32)
    tip = max(0.5 * v.depth_mm + _EPIDURAL + v.canal_ap_mm + _LAMINA + v.spinous_mm for v in verts)
    j0 = int(np.searchsorted(y, -0.5 * max(v.depth_mm for v in verts) - 6))
    j1 = int(np.searchsorted(y, tip + 6))
    yb, box = y[j0:j1], hu[:, j0:j1]
    _paint_canal(box, verts, zl, z, yb[None, :, None], x[None, None, :], s)
    levels = list(zip(verts, fr_of, *zip(*lay)))
    for up, dn in zip(levels[:-1], levels[1:]):
        _paint_disc(box, up, dn, z, yb[None, :, None], x[None, None, :], s)
    # 3. Vertebrae, their metadata and the provisional heatmap blobs of the fractured ones.
    infos = []
    for v, fr, zt, zb in levels:
        zc = _paint_vertebra(box, labels[:, j0:j1], heat[:, j0:j1], p, v, fr, zt, zb, z, yb, x, s)
        if fr is not None and zc is not None:
            c, sg = _blob(v, fr, zt, zc)
            g = [np.exp(-0.5 * ((a - ci) / si) ** 2) for a, ci, si in zip((z, y, x), c, sg)]
            np.maximum(heat, g[0][:, None, None] * g[1][None, :, None] * g[2], out=heat)
        hh = vertebra_heights(v) if v.is_sample else {}
        infos.append(
            VertebraInfo(
                name=v.name,
                verse_id=v.verse_id,
                is_sample=v.is_sample,
                grade=fr.grade if fr else 0,
                shape=fr.shape if fr else "none",
                fractured=fr is not None,
                centroid_vox=None if zc is None else (float((zc - z[0]) / s), ny // 2, nx // 2),
                centroid_mm=None if zc is None else (zc, 0.0, 0.0),
                healthy_heights=hh,
                fractured_heights=vertebra_heights(v, fr) if (fr and v.is_sample) else dict(hh),
            )
        )
    heat = np.round(np.where(heat < 1e-3, 0, heat) * 1024) / 1024
    # 4. White noise, seeded per absolute slice index so that windows agree.
    amp = p.noise_hu * s**-1.5
    for i, kk in enumerate(k):
        rng = np.random.default_rng([p.seed, 7, int(kk) + _OFF])
        hu[i] += amp * rng.standard_normal((ny, nx), dtype=np.float32)
    return SpineRender(hu, labels, np.clip(heat, 0, 1).astype(np.float32), s, z, y, x, tuple(infos))


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
