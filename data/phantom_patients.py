"""Phantom patients: draw one patient's anatomy, plan the fractures of a whole data set and
calibrate each fracture's severity.

The severity is calibrated so that the height loss ``1 - fractured / healthy`` of the most
affected third, measured with :func:`data.phantom_anatomy.vertebra_heights`, hits a target
drawn inside the grade's Genant band.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from data.phantom_anatomy import (
    ANATOMY,
    MAX_BODY_HEIGHT_MM,
    SAMPLE_VERTEBRAE,
    SPINE_LEVELS,
    Fracture,
    PatientParams,
    VertebraParams,
    height_loss,
    vertebra_heights,
)
from data.phantom_population import (
    MALE_DEPTH,
    body_geometry,
    degenerative,
    plan_fracture_levels,
    sample_sex,
    sample_shapes,
)

#: ``--morphometry`` choices: the published model (default) and the first phantom.
MORPHOMETRIES = ("published", "simple")

#: Genant bands of the height loss per grade, and the sub-ranges targets are drawn from.
GENANT_BANDS = {1: (0.20, 0.25), 2: (0.25, 0.40), 3: (0.40, 1.0)}
TARGET_LOSS = {1: (0.205, 0.245), 2: (0.27, 0.38), 3: (0.42, 0.53)}
GRADE_PROPORTIONS = {1: 0.55, 2: 0.30, 3: 0.15}
SHAPE_PROPORTIONS = {"wedge": 0.5, "biconcave": 0.3, "crush": 0.2}
#: Published phantom's appearance (ranges drawn per patient), set against the real CT's
#: measures: cortical shell (mm) and HU, trabecular HU and texture SD, disc nucleus/annulus
#: HU, paraspinal muscle HU and fat-marbling threshold, noise (HU at 1 mm) and its in-plane
#: correlation (mm), rim rounding of the bodies (mm, from relative radius).
CORTICAL_MM, CORTICAL_HU = (0.5, 0.9), (700.0, 900.0)
TRABECULAR_HU, TRABECULAR_SD_HU = (90.0, 170.0), 45.0
DISC_HU, MUSCLE_HU, MARBLING = (75.0, 95.0), (15.0, 35.0), (1.0, 1.3)
NOISE_HU, NOISE_CORR_MM = (20.0, 40.0), 0.7
ROUND_MM, ROUND_START = 6.0, 0.68
#: Fraction of sample vertebrae fractured and the per-patient cap.
FRACTURE_RATE, MAX_FRACTURES_PER_PATIENT = 0.2, 2


def calibrate_fracture(vp: VertebraParams, grade: int, shape: str, target: float) -> Fracture:
    """Bisection on the severity so that the measured height loss equals ``target``."""
    healthy = vertebra_heights(vp)
    lo, hi = 0.0, vp.height_mm
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        loss = height_loss(healthy, vertebra_heights(vp, Fracture(grade, shape, target, mid)))
        lo, hi = (mid, hi) if loss < target else (lo, mid)
    return Fracture(grade, shape, round(target, 4), 0.5 * (lo + hi))


# --------------------------------------------------------------------------- parameters
def _quota(rng: np.random.Generator, props: Mapping, n_frac: int) -> list:
    """``n_frac`` items in the largest-remainder quotas of ``props``, shuffled."""
    raw = {k: p * n_frac for k, p in props.items()}
    n = {k: int(math.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: n[k] - raw[k])[: n_frac - sum(n.values())]:
        n[k] += 1
    out = [k for k in props for _ in range(n[k])]
    return [out[i] for i in rng.permutation(len(out))]


def plan_fractures(
    rng: np.random.Generator, n_patients: int, morphometry: str = "simple"
) -> list[dict[int, tuple[int, str]]]:
    """Fractures of a whole data set, grades and shapes by largest-remainder quotas of their
    proportions, shuffled. ``simple``: ``FRACTURE_RATE`` of the sample vertebrae (at most
    ``MAX_FRACTURES_PER_PATIENT`` per patient, never the first or last sample vertebra);
    ``published``: levels of :func:`data.phantom_population.plan_fracture_levels`."""
    if morphometry == "published":
        levels = plan_fracture_levels(rng, n_patients)
        n_frac = sum(len(v) for v in levels)
        grades = _quota(rng, GRADE_PROPORTIONS, n_frac)
        shapes = _quota(rng, SHAPE_PROPORTIONS, n_frac)
        plan, i = [], 0
        for ids in levels:
            plan.append({v: (int(grades[i + j]), shapes[i + j]) for j, v in enumerate(ids)})
            i += len(ids)
        return plan
    if morphometry != "simple":
        raise ValueError(f"--morphometry must be one of {MORPHOMETRIES}, got {morphometry!r}")
    n_frac = min(
        round(FRACTURE_RATE * n_patients * len(SAMPLE_VERTEBRAE)),
        MAX_FRACTURES_PER_PATIENT * n_patients,
    )
    slots = rng.choice(n_patients * MAX_FRACTURES_PER_PATIENT, size=n_frac, replace=False)
    counts = np.bincount(slots // MAX_FRACTURES_PER_PATIENT, minlength=n_patients)
    grades = _quota(rng, GRADE_PROPORTIONS, n_frac)
    shapes = _quota(rng, SHAPE_PROPORTIONS, n_frac)
    candidates = [ANATOMY[n][0] for n in SAMPLE_VERTEBRAE[1:-1]]
    plan, i = [], 0
    for c in counts:
        levels = sorted(rng.choice(candidates, size=int(c), replace=False).tolist())
        plan.append({int(v): (int(grades[i + j]), shapes[i + j]) for j, v in enumerate(levels)})
        i += int(c)
    return plan


def _check_fractures(
    rng: np.random.Generator, fractures: Mapping[int, tuple[int, str]] | None
) -> Mapping[int, tuple[int, str]]:
    """``fractures`` checked, or 0-2 random ones drawn when it is ``None``."""
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
    return fractures


def _vertebra(
    name: str, height: float, depth: float, width: float, disc: float, **kw
) -> VertebraParams:
    """One level's parameters with the posterior-element sizes of its region."""
    lumbar, sacrum = name.startswith("L"), name == "S1"
    return VertebraParams(
        name=name,
        verse_id=ANATOMY[name][0],
        height_mm=float(height),
        depth_mm=float(depth),
        width_mm=float(width),
        disc_above_mm=float(disc),
        canal_ap_mm=10.0 if sacrum else (16.0 if lumbar else 15.0),
        canal_lr_mm=18.0 if sacrum else (22.0 if lumbar else 16.0),
        spinous_mm=10.0 if sacrum else (30.0 if lumbar else 34.0),
        transverse_mm=0.0 if sacrum else (24.0 if lumbar else 18.0),
        is_sample=name in SAMPLE_VERTEBRAE,
        **kw,
    )


def _simple_vertebrae(rng: np.random.Generator) -> list[VertebraParams]:
    """The first phantom: nominal height x patient scale x (1 + 1.5 % noise), box bodies."""
    scale_h = float(np.clip(rng.normal(1, 0.04), 0.92, 1.08))
    scale_dw = float(np.clip(rng.normal(1, 0.06), 0.88, 1.12))
    disc_f = float(rng.uniform(0.75, 1.2))
    verts = []
    for name in SPINE_LEVELS:
        _, h, dep, wid, disc = ANATOMY[name]
        j = rng.normal(0, 1, size=4)
        if name != "S1":
            h = min(h * scale_h * (1 + 0.015 * j[0]), MAX_BODY_HEIGHT_MM)
        verts.append(
            _vertebra(
                name,
                h,
                dep * scale_dw * (1 + 0.02 * j[1]),
                wid * scale_dw * (1 + 0.02 * j[2]),
                disc * disc_f * (1 + 0.08 * j[3]),
            )
        )
    return verts


def _published_vertebrae(rng: np.random.Generator, sex: str) -> list[VertebraParams]:
    """The published morphometry (:mod:`data.phantom_population`): wedged, concave, correlated
    heights by sex and level, with degenerative changes in some patients."""
    scale_dw = float(np.clip(rng.normal(1, 0.06), 0.88, 1.12))
    disc_f = float(rng.uniform(0.75, 1.2))
    shapes = sample_shapes(rng, sex, scale_dw)
    degen = degenerative(rng)
    verts = []
    for name in SPINE_LEVELS:
        _, h, dep, wid, disc = ANATOMY[name]
        j = rng.normal(0, 1, size=3)
        dw = scale_dw * (MALE_DEPTH if sex == "M" else 1.0)
        depth, width = dep * dw * (1 + 0.02 * j[0]), wid * dw * (1 + 0.02 * j[1])
        disc_factor, irregular, phase = degen[name]
        disc = disc * disc_f * (1 + 0.08 * j[2]) * disc_factor
        if name == "S1":
            verts.append(_vertebra(name, h, depth, width, disc))
            continue
        height, conc, wedge = body_geometry({**shapes[name], "depth": depth})
        verts.append(
            _vertebra(
                name,
                height,
                depth,
                width,
                disc,
                wedge_deg=wedge,
                concavity_mm=conc,
                irregular_mm=irregular,
                irregular_phase=phase,
                round_mm=ROUND_MM,
                round_start=ROUND_START,
            )
        )
    return verts


def sample_patient_params(
    rng: np.random.Generator,
    fractures: Mapping[int, tuple[int, str]] | None = None,
    morphometry: str = "simple",
) -> PatientParams:
    """Draw one patient. ``fractures``: VerSe id -> (grade 1-3, shape); ``None`` draws 0-2
    fractures at random. ``morphometry``: ``"published"`` (sex, wedging, correlated heights,
    degenerative changes; :mod:`data.phantom_population`) or ``"simple"`` (the first phantom,
    bit-for-bit). Anatomy also varies in disc heights, depth/width and bone density."""
    if morphometry not in MORPHOMETRIES:
        raise ValueError(f"--morphometry must be one of {MORPHOMETRIES}, got {morphometry!r}")
    fractures = _check_fractures(rng, fractures)
    sex = sample_sex(rng) if morphometry == "published" else None
    verts = _simple_vertebrae(rng) if sex is None else _published_vertebrae(rng, sex)
    by_id = {v.verse_id: v for v in verts}
    fr = {}
    for vid, (grade, shape) in sorted(fractures.items()):
        target = float(rng.uniform(*TARGET_LOSS[grade]))
        fr[int(vid)] = calibrate_fracture(by_id[vid], grade, shape, target)
    return PatientParams(
        seed=int(rng.integers(2**31 - 1)),
        vertebrae=tuple(verts),
        fractures=fr,
        **(_simple_appearance(rng) if sex is None else _published_appearance(rng)),
        sex=sex,
    )


def _simple_appearance(rng: np.random.Generator) -> dict[str, float]:
    """Tissue parameters of the first phantom (drawn in its order: bit-for-bit)."""
    return {
        "cortical_mm": float(rng.uniform(0.9, 1.5)),
        "trabecular_hu": float(rng.uniform(150, 260)),
        "cortical_hu": float(rng.uniform(750, 950)),
        "skin_post_mm": float(rng.uniform(88, 115)),
        "skin_ant_mm": float(rng.uniform(110, 220)),
        "fat_mm": float(rng.uniform(8, 25)),
        "noise_hu": float(rng.uniform(12, 25)),
    }


def _published_appearance(rng: np.random.Generator) -> dict:
    """Tissue parameters of the published phantom, moved towards the real CT's measures
    (``scripts/phantom_appearance.py``, docs/ARCHITECTURE.md "Appearance")."""
    return {
        **_simple_appearance(rng),
        "cortical_mm": float(rng.uniform(*CORTICAL_MM)),
        "trabecular_hu": float(rng.uniform(*TRABECULAR_HU)),
        "cortical_hu": float(rng.uniform(*CORTICAL_HU)),
        "noise_hu": float(rng.uniform(*NOISE_HU)),
        "trabecular_sd_hu": TRABECULAR_SD_HU,
        "disc_hu": DISC_HU,
        "muscle_hu": float(rng.uniform(*MUSCLE_HU)),
        "marbling": float(rng.uniform(*MARBLING)),
        "noise_corr_mm": NOISE_CORR_MM,
    }
