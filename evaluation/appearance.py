"""CT appearance of the phantom beside a real CT: tissue HU, noise texture and body shape.

Both volumes are measured the same way, in (I, P, L) voxel order at their own spacing (the
phantom is rendered at the real scan's 3 mm), on the lumbar levels L1-L5:

1. **Regions** (:func:`tissue_regions`), from the vertebral-body labels alone:
   cancellous bone = each body eroded by one voxel (6-connected); cortex = the body's
   one-voxel boundary shell (partial volume included, as a 3 mm scan sees it); disc = the
   unlabelled voxels between two consecutive bodies along the I axis, over the eroded
   intersection of their axial footprints; paraspinal muscle = unlabelled voxels 22-52 mm
   behind the body's posterior wall and 12-42 mm left or right of its centre, over its S-I
   extent.
2. **HU distributions** (:func:`hu_stats`): mean, SD, 5/50/95th percentiles; distance =
   1-Wasserstein distance between the phantom's and the real values (HU) and the difference
   of means in units of the real SD.
3. **Noise texture** (:func:`nps_2d`): axial ``NPS_PATCH`` x ``NPS_PATCH`` patches inside the
   muscle region, each detrended by a least-squares plane, ``NPS(f) = |FFT|^2 dx dy / N``,
   radially averaged; reported as its integral (HU^2, the detrended variance), its peak
   frequency (1/mm) and the relative L2 distance of the phantom's curve to the real one.
4. **Body shape** (:func:`body_shape`): on the central sagittal slices of each body, the 2-D
   principal axes; AP depth / height along them and the fill ratio area / (depth x height)
   (1 for a box; rounded corners and concave endplates lower it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage
from scipy.stats import wasserstein_distance

from data.phantom_anatomy import ANATOMY
from data.phantom_patients import sample_patient_params
from data.phantom_render import render_patient
from util.heights import to_ipl
from util.labels import id_to_name_map

#: Levels compared (both the example CT and the phantom hold them whole).
LEVELS = ("L1", "L2", "L3", "L4", "L5")
TISSUES = ("cancellous", "cortex", "disc", "muscle")
SHAPE_KEYS = ("depth_height", "fill")
#: Side of the square NPS patches (voxels).
NPS_PATCH = 8
#: Muscle box behind each body: posterior offset and lateral offset ranges (mm).
_MUSCLE_POST_MM, _MUSCLE_LAT_MM = (22.0, 52.0), (12.0, 42.0)


def tissue_regions(
    body: np.ndarray, labels: np.ndarray, spacing: Sequence[float], ids: Sequence[int]
) -> dict[str, np.ndarray]:
    """Boolean masks (I, P, L) of the four tissues over the bodies ``ids`` (superior ->
    inferior). ``body``: body label ids; ``labels``: any vertebra label (body or posterior)."""
    out = {t: np.zeros(body.shape, bool) for t in TISSUES}
    free = ~ndimage.binary_dilation(labels > 0)
    sp = np.asarray(spacing, float)
    zi = np.arange(body.shape[0])[:, None, None]
    yi = np.arange(body.shape[1]) * sp[1]
    xi = np.arange(body.shape[2]) * sp[2]
    for vid in ids:
        b = body == vid
        if not b.any():
            raise ValueError(f"body id {vid} is absent from the body labels")
        core = ndimage.binary_erosion(b)
        out["cancellous"] |= core
        out["cortex"] |= b & ~core
        zz, yy, xx = np.nonzero(b)
        y_post = np.percentile(yy, 95) * sp[1]
        xc = xx.mean() * sp[2]
        in_y = (yi >= y_post + _MUSCLE_POST_MM[0]) & (yi <= y_post + _MUSCLE_POST_MM[1])
        lat = np.abs(xi - xc)
        in_x = (lat >= _MUSCLE_LAT_MM[0]) & (lat <= _MUSCLE_LAT_MM[1])
        box = in_y[None, :, None] & in_x[None, None, :] & (zi >= zz.min()) & (zi <= zz.max())
        out["muscle"] |= box & free
    for up, dn in zip(ids[:-1], ids[1:]):
        bu, bd = body == up, body == dn
        foot = ndimage.binary_erosion(bu.any(axis=0) & bd.any(axis=0))
        last_up = np.where(bu.any(axis=0), bu.shape[0] - 1 - np.argmax(bu[::-1], axis=0), -1)
        first_dn = np.where(bd.any(axis=0), np.argmax(bd, axis=0), -1)
        gap = (zi > last_up) & (zi < first_dn) & foot
        out["disc"] |= gap & (labels == 0)
    return out


def hu_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, SD and 5/50/95th percentiles (HU) of ``values``."""
    v = np.asarray(values, np.float64).ravel()
    if v.size < 10:
        raise ValueError(f"a tissue region holds only {v.size} voxels")
    p5, p50, p95 = np.percentile(v, [5, 50, 95])
    return {"mean": v.mean(), "sd": v.std(), "p5": p5, "p50": p50, "p95": p95, "n": v.size}


def nps_2d(
    hu: np.ndarray, mask: np.ndarray, spacing: Sequence[float], patch: int = NPS_PATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged axial noise power spectrum of the patches inside ``mask``.

    Returns (frequencies 1/mm, NPS HU^2 mm^2), bins of width 1 / (patch x dx)."""
    dy, dx = float(spacing[1]), float(spacing[2])
    yy, xx = np.mgrid[:patch, :patch]
    design = np.stack([np.ones(patch * patch), yy.ravel(), xx.ravel()], axis=1)
    spectra, step = [], max(1, patch // 2)
    for k in range(hu.shape[0]):
        if mask[k].sum() < patch * patch:
            continue
        fits = sliding_window_view(mask[k], (patch, patch)).all(axis=(-1, -2))
        for j0, i0 in zip(*np.nonzero(fits[::step, ::step])):
            j0, i0 = j0 * step, i0 * step
            p = hu[k, j0 : j0 + patch, i0 : i0 + patch].astype(np.float64)
            coef = np.linalg.lstsq(design, p.ravel(), rcond=None)[0]
            res = p - (design @ coef).reshape(patch, patch)
            spectra.append(np.abs(np.fft.fft2(res)) ** 2 * dy * dx / (patch * patch))
    if not spectra:
        raise ValueError(f"no {patch} x {patch} patch fits inside the homogeneous region")
    nps = np.mean(spectra, axis=0)
    fy, fx = np.meshgrid(np.fft.fftfreq(patch, dy), np.fft.fftfreq(patch, dx), indexing="ij")
    fr = np.hypot(fy, fx)
    df = 1.0 / (patch * max(dy, dx))
    bins = np.rint(fr / df).astype(int)
    n = int(patch // 2) + 1
    curve = np.array([nps[bins == b].mean() for b in range(1, n)])
    return np.arange(1, n) * df, curve


def body_shape(body: np.ndarray, spacing: Sequence[float], vid: int) -> dict[str, float]:
    """AP depth / height and fill ratio of body ``vid`` on its central sagittal slices (see
    the module docstring)."""
    b = body == vid
    lr = np.flatnonzero(b.any(axis=(0, 1)))
    c, q = 0.5 * (lr[0] + lr[-1]), max(1.0, 0.125 * (lr[-1] - lr[0]))
    ratios, fills = [], []
    for k in lr[np.abs(lr - c) <= q]:
        pts = np.argwhere(b[:, :, k]) * np.asarray(spacing[:2], float)
        cov = np.cov((pts - pts.mean(0)).T)
        _, vec = np.linalg.eigh(cov)  # ascending: first = least spread (height axis)
        proj = (pts - pts.mean(0)) @ vec
        ext = proj.max(0) - proj.min(0) + np.asarray(spacing[:2], float).mean()
        ratios.append(ext[1] / ext[0])
        fills.append(len(pts) * spacing[0] * spacing[1] / (ext[0] * ext[1]))
    return {"depth_height": float(np.mean(ratios)), "fill": float(np.mean(fills))}


def measure(
    hu: np.ndarray,
    body: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    ids: Mapping[str, int],
) -> dict:
    """All appearance measures of one volume (I, P, L): ``hu`` (HU), ``body`` / ``labels``
    (ids), ``ids``: level name -> id for :data:`LEVELS`."""
    order = [ids[n] for n in LEVELS]
    regions = tissue_regions(body, labels, spacing, order)
    out: dict = {"values": {t: hu[regions[t]] for t in TISSUES}}
    out["hu"] = {t: hu_stats(v) for t, v in out["values"].items()}
    out["nps"] = nps_2d(hu, regions["muscle"], spacing)
    out["shape"] = {n: body_shape(body, spacing, ids[n]) for n in LEVELS}
    return out


def real_appearance(folder: str | Path) -> dict:
    """:func:`measure` of the TotalSegmentator example (``ct``, ``vertebrae_labels``,
    ``vertebrae_body`` NIfTI files in ``folder``)."""
    d = Path(folder)
    vols = {}
    for name in ("ct", "vertebrae_labels", "vertebrae_body"):
        f = d / f"{name}.nii.gz"
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found (the TotalSegmentator example folder)")
        img = nib.load(f)
        vols[name], spacing = to_ipl(np.asanyarray(img.dataobj), img.affine)
    labels = vols["vertebrae_labels"].astype(np.uint8)
    body = np.where(vols["vertebrae_body"] == 1, labels, 0)
    ids = {n: i for i, n in id_to_name_map("totalseg").items() if n in LEVELS}
    return measure(vols["ct"].astype(np.float32), body, labels, spacing, ids)


def phantom_appearance(
    seeds: Sequence[int] = (0,), spacing_mm: float = 3.0, morphometry: str = "published"
) -> dict:
    """:func:`measure` of healthy phantom patients (one per seed, pooled: values
    concatenated, NPS and shapes averaged) rendered at ``spacing_mm`` in HU (before the
    window), with a field wide enough for the paraspinal muscles."""
    ids = {n: ANATOMY[n][0] for n in LEVELS}
    parts = []
    for seed in seeds:
        p = sample_patient_params(np.random.default_rng(seed), {}, morphometry)
        r = render_patient(p, spacing_mm, fractures=False, fov_lr_mm=120.0, z_margin_mm=40.0)
        parts.append(measure(r.ct_hu, r.body_labels, r.labels, (spacing_mm,) * 3, ids))
    values = {t: np.concatenate([m["values"][t] for m in parts]) for t in TISSUES}
    return {
        "values": values,
        "hu": {t: hu_stats(v) for t, v in values.items()},
        "nps": (parts[0]["nps"][0], np.mean([m["nps"][1] for m in parts], axis=0)),
        "shape": {
            n: {k: float(np.mean([m["shape"][n][k] for m in parts])) for k in SHAPE_KEYS}
            for n in LEVELS
        },
    }


def nps_summary(nps: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Integral (HU^2: sum over the 2-D frequency plane, approximated by rings) and peak
    frequency (1/mm) of a radial NPS."""
    f, c = nps
    return {"integral": float((c * 2 * np.pi * f * f[0]).sum()), "peak": float(f[np.argmax(c)])}


def compare(phantom: Mapping, real: Mapping) -> list[tuple[str, str, str, float, str]]:
    """Rows ``(quantity, phantom, real, distance, distance name)`` of the appearance table."""
    rows = []
    for t in TISSUES:
        a, b = phantom["hu"][t], real["hu"][t]
        fmt = "{mean:.0f} ({sd:.0f}) [{p5:.0f}, {p50:.0f}, {p95:.0f}]"
        w1 = wasserstein_distance(phantom["values"][t], real["values"][t])
        rows.append((f"{t} HU", fmt.format(**a), fmt.format(**b), w1, "W1 (HU)"))
        rows.append(
            (
                f"{t} mean",
                f"{a['mean']:.0f}",
                f"{b['mean']:.0f}",
                mean_sd_units(a, b),
                "|d mean| / SD",
            )
        )
    pn, rn = nps_summary(phantom["nps"]), nps_summary(real["nps"])
    pc, rc = phantom["nps"][1], real["nps"][1]
    curve = " ".join(f"{v:.0f}" for v in pc), " ".join(f"{v:.0f}" for v in rc)
    rows.append(("muscle NPS (HU^2 mm^2)", *curve, nps_distance(pc, rc), "rel. L2"))
    rows.append(
        (
            "NPS integral (HU^2)",
            f"{pn['integral']:.0f}",
            f"{rn['integral']:.0f}",
            abs(pn["integral"] / rn["integral"] - 1),
            "rel. diff",
        )
    )
    rows.append(
        (
            "NPS peak (1/mm)",
            f"{pn['peak']:.3f}",
            f"{rn['peak']:.3f}",
            abs(pn["peak"] - rn["peak"]),
            "abs. diff",
        )
    )
    for k in SHAPE_KEYS:
        for n in LEVELS:
            a, b = phantom["shape"][n][k], real["shape"][n][k]
            rows.append((f"{n} {k}", f"{a:.2f}", f"{b:.2f}", abs(a - b), "abs. diff"))
    return rows


def mean_sd_units(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """|mean_a - mean_b| in units of ``b``'s SD."""
    return abs(a["mean"] - b["mean"]) / b["sd"]


def nps_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 distance ``||a - b|| / ||b||`` of two radial NPS curves."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def table_rows(rows: Sequence[tuple[str, str, str, float, str]]) -> list[str]:
    """Markdown lines of :func:`compare`'s rows."""
    out = ["| quantity | phantom | real CT | distance | of |", "|---|---|---|---|---|"]
    out += [f"| {q} | {a} | {b} | {d:.3g} | {n} |" for q, a, b, d, n in rows]
    return out
