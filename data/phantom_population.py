"""The published morphometry of the phantom (``--morphometry published``, the default): healthy
vertebral shape by level and sex, its normal variability, the fracture level distribution
and degenerative changes. ``--morphometry simple`` keeps the first phantom
(:mod:`data.phantom_patients`) bit-for-bit.

Every number the model follows is in :data:`PUBLISHED` (per level) or the constants below,
with its source; docs/ARCHITECTURE.md lists them. Heights are *wall* heights as radiographic
morphometry measures them (Ha at the anterior wall, Hc at the centre, Hp at the posterior
wall); :mod:`evaluation.morphometry` converts the thirds of ``util.heights`` to them.

The model, per patient:

1. sex F with probability ``P_FEMALE``; men have ``MALE_HEIGHT`` x the heights,
   ``MALE_DEPTH`` x the depth/width and the men's wedging of Masharawi et al.;
2. posterior wall height ``Hp_i = mean_i x exp(g + e_i)``: ``g`` one patient scale (a tall
   spine is tall throughout), ``e_i`` an AR(1) process along the spine (neighbours correlated
   by ``RHO_LEVEL``) whose step gives SD(Hp/Hp') = ``SD_HP_RATIO``;
3. wedging ``theta_i = mean_i + k + u_i`` (``k`` a patient kyphosis offset), so that
   SD(Ha/Hp) = ``SD_HA_HP``;
4. central concavity ``kappa_i`` (Hc/Hp below the mean of Ha/Hp and 1), log-normal, so that
   SD(Hc/Hp) = ``SD_HC_HP``;
5. degenerative changes with probability ``P_DEGENERATIVE`` per patient: narrowed discs and
   an irregular superior endplate at some levels (no fracture, a mildly deformed shape).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from data.phantom_anatomy import ANATOMY, SPINE_LEVELS

#: Per level (superior -> inferior): women's posterior wall height Hp (mm), women's and men's
#: sagittal wedging (deg, > 0 ventral). Wedging T9-L5: Masharawi et al., Eur Spine J 2010;
#: 19:768, table 1 (T4-T8 assumed equal to T9). Hp: L5 from the L5 CT series of Int J Spine
#: Surg (New Zealand adults, table 6: women 25.5 mm); T4-L4 assumed (the first phantom's
#: nominal heights, with a plateau at L3-L4).
PUBLISHED: Mapping[str, tuple[float, float, float]] = {
    "T4": (18.5, 2.8, 4.8),
    "T5": (19.0, 2.8, 4.8),
    "T6": (19.5, 2.8, 4.8),
    "T7": (20.0, 2.8, 4.8),
    "T8": (20.5, 2.8, 4.8),
    "T9": (21.0, 2.8, 4.8),
    "T10": (22.0, 2.6, 3.8),
    "T11": (23.0, 4.6, 5.4),
    "T12": (24.0, 3.5, 4.9),
    "L1": (25.0, 2.6, 4.1),
    "L2": (26.0, 0.7, 2.6),
    "L3": (26.5, -1.1, 1.3),
    "L4": (26.5, -3.1, -0.7),
    "L5": (25.5, -7.8, -4.6),
}
#: Normal SDs of the ratios: a grade-1 deformity sits at about mean - 3 SD, 15-20 % loss
#: (EVOS, O'Neill et al., J Bone Miner Res 1994; 9:1895), so about 5 % (assumed equal over
#: levels; the MRI series of Surg Radiol Anat 2011; 33:223 gives Ha/Hp 0.06-0.08, T10-L2).
SD_HA_HP, SD_HC_HP, SD_HP_RATIO = 0.05, 0.045, 0.05
#: Hc/Hp = (1 + Ha/Hp) / 2 - KAPPA_MEAN: central endplate concavity (assumed, ~1 mm a plate).
KAPPA_MEAN = 0.07
#: Neighbour correlation of the level residuals; patient SD of log height; share of the
#: wedging SD that is a patient offset (all assumed).
RHO_LEVEL, SD_PATIENT_SCALE, PATIENT_WEDGE_SHARE = 0.5, 0.05, 0.4
#: Sex: share of women (osteoporosis cohorts, assumed); men's height and depth factors (the
#: same L5 series: Hp 26.8 / 25.5 mm, superior length 37.1 / 33.3 mm).
P_FEMALE, MALE_HEIGHT, MALE_DEPTH = 0.7, 1.05, 1.1
#: Fracture level distribution over the fracturable levels T11-L4 (assumed: the
#: thoracolumbar peak at T12-L1 of the epidemiology, the first/last sample levels excluded as
#: in the simple phantom so that every fracture has two neighbours).
LEVEL_WEIGHTS: Mapping[str, float] = {
    "T11": 0.15,
    "T12": 0.25,
    "L1": 0.25,
    "L2": 0.15,
    "L3": 0.11,
    "L4": 0.09,
}
#: Fractures per patient (0, 1, 2, 3) and the chance that a further one is adjacent (assumed).
N_FRACTURE_P, P_ADJACENT = (0.2, 0.45, 0.25, 0.1), 0.5
#: Degenerative changes: share of patients, per-level chance, disc factor, irregularity (mm).
P_DEGENERATIVE, P_DEGENERATIVE_LEVEL = 0.4, 0.3
DISC_NARROWING, IRREGULAR_MM = (0.5, 0.85), (0.3, 1.0)
#: Upper bound of the anterior and posterior wall height (mm; the band is 40 mm at 256 px).
MAX_WALL_MM = 31.0


def published_ratios(level: str, sex: str = "F", depth_mm: float | None = None) -> dict:
    """The ratios the phantom claims at ``level``: mean and SD of Ha/Hp, Hc/Hp, the wedging
    (deg), and Hp/Hp' (``None`` for the top level), for ``sex`` at the nominal depth."""
    hp, wf, wm = PUBLISHED[level]
    wedge = wf if sex == "F" else wm
    depth = (
        ANATOMY[level][2] * (1.0 if sex == "F" else MALE_DEPTH) if depth_mm is None else depth_mm
    )
    hp = hp * (1.0 if sex == "F" else MALE_HEIGHT)
    ha_hp = 1 - depth * math.tan(math.radians(wedge)) / hp
    i = SPINE_LEVELS.index(level)
    above = PUBLISHED[SPINE_LEVELS[i - 1]][0] if i > 0 else None
    return {
        "ha_hp": (ha_hp, SD_HA_HP),
        "hc_hp": (0.5 * (1 + ha_hp) - KAPPA_MEAN, SD_HC_HP),
        "wedge_deg": (wedge, math.degrees(SD_HA_HP * hp / depth)),
        "hp_hp1": (None if above is None else PUBLISHED[level][0] / above, SD_HP_RATIO),
    }


def sample_sex(rng: np.random.Generator) -> str:
    return "F" if rng.random() < P_FEMALE else "M"


def sample_shapes(rng: np.random.Generator, sex: str, depth_scale: float) -> dict[str, dict]:
    """Per level of the spine above the sacrum: wall heights, wedging and concavity.

    Returns ``{level: {"hp", "wedge_deg", "kappa", "depth"}}`` (mm, deg, fraction, mm).
    """
    levels = [n for n in SPINE_LEVELS if n in PUBLISHED]
    g = rng.normal(0, SD_PATIENT_SCALE)
    sd_e = SD_HP_RATIO / math.sqrt(2 * (1 - RHO_LEVEL))
    e = np.empty(len(levels))
    e[0] = rng.normal(0, sd_e)
    for i in range(1, len(levels)):
        e[i] = RHO_LEVEL * e[i - 1] + rng.normal(0, sd_e * math.sqrt(1 - RHO_LEVEL**2))
    k = rng.normal(0, 1)
    out = {}
    for i, name in enumerate(levels):
        hp0, wf, wm = PUBLISHED[name]
        hp = hp0 * (MALE_HEIGHT if sex == "M" else 1.0) * math.exp(g + e[i])
        depth = ANATOMY[name][2] * depth_scale * (MALE_DEPTH if sex == "M" else 1.0)
        # SD of the wedging that gives SD(Ha/Hp) = SD_HA_HP at this depth and height.
        sd_w = math.degrees(SD_HA_HP * hp / depth)
        wedge = (wm if sex == "M" else wf) + sd_w * (
            math.sqrt(PATIENT_WEDGE_SHARE) * k
            + math.sqrt(1 - PATIENT_WEDGE_SHARE) * rng.normal(0, 1)
        )
        # Log-normal kappa with mean KAPPA_MEAN and the SD that completes SD(Hc/Hp).
        sd_k = math.sqrt(max(SD_HC_HP**2 - 0.25 * SD_HA_HP**2, 1e-6))
        s2 = math.log(1 + (sd_k / KAPPA_MEAN) ** 2)
        kappa = KAPPA_MEAN * math.exp(rng.normal(-0.5 * s2, math.sqrt(s2)))
        out[name] = {"hp": hp, "wedge_deg": wedge, "kappa": kappa, "depth": depth}
    return out


def body_geometry(shape: Mapping[str, float]) -> tuple[float, float, float]:
    """(height_mm, concavity_mm, wedge_deg) of :class:`VertebraParams` that give the wall
    heights of ``shape`` under the measurement of :mod:`evaluation.morphometry` (thirds of
    ``util.heights`` extrapolated to the walls): Hp = h + D/2 tan(w) - 1.11 c and
    Hc = h - 2 c, with c the concavity of each endplate. Walls capped at ``MAX_WALL_MM``."""
    hp, depth, wedge = shape["hp"], shape["depth"], shape["wedge_deg"]
    half = 0.5 * depth * math.tan(math.radians(wedge))
    top = max(hp, hp - 2 * half)  # the taller wall
    if top > MAX_WALL_MM:
        hp *= MAX_WALL_MM / top
    ha_hp = 1 - 2 * half / hp
    hc = hp * (0.5 * (1 + ha_hp) - shape["kappa"])
    # Solve h + half - 1.11 c = hp and h - 2 c = hc.
    c = max((hp - half - hc) / 0.89, 0.05)
    return hc + 2 * c, c, wedge


def plan_fracture_levels(rng: np.random.Generator, n_patients: int) -> list[list[int]]:
    """VerSe ids of the fractured levels of each patient: a count from ``N_FRACTURE_P``, the
    first level from ``LEVEL_WEIGHTS``, each further one adjacent to a fracture with chance
    ``P_ADJACENT`` (else from the weights again)."""
    names = list(LEVEL_WEIGHTS)
    w = np.array([LEVEL_WEIGHTS[n] for n in names])
    plan = []
    for _ in range(n_patients):
        n = int(rng.choice(len(N_FRACTURE_P), p=N_FRACTURE_P))
        chosen: list[int] = []
        while len(chosen) < n:
            free = [i for i in range(len(names)) if i not in chosen]
            near = [i for i in free if any(abs(i - c) == 1 for c in chosen)]
            if near and rng.random() < P_ADJACENT:
                chosen.append(int(rng.choice(near)))
            else:
                p = w[free] / w[free].sum()
                chosen.append(int(free[rng.choice(len(free), p=p)]))
        plan.append([ANATOMY[names[i]][0] for i in sorted(chosen)])
    return plan


def degenerative(rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """Per level: (disc factor, irregularity mm, phase) of a patient's degenerative changes
    (factor 1 and 0 mm where there are none)."""
    affected = rng.random() < P_DEGENERATIVE
    out = {}
    for name in SPINE_LEVELS:
        hit = affected and rng.random() < P_DEGENERATIVE_LEVEL
        out[name] = (
            float(rng.uniform(*DISC_NARROWING)) if hit else 1.0,
            float(rng.uniform(*IRREGULAR_MM)) if hit else 0.0,
            float(rng.uniform(0, 2 * math.pi)) if hit else 0.0,
        )
    return out
