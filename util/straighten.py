"""Spine straightening: a centreline through the vertebra centroids, resampled on planes
perpendicular to it.

All geometry is in world millimetres (NIfTI RAS+), so inputs of any orientation and spacing
work: voxel indices go through the input's affine and nothing else. The straightened volumes
are in (I, P, L) orientation (axis 0 inferior *along the centreline*, axis 1 posterior, axis
2 left; see ``util.nifti_io.ipl_affine``).

Algorithm (:class:`Centreline` and :func:`straighten_volume`):

1. Order the centroids cranio-caudally and parametrise them by cumulative chord length.
2. Interpolate them with a natural cubic spline per world coordinate.
3. Re-parametrise by true arc length ``s`` (dense polyline, 0.25 mm steps), so that one output
   row is exactly one ``spacing`` along the curve; beyond the end vertebrae the curve continues
   as a straight line along the end tangent (a cubic would run away).
4. Carry a rotation-minimising frame along the curve (double reflection, Wang et al. 2008,
   "Computation of rotation minimizing frames", ACM TOG 27(1)): the planes do not twist.
5. Roll that frame once, by the circular mean angle between its posterior axis and the
   patient's posterior (world ``-y``) projected onto each plane, so axis 1 points posterior.
6. For output voxel ``(i, j, k)`` of a volume centred on arc length ``s_c``:
   ``x = c(s) + (j - j0) * dP(s) + (k - k0) * dL(s)`` with ``s = s_c + (i - i0) * dI`` and
   ``L = T x P``; map ``x`` to input voxels with the inverse affine and sample them all in one
   ``scipy.ndimage.map_coordinates`` call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline, make_smoothing_spline

from util.geometry import CT_WINDOW_HU

#: Output volume shape (I, P, L) and spacing of the data root (ARCHITECTURE.md).
OUT_SHAPE = (256, 256, 64)
OUT_SPACING_MM = 1.0
#: Hounsfield value of everything outside the scan (air).
AIR_HU = -1024.0
#: World direction of the patient's posterior in RAS+ coordinates.
WORLD_POSTERIOR = np.array([0.0, -1.0, 0.0])
#: Default smoothing of the centreline (mm^3, see :class:`Centreline`). Chosen on case 0007 of
#: the original project: it reproduces the original's straightened bodies (voxel counts within
#: 2 %); the interpolating spline (0) bends at each centroid and tilts fractured vertebrae.
DEFAULT_SMOOTHING_MM3 = 3000.0
#: Step of the dense polyline used for arc length and frames, in mm.
_DENSE_STEP_MM = 0.25


def vertebra_order(vid: int) -> float:
    """Cranio-caudal sort key of a VerSe id: C1..T12 (1-19), T13 (28), L1..L6 (20-25), S1 (26)."""
    vid = int(vid)
    if vid == 28:
        return 19.5
    return float(vid)


def window_ct(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW_HU) -> np.ndarray:
    """Map HU linearly from ``window`` (lo, hi) to uint8 0..255 (clipped, rounded)."""
    lo, hi = window
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Centroids
# --------------------------------------------------------------------------------------------


def voxel_to_world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Voxel indices ``(N, 3)`` -> world mm ``(N, 3)`` through a 4x4 affine."""
    ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def centroids_from_label(
    seg: np.ndarray, affine: np.ndarray, min_volume_mm3: float = 0.0
) -> dict[int, np.ndarray]:
    """World-mm centroid of every non-zero label of ``seg`` (integer ids, 3D).

    Labels smaller than ``min_volume_mm3`` (e.g. a fragment cut by the scan border, whose
    centroid would pull the centreline sideways) are left out.
    """
    seg = np.asarray(seg)
    ids, counts = np.unique(seg[seg > 0], return_counts=True)
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    keep = [int(i) for i, n in zip(ids, counts) if n * voxel_mm3 >= min_volume_mm3]
    if not keep:
        return {}
    com = ndimage.center_of_mass(np.ones(seg.shape, dtype=np.uint8), seg, keep)
    world = voxel_to_world(affine, np.asarray(com))
    return {vid: world[n] for n, vid in enumerate(keep)}


def load_centroid_json(
    path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray
) -> dict[int, np.ndarray]:
    """Read VerSe centroids (``[{"label": 20, "X": .., "Y": .., "Z": ..}, ...]``) as world mm.

    ``X, Y, Z`` are voxel indices of the image (``shape``, ``affine``). When the first entry is
    ``{"direction": ["P", "I", "R"]}`` they index that image *reoriented* (flips and axis
    permutation only, same spacing) to those axis codes, as in the VerSe 2020 release;
    without it they index the image as stored. Entries with NaN coordinates are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"centroid file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"centroid file {path} is not valid JSON: {exc}") from exc
    if isinstance(entries, dict) and "centroids" in entries:
        entries = entries["centroids"]
    if not isinstance(entries, list):
        raise ValueError(f"centroid file {path}: expected a JSON list of entries")
    aff = np.asarray(affine, dtype=float)
    out: dict[int, np.ndarray] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"centroid file {path}: entry {n} is not an object")
        if "direction" in entry:
            codes = tuple(entry["direction"])
            if n != 0 or len(codes) != 3:
                raise ValueError(f"centroid file {path}: bad 'direction' entry {entry}")
            try:
                ornt_ctd = nib.orientations.axcodes2ornt(codes)
            except ValueError as exc:
                raise ValueError(f"centroid file {path}: bad direction {codes}") from exc
            # Affine of the image reoriented to the centroid axis codes (nibabel's own rule).
            ornt_img = nib.orientations.io_orientation(affine)
            trans = nib.orientations.ornt_transform(ornt_img, ornt_ctd)
            aff = affine @ nib.orientations.inv_ornt_aff(trans, shape)
            continue
        try:
            vid = int(entry["label"])
            xyz = np.array([float(entry["X"]), float(entry["Y"]), float(entry["Z"])])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"centroid file {path}: entry {n} needs 'label', 'X', 'Y', 'Z': {entry}"
            ) from exc
        if not np.isfinite(xyz).all():
            continue
        out[vid] = voxel_to_world(aff, xyz)[0]
    return out


# --------------------------------------------------------------------------------------------
# Centreline
# --------------------------------------------------------------------------------------------


class _SmoothingSpline:
    """Cubic smoothing spline per world coordinate, callable like ``CubicSpline``."""

    def __init__(self, t: np.ndarray, pts: np.ndarray, lam: float) -> None:
        self._parts = [make_smoothing_spline(t, pts[:, d], lam=lam) for d in range(3)]

    def __call__(self, t: np.ndarray, nu: int = 0) -> np.ndarray:
        return np.stack([(p if nu == 0 else p.derivative(nu))(t) for p in self._parts], -1)


class Centreline:
    """Smooth spine centreline near ordered world points, with a twist-free frame.

    ``points`` ``(N, 3)`` world mm, ordered superior -> inferior, ``N >= 2``. With ``N >= 5``
    and ``smoothing_mm3 > 0`` the curve is a cubic smoothing spline (penalty
    ``smoothing_mm3 * integral |c''|^2``), which tolerates centroids pulled sideways by posterior
    elements or fractures; otherwise it interpolates the points (natural cubic spline).
    Arc length ``s`` (mm) is 0 at the start of the fitted curve; ``knots_s[n]`` is the arc
    length of the curve point closest to point ``n``. ``s`` may be negative or beyond
    ``length_mm`` (straight extension along the end tangents).
    """

    def __init__(
        self,
        points: np.ndarray,
        smoothing_mm3: float = DEFAULT_SMOOTHING_MM3,
        posterior: np.ndarray = WORLD_POSTERIOR,
    ) -> None:
        pts = np.asarray(points, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2:
            raise ValueError(
                f"straightening needs at least 2 centroids, got {len(pts) if pts.ndim else 0}"
            )
        if smoothing_mm3 < 0:
            raise ValueError(f"smoothing_mm3 must be >= 0, got {smoothing_mm3}")
        chord = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        if np.any(chord < 1e-3):
            raise ValueError("two consecutive centroids coincide; cannot fit a centreline")
        # 1.-2. chord-length parameter t and a (smoothing) cubic spline c(t)
        t_knots = np.concatenate([[0.0], np.cumsum(chord)])
        if len(pts) >= 5 and smoothing_mm3 > 0:
            self._spline = _SmoothingSpline(t_knots, pts, smoothing_mm3)
        else:
            self._spline = CubicSpline(t_knots, pts, axis=0, bc_type="natural")
        # 3. dense polyline -> arc length s(t)
        n_dense = max(2, int(np.ceil(t_knots[-1] / _DENSE_STEP_MM)) + 1)
        t = np.linspace(0.0, t_knots[-1], n_dense)
        speed = np.linalg.norm(self._spline(t, 1), axis=1)
        s = np.concatenate([[0.0], np.cumsum(0.5 * (speed[1:] + speed[:-1]) * np.diff(t))])
        self._t_dense, self._s_dense = t, s
        self.length_mm = float(s[-1])
        pos = self._spline(t)
        tan = self._spline(t, 1)
        tan /= np.linalg.norm(tan, axis=1, keepdims=True)
        self._pos_dense, self._tan_dense = pos, tan
        self._end_pos = pos[[0, -1]]
        self._end_tan = tan[[0, -1]]
        # 4.-5. rotation-minimising frame, rolled to the patient's posterior
        self._p_dense = _rolled_rmf(pos, tan, np.asarray(posterior, dtype=float))
        self.knots_s = np.array([self.closest_s(p) for p in pts])

    def closest_s(self, point: np.ndarray) -> float:
        """Arc length of the curve point closest to world ``point`` (3,), extension included."""
        point = np.asarray(point, dtype=float)
        n = int(np.argmin(np.sum((self._pos_dense - point) ** 2, axis=1)))
        # Refine on the local tangent; at the ends this walks onto the straight extension.
        ds = float(np.dot(point - self._pos_dense[n], self._tan_dense[n]))
        if 0 < n < len(self._s_dense) - 1:
            ds = float(np.clip(ds, -_DENSE_STEP_MM, _DENSE_STEP_MM))
        return float(self._s_dense[n] + ds)

    def position(self, s: np.ndarray) -> np.ndarray:
        """World points ``(M, 3)`` at arc lengths ``s`` ``(M,)``."""
        s = np.atleast_1d(np.asarray(s, dtype=float))
        t = np.interp(s, self._s_dense, self._t_dense)
        out = self._spline(t)
        before, after = s < 0, s > self.length_mm
        out[before] = self._end_pos[0] + s[before, None] * self._end_tan[0]
        out[after] = self._end_pos[1] + (s[after, None] - self.length_mm) * self._end_tan[1]
        return out

    def frame(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit axes ``(T, P, L)``, each ``(M, 3)``, at arc lengths ``s``: T inferior along the
        curve, P posterior in the plane, ``L = T x P`` (left for a patient in normal position)."""
        s = np.atleast_1d(np.asarray(s, dtype=float))
        t = np.interp(s, self._s_dense, self._t_dense)
        tan = self._spline(t, 1)
        tan /= np.linalg.norm(tan, axis=1, keepdims=True)
        tan[s < 0] = self._end_tan[0]
        tan[s > self.length_mm] = self._end_tan[1]
        # Linear interpolation of the dense frame, then re-orthonormalised against T.
        post = np.stack([np.interp(s, self._s_dense, self._p_dense[:, d]) for d in range(3)], 1)
        post -= np.sum(post * tan, axis=1, keepdims=True) * tan
        post /= np.linalg.norm(post, axis=1, keepdims=True)
        return tan, post, np.cross(tan, post)


def _rolled_rmf(pos: np.ndarray, tan: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """Posterior axis ``(M, 3)`` of a rotation-minimising frame along a dense polyline.

    4. Double reflection: reflect the previous axis across the bisector plane of the chord,
    then across the plane that maps the reflected tangent onto the next tangent.
    5. Roll the whole frame by the mean angle to the projected ``posterior`` (a constant roll
    keeps the frame rotation-minimising).
    """
    p0 = posterior - np.dot(posterior, tan[0]) * tan[0]
    if np.linalg.norm(p0) < 1e-3:
        # The spine runs along the A-P axis at its start: take any normal, step 5 fixes it.
        p0 = np.cross(tan[0], [1.0, 0.0, 0.0] if abs(tan[0, 0]) < 0.9 else [0.0, 0.0, 1.0])
    frames = np.empty_like(tan)
    frames[0] = p0 / np.linalg.norm(p0)
    for n in range(len(pos) - 1):
        v1 = pos[n + 1] - pos[n]
        c1 = np.dot(v1, v1)
        r = frames[n] - (2.0 / c1) * np.dot(v1, frames[n]) * v1
        t_l = tan[n] - (2.0 / c1) * np.dot(v1, tan[n]) * v1
        v2 = tan[n + 1] - t_l
        c2 = np.dot(v2, v2)
        frames[n + 1] = r - (2.0 / c2) * np.dot(v2, r) * v2 if c2 > 1e-20 else r
    target = posterior[None, :] - (tan @ posterior)[:, None] * tan
    weight = np.linalg.norm(target, axis=1)
    cos = np.sum(frames * target, axis=1)
    sin = np.sum(np.cross(frames, target) * tan, axis=1)
    if weight.sum() < 1e-6:
        raise ValueError("the centreline runs along the A-P axis; cannot orient the planes")
    angle = np.arctan2(sin.sum(), cos.sum())  # circular mean, weighted by projection length
    frames = np.cos(angle) * frames + np.sin(angle) * np.cross(tan, frames)
    return frames / np.linalg.norm(frames, axis=1, keepdims=True)


def ordered_centreline(
    centroids: dict[int, np.ndarray], smoothing_mm3: float = DEFAULT_SMOOTHING_MM3
) -> Centreline:
    """Centreline through VerSe-id centroids (world mm), taken in cranio-caudal order."""
    if len(centroids) < 2:
        raise ValueError(
            f"straightening needs at least 2 vertebra centroids, got {len(centroids)}"
            f" ({sorted(centroids)})"
        )
    ids = sorted(centroids, key=vertebra_order)
    return Centreline(np.stack([centroids[v] for v in ids]), smoothing_mm3)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def rigid_reparametrisation(knots_s: np.ndarray, rigid_fraction: float, s: np.ndarray):
    """Monotone map ``sigma(s)`` that stays at each knot for ``rigid_fraction`` of the gap to
    each neighbour and moves linearly in between (the discs); identity outside the knots."""
    k = np.sort(np.asarray(knots_s, dtype=float))
    xs, ys = [k[0]], [k[0]]
    for a, b in zip(k[:-1], k[1:]):
        d = rigid_fraction * (b - a)
        xs += [a + d, b - d, b]
        ys += [a, b, b]
    s = np.asarray(s, dtype=float)
    return np.where((s < k[0]) | (s > k[-1]), s, np.interp(s, xs, ys))


def sample_grid(
    line: Centreline,
    centre_world: np.ndarray,
    out_shape: tuple[int, int, int] = OUT_SHAPE,
    spacing_mm: float = OUT_SPACING_MM,
    rigid_fraction: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row geometry of a straightened volume centred on world point ``centre_world``.

    Rows follow the curve from the point closest to ``centre_world``; the in-plane offset of
    ``centre_world`` from the curve is kept for every row, so ``centre_world`` lands exactly on
    voxel ``(I//2, P//2, L//2)``. Returns ``(origin, step_p, step_l)``, each ``(I, 3)`` world
    mm: voxel ``(i, j, k)`` sits at ``origin[i] + j * step_p[i] + k * step_l[i]``.

    ``rigid_fraction`` in [0, 0.5): perpendicular planes bend every vertebra with the curve
    (a wall ``a`` mm in front of the curve is scaled by ``1 / (1 - a * curvature)``); with
    ``r > 0`` the planes keep the orientation of the nearest centroid over ``r`` of each gap
    and turn only in between (the discs), so each vertebra is moved rigidly. The rows then
    follow the integrated tangent ``x(s) = x(s_c) + int T(sigma(u)) du`` (sub-mm from the curve).
    """
    if not 0.0 <= rigid_fraction < 0.5:
        raise ValueError(f"rigid_fraction must lie in [0, 0.5), got {rigid_fraction}")
    n_i, n_p, n_l = out_shape
    centre_world = np.asarray(centre_world, dtype=float)
    s_c = line.closest_s(centre_world)
    _, p_c, l_c = line.frame(np.array([s_c]))
    offset = centre_world - line.position(np.array([s_c]))[0]
    off_p, off_l = float(offset @ p_c[0]), float(offset @ l_c[0])
    s = s_c + (np.arange(n_i) - n_i // 2) * spacing_mm
    if rigid_fraction > 0:
        sigma = rigid_reparametrisation(line.knots_s, rigid_fraction, s)
        # integrate the re-timed tangent on a fine grid, anchored at the centre row
        u = np.linspace(s[0], s[-1], 4 * (n_i - 1) + 1)
        tan_u = line.frame(rigid_reparametrisation(line.knots_s, rigid_fraction, u))[0]
        steps = 0.5 * (tan_u[1:] + tan_u[:-1]) * np.diff(u)[:, None]
        path = np.concatenate([np.zeros((1, 3)), np.cumsum(steps, axis=0)])
        path = path[::4] - path[4 * (n_i // 2)]
        centre_line = line.position(np.array([s_c]))[0] + path
    else:
        sigma = s
        centre_line = line.position(s)
    _, post, left = line.frame(sigma)
    step_p, step_l = post * spacing_mm, left * spacing_mm
    centre = centre_line + off_p * post + off_l * left
    origin = centre - (n_p // 2) * step_p - (n_l // 2) * step_l
    return origin, step_p, step_l


def straighten_volume(
    volume: np.ndarray,
    affine: np.ndarray,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    out_shape: tuple[int, int, int] = OUT_SHAPE,
    *,
    order: int,
    cval: float,
) -> tuple[np.ndarray, float]:
    """Resample ``volume`` (3D, world geometry from ``affine``) on a :func:`sample_grid`.

    ``order`` 1 (trilinear) for CT, 0 (nearest) for labels; ``cval`` fills points outside the
    input. Returns ``(out, inside_fraction)``: ``out`` has ``out_shape`` and ``volume``'s dtype
    (float32 for order > 0), ``inside_fraction`` is the share of output voxels that fell
    inside the input volume.
    """
    origin, step_p, step_l = grid
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    # The map is affine per row, so only 3 vectors per row go through the inverse affine.
    o_v = origin @ inv[:3, :3].T + inv[:3, 3]
    p_v = step_p @ inv[:3, :3].T
    l_v = step_l @ inv[:3, :3].T
    j = np.arange(out_shape[1], dtype=np.float32)
    k = np.arange(out_shape[2], dtype=np.float32)
    coords = (
        o_v.T.astype(np.float32)[:, :, None, None]
        + p_v.T.astype(np.float32)[:, :, None, None] * j[None, None, :, None]
        + l_v.T.astype(np.float32)[:, :, None, None] * k[None, None, None, :]
    )
    lim = np.asarray(volume.shape, dtype=np.float32)[:, None, None, None]
    inside = float(np.mean(np.all((coords >= -0.5) & (coords <= lim - 0.5), axis=0)))
    src = volume if order == 0 else np.asarray(volume, dtype=np.float32)
    out = ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=cval)
    return out, inside


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


@dataclass
class StraightenedVertebra:
    """One output volume: ``label`` uint8 VerSe ids and ``ct`` uint8 window (or ``None``),
    both ``out_shape`` in (I, P, L), centred on vertebra ``vid``."""

    vid: int
    label: np.ndarray
    ct: np.ndarray | None
    inside_fraction: float
    centroid_world_mm: np.ndarray


def is_vertebra(vid: int) -> bool:
    """True for VerSe ids that get their own volume: C1..L6 (1-25) and T13 (28)."""
    return 1 <= int(vid) <= 25 or int(vid) == 28


def straighten_case(
    seg: np.ndarray,
    seg_affine: np.ndarray,
    *,
    ct: np.ndarray | None = None,
    ct_affine: np.ndarray | None = None,
    centroids: dict[int, np.ndarray] | None = None,
    vertebrae: list[int] | None = None,
    min_volume_mm3: float = 1000.0,
    out_shape: tuple[int, int, int] = OUT_SHAPE,
    spacing_mm: float = OUT_SPACING_MM,
    window: tuple[float, float] = CT_WINDOW_HU,
    smoothing_mm3: float = DEFAULT_SMOOTHING_MM3,
    rigid_fraction: float = 0.0,
) -> Iterator[StraightenedVertebra]:
    """Straighten one patient and yield a volume per vertebra (cranio-caudal order).

    ``seg``: 3D integer VerSe ids (convert other maps first, e.g.
    ``util.labels.totalseg_to_verse``); ``ct``: 3D HU, its own ``ct_affine`` (defaults to
    ``seg_affine``). ``centroids``: VerSe id -> world mm (default: centres of mass of the
    labels of at least ``min_volume_mm3``). ``rigid_fraction``: see :func:`sample_grid`
    (0 = perpendicular planes, as the original project). Every vertebra (1-25, 28) with a
    centroid and a label voxel gets a volume, or only those in ``vertebrae``. CT outside the
    scan is ``AIR_HU`` before windowing.
    """
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"the segmentation must be 3D, got shape {seg.shape}")
    if seg.size == 0 or seg.max() <= 0:
        raise ValueError("the segmentation holds no vertebra label")
    if seg.min() < 0 or seg.max() > 255:
        raise ValueError(f"label ids must lie in 0..255, got {seg.min()}..{seg.max()}")
    if ct is not None and np.asarray(ct).ndim != 3:
        raise ValueError(f"the CT must be 3D, got shape {np.asarray(ct).shape}")
    if centroids is None:
        centroids = centroids_from_label(seg, seg_affine, min_volume_mm3)
    centroids = {int(v): np.asarray(c, dtype=float) for v, c in centroids.items()}
    known = {v: c for v, c in centroids.items() if is_vertebra(v) or v == 26}
    line = ordered_centreline(known, smoothing_mm3)
    present = set(np.unique(seg).tolist())
    targets = [v for v in sorted(known, key=vertebra_order) if is_vertebra(v) and v in present]
    if vertebrae is not None:
        missing = sorted(set(vertebrae) - set(targets))
        if missing:
            raise ValueError(
                f"requested vertebrae {missing} have no label voxels or no centroid "
                f"(available: {targets})"
            )
        targets = [v for v in targets if v in set(vertebrae)]
    label_src = seg.astype(np.uint8)
    for vid in targets:
        grid = sample_grid(line, known[vid], out_shape, spacing_mm, rigid_fraction)
        label, inside = straighten_volume(label_src, seg_affine, grid, out_shape, order=0, cval=0)
        ct_out = None
        if ct is not None:
            hu, inside = straighten_volume(
                ct,
                seg_affine if ct_affine is None else ct_affine,
                grid,
                out_shape,
                order=1,
                cval=AIR_HU,
            )
            ct_out = window_ct(hu, window)
        yield StraightenedVertebra(vid, label, ct_out, inside, known[vid])
