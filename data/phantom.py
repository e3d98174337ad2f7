"""The phantom data set: plan fractures over patients, render each patient's spine once
(``data/phantom_render.py``), crop one volume per vertebra and write the data root of
docs/ARCHITECTURE.md, with ``healthy_CT/``, ``healthy_label/`` and ``heights.json``.

Deterministic for a seed, whatever the number of worker processes: every patient gets a child
seed of the master seed. ``scripts/make_phantom.py`` is the command line.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from data.phantom_patients import (
    MORPHOMETRIES,
    SHAPE_PROPORTIONS,
    plan_fractures,
    sample_patient_params,
)
from data.phantom_render import crop_vertebra, render_patient, window_to_uint8
from util.geometry import (
    CT_WINDOW_HU,
    HEIGHTS_FILE,
    PHASES,
    REFERENCE_SIZE,
    SPLIT_FILE,
    VOLUME_FOLDERS,
    make_key,
    split_key,
    volume_path,
)
from util.io import write_json_atomic
from util.nifti_io import ipl_affine, save_nifti

# --------------------------------------------------------------------------- data set
_OUT_FILES = (SPLIT_FILE, HEIGHTS_FILE)


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    # Fortran order is NIfTI's on-disk order: nibabel then writes without a slow transpose.
    save_nifti(path, np.asfortranarray(data), affine)


def _write_patient(
    job: tuple[int, str, np.random.SeedSequence, dict, int, str, str],
) -> tuple[int, dict]:
    """Worker: draw one patient, render its spine once, crop and save every sample vertebra,
    and render the healthy window of each fractured one. Returns heights.json records."""
    # One BLAS thread per worker: the processes already fill the cores (and OpenBLAS threads
    # spinning against each other cost more than they gain on these small products).
    with threadpool_limits(1):
        return _write_patient_body(job)


def _write_patient_body(
    job: tuple[int, str, np.random.SeedSequence, dict, int, str, str],
) -> tuple[int, dict]:
    index, pid, seq, plan, img_size, out, morphometry = job
    params = sample_patient_params(np.random.default_rng(seq), plan, morphometry)
    depth = {v.verse_id: v.depth_mm for v in params.vertebrae}
    s, root = REFERENCE_SIZE / img_size, Path(out)
    aff = ipl_affine(s)
    full = render_patient(params, s)
    ct = window_to_uint8(full.ct_hu, CT_WINDOW_HU)
    records = {}
    for info in full.vertebrae:
        if not info.is_sample:
            continue
        key = make_key(pid, info.verse_id)
        sl = crop_vertebra(full, info.verse_id, img_size)
        _save(volume_path(root, "CT", key), ct[sl], aff)
        _save(volume_path(root, "label", key), full.labels[sl], aff)
        _save(volume_path(root, "heatmap", key), full.heatmap[sl], aff)
        records[key] = {
            "grade": info.grade,
            "shape": info.shape,
            "healthy": info.healthy_heights,
            "fractured": info.fractured_heights,
        }
        if params.sex is not None:  # published morphometry (simple stays bit-for-bit)
            records[key].update(sex=params.sex, depth_mm=round(depth[info.verse_id], 3))
        if info.fractured:
            # Same patient, this fracture undone (the others kept); the window allows for the
            # height the column regains.
            c, half = info.centroid_mm[0], 0.5 * img_size * s + 4 * s
            sev = params.fractures[info.verse_id].severity_mm
            healthy = render_patient(
                params,
                s,
                fractures=set(params.fractures) - {info.verse_id},
                z_range_mm=(c - half - sev, c + half),
            )
            hs = crop_vertebra(healthy, info.verse_id, img_size)
            save_nifti(
                volume_path(root, "healthy_CT", key),
                window_to_uint8(healthy.ct_hu[hs], CT_WINDOW_HU),
                aff,
            )
            _save(volume_path(root, "healthy_label", key), healthy.labels[hs], aff)
    return index, records


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {out} exists and is not empty; pass --overwrite to "
                "replace the phantom files in it"
            )
        for d in VOLUME_FOLDERS:
            shutil.rmtree(out / d, ignore_errors=True)
        for f in _OUT_FILES:
            (out / f).unlink(missing_ok=True)


def generate_dataset(
    out_dir: str | Path,
    n_patients: int,
    img_size: int = 256,
    seed: int = 0,
    workers: int = 2,
    *,
    overwrite: bool = False,
    progress: bool = True,
    morphometry: str = "published",
) -> dict:
    """Write a phantom data root (layout of docs/ARCHITECTURE.md) and return a summary.

    Volumes are ``img_size x img_size x img_size/4`` voxels at ``256 / img_size`` mm (the same
    256 x 256 x 64 mm field at every size), one per sample vertebra (T10-L5), ids
    ``phantom<NNN>_<VerSe id>``; splits by patient (60/20/20). Files are byte-identical for
    the same ``(n_patients, img_size, seed)`` whatever ``workers`` is: every patient draws
    from its own child of ``SeedSequence(seed)``. ``morphometry``: ``"published"`` (the
    default; :mod:`data.phantom_population`) or ``"simple"`` (the first phantom, whose files
    stay byte-identical to those written before the published model existed).
    """
    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 1:
        raise ValueError(f"--n_patients must be an integer >= 1, got {n_patients!r}")
    if not isinstance(img_size, int) or img_size < 32 or img_size % 16:
        raise ValueError(f"--img_size must be a multiple of 16 and >= 32, got {img_size!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    if morphometry not in MORPHOMETRIES:
        raise ValueError(f"--morphometry must be one of {MORPHOMETRIES}, got {morphometry!r}")
    t0, out = time.perf_counter(), Path(out_dir)
    _check_out_dir(out, overwrite)
    for d in VOLUME_FOLDERS:
        (out / d).mkdir(parents=True, exist_ok=True)
    kids = np.random.SeedSequence(seed).spawn(n_patients + 2)
    plan = plan_fractures(np.random.default_rng(kids[0]), n_patients, morphometry)
    width = max(3, len(str(n_patients - 1)))
    pids = [f"phantom{i:0{width}d}" for i in range(n_patients)]
    jobs = [
        (i, pids[i], kids[2 + i], plan[i], img_size, str(out), morphometry)
        for i in range(n_patients)
    ]
    results: dict[int, dict] = {}
    bar = tqdm(total=n_patients, desc="phantom", unit="patient", disable=not progress)
    if workers == 1 or n_patients == 1:
        for job in jobs:
            i, rec = _write_patient(job)
            results[i] = rec
            bar.update()
    else:
        with multiprocessing.get_context().Pool(min(workers, n_patients)) as pool:
            for i, rec in pool.imap_unordered(_write_patient, jobs):
                results[i] = rec
                bar.update()
    bar.close()
    # Splits by patient: about 60/20/20, val and test non-empty from 3 patients on.
    n_hold = max(1, round(0.2 * n_patients)) if n_patients >= 3 else 0
    order = np.random.default_rng(kids[1]).permutation(n_patients)
    split_of = {
        int(i): ("val" if r < n_hold else "test" if r < 2 * n_hold else "train")
        for r, i in enumerate(order)
    }
    splits: dict[str, dict[str, int]] = {split: {} for split in PHASES["all"]}
    heights = {}
    for i in range(n_patients):
        for key, rec in results[i].items():
            splits[split_of[i]][key] = rec["grade"]
            heights[key] = rec
    write_json_atomic(out / SPLIT_FILE, splits)
    write_json_atomic(out / HEIGHTS_FILE, heights)
    grades = [r["grade"] for r in heights.values()]
    return {
        "out_dir": str(out),
        "n_patients": n_patients,
        "morphometry": morphometry,
        "img_size": img_size,
        "spacing_mm": REFERENCE_SIZE / img_size,
        "seed": seed,
        "n_vertebrae": len(heights),
        "n_fractured": sum(g > 0 for g in grades),
        "grades": {g: grades.count(g) for g in range(4)},
        "shapes": {
            k: sum(r["shape"] == k for r in heights.values()) for k in ("none", *SHAPE_PROPORTIONS)
        },
        "splits": {k: len({split_key(v)[0] for v in d}) for k, d in splits.items()},
        "seconds": round(time.perf_counter() - t0, 2),
    }
