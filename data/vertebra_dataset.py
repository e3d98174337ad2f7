"""``--dataset_mode vertebra``: one sagittal slice of one vertebra per item (HealthiVert).

Reads the CT, label and heatmap volumes and the split file of a data root (layout and names:
``util/geometry.py``; the sample: docs/ARCHITECTURE.md, "One sample"). Per item:

1. Slice choice: over the central 4/5 of the target's extent along axis 2 (L-R), slices ``k``
   with pyramid weights ``1 - |k - c| / (half + 1)`` (``c``, ``half``: centre and half width of
   that range), so centre slices are the most likely and the edges keep a small weight;
   ``slice_ratio = |k - c| / half`` in [0, 1] (``--slice_weighting original``: the original's
   weights and ratio, ``data.vertebra_geometry.original_slice_weights``).
2. The target's label loses its 8-connected pieces under 50 px (at 256 px, scaled with the
   area) in each slice, as the original does. A slice is *valid* when more than 50 px of the
   target are left and its row extent ``h`` (at ``img_size``; ``--height_convention``) is
   below the band height ``h2``: a taller vertebra would not fit the band (the A geometry
   would lose rows of it), so such slices are excluded. A vertebra with no valid slice is
   dropped when the index is built (one warning lists them).
3. The slice is resized in-plane to ``img_size`` (CT, heatmap: bilinear with antialiasing;
   labels: nearest) before any geometry, then A and B geometry follow ``util/geometry.py``.

The geometry is pure (numpy in, numpy out) and lives in ``data/vertebra_geometry.py`` so that
the evaluation and the whole-vertebra synthesis reuse it. Volumes are cached per dataset
instance (so per worker) in a bounded LRU, already resized and stored slice-major (D, S, S).
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from data.base_dataset import DATASETS, BaseDataset
from data.vertebra_geometry import (
    CAM_IN_BAND,
    HEIGHT_CONVENTIONS,
    build_slice_sample,
    central_range,
    drop_small_pieces,
    original_slice_weights,
    pyramid_weights,
    vertebra_span,
)
from data.volume_cache import VolumeCache, header_shape, volume_to_slices
from util.geometry import (
    MIN_PIECE_PX_AT_256,
    SPLIT_FILE,
    band_px,
    scaled_area_px,
    split_key,
    volume_path,
)
from util.nifti_io import load_nifti

VERT_CLASSES = ("normal", "abnormal", "all")
SLICE_MODES = ("random", "all")
#: Defaults of the dataset's own flags, stated once: ``--vert_class``/``--slice_mode`` take
#: the training or the evaluation ones by ``is_train``; the constructor takes the training ones.
TRAIN_DEFAULTS = MappingProxyType({"vert_class": "normal", "slice_mode": "random"})
EVAL_DEFAULTS = MappingProxyType({"vert_class": "all", "slice_mode": "all"})
#: Default bound of the per-process volume cache (``--max_cache_mb``).
DEFAULT_MAX_CACHE_MB = 1024.0
SLICE_WEIGHTINGS = ("ours", "original")
#: Image keys of a sample, each (1, S, S) float32.
IMAGE_KEYS = ("A", "B", "mask", "vert_mask", "normal_vert", "normal_vert_context", "CAM")
#: A vertebra counts as normal (trained on; a neighbour in ``normal_vert``) when its grade is
#: 0..NORMAL_MAX_GRADE, as in the original (``grade <= 1``: Genant grade 1 is a mild deformity).
NORMAL_MAX_GRADE = 1


def is_normal(grade: int | None) -> bool:
    """Whether a split grade counts as normal; ``None`` (not in the split) and -1 (unknown)
    never do."""
    return grade is not None and 0 <= grade <= NORMAL_MAX_GRADE


@dataclass(frozen=True)
class VertebraIndexEntry:
    """Index entry of one vertebra volume (rows and heights at ``img_size``)."""

    key: str
    pid: str
    vid: int
    grade: int
    shape: tuple[int, ...]  # native (H, W, D) of the label file
    lo: int  # central range of slices, inclusive
    hi: int
    valid: np.ndarray  # (n,) int64 valid slice indices in lo..hi, ascending
    probs: np.ndarray  # (n,) float64 sampling probabilities of ``valid``
    ratios: np.ndarray  # (n,) float64 slice_ratio of ``valid``
    label_ids: tuple[int, ...]  # non-zero label ids present in the volume


def load_splits(dataroot: str | Path) -> dict[str, dict[str, int]]:
    """``{phase: {"<pid>_<vid>": grade}}`` from the split file of ``dataroot``, checked:
    ids of the form ``<pid>_<label id>``, integer grades (``null`` -> -1, unknown). Errors
    name the file."""
    path = Path(dataroot) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        raise ValueError(f"{path} must map phase -> {{'<pid>_<vid>': grade}}")
    out: dict[str, dict[str, int]] = {}
    for phase, entries in splits.items():
        out[phase] = {}
        for key, grade in entries.items():
            if grade is not None and (isinstance(grade, bool) or not isinstance(grade, int)):
                raise ValueError(f"{path}: grade of {key!r} must be an integer, got {grade!r}")
            try:
                split_key(key)
            except ValueError as exc:  # the message names the id; add the file
                raise ValueError(f"{path}: {exc}") from None
            out[phase][key] = -1 if grade is None else grade
    return out


# ----------------------------------------------------------------------------- dataset
@DATASETS.register("vertebra")
class VertebraDataset(BaseDataset):
    """Sagittal slices of the vertebrae of one split (see the module docstring).

    Build it from typed arguments or from options (:meth:`from_opt`). Items are dicts of
    tensors with the keys of docs/ARCHITECTURE.md.
    """

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        defaults = TRAIN_DEFAULTS if is_train else EVAL_DEFAULTS
        parser.add_argument(
            "--vert_class",
            choices=VERT_CLASSES,
            default=defaults["vert_class"],
            help=f"vertebrae to use: normal (grade 0..{NORMAL_MAX_GRADE}, as the original), "
            "abnormal (a higher grade), or all",
        )
        parser.add_argument(
            "--slice_mode",
            choices=SLICE_MODES,
            default=defaults["slice_mode"],
            help="random: one item per vertebra, a pyramid-weighted random "
            "slice each time; all: one item per valid slice, in order",
        )
        parser.add_argument(
            "--no_cam", action="store_true", help="do not read heatmap/; the CAM input is all zeros"
        )
        parser.add_argument(
            "--height_convention",
            choices=HEIGHT_CONVENTIONS,
            default="rows",
            help="rows: a vertebra on rows x1..x2 is x2 - x1 + 1 tall; span: x2 - x1, its "
            "last row left in the context (the original's)",
        )
        parser.add_argument(
            "--cam_in_band",
            choices=CAM_IN_BAND,
            default="resized",
            help="CAM in the band: the vertebra's CAM rows resized into it, or 0 (the original's)",
        )
        parser.add_argument(
            "--band_fill",
            type=float,
            default=0.0,
            help="value of the masked band of the input A, in [-1, 1] CT units (the "
            "original's -1: uint8 0)",
        )
        parser.add_argument(
            "--slice_weighting",
            choices=SLICE_WEIGHTINGS,
            default="ours",
            help="slice sampling weights and slice_ratio: ours (ratio 0..1 over the central "
            "range) or the original's (ratio normalised by the whole extent)",
        )
        parser.add_argument(
            "--max_cache_mb",
            type=float,
            default=DEFAULT_MAX_CACHE_MB,
            help="memory for decoded volumes per data-loading process (LRU); 24 MB per "
            "vertebra at 256 px (CT, label, heatmap), 1.5 MB at 64 px",
        )
        return parser

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> VertebraDataset:
        """Build from parsed options (the shared flags and the ones added above)."""
        limit = opt.max_dataset_size
        return cls(
            dataroot=opt.dataroot,
            phase=opt.phase,
            img_size=opt.img_size,
            seed=opt.seed,
            vert_class=opt.vert_class,
            slice_mode=opt.slice_mode,
            use_cam=not opt.no_cam,
            max_cache_mb=opt.max_cache_mb,
            max_dataset_size=None if limit is None or limit == float("inf") else int(limit),
            height_convention=opt.height_convention,
            cam_in_band=opt.cam_in_band,
            slice_weighting=opt.slice_weighting,
            band_fill=opt.band_fill,
        )

    def __init__(
        self,
        *,
        dataroot: str | Path,
        phase: str,
        img_size: int,
        seed: int,
        vert_class: str = TRAIN_DEFAULTS["vert_class"],
        slice_mode: str = TRAIN_DEFAULTS["slice_mode"],
        use_cam: bool = True,
        max_cache_mb: float = DEFAULT_MAX_CACHE_MB,
        max_dataset_size: int | None = None,
        height_convention: str = "rows",
        cam_in_band: str = "resized",
        slice_weighting: str = "ours",
        band_fill: float = 0.0,
    ) -> None:
        """Index the vertebrae of split ``phase`` under ``dataroot`` (slices at ``img_size``
        px). ``seed`` seeds the random slice choice; ``use_cam=False`` skips ``heatmap/`` (an
        all-zero CAM); ``max_cache_mb`` bounds the volume cache; ``max_dataset_size`` keeps the
        first items only (``None``: all); ``height_convention``, ``cam_in_band`` and
        ``slice_weighting``, ``band_fill``: ours or the original's (the flags of the same
        names)."""
        self.root = Path(dataroot)
        self.phase = str(phase)
        self.img_size = int(img_size)
        self.vert_class = vert_class
        self.slice_mode = slice_mode
        self.seed = int(seed)
        self.use_cam = bool(use_cam)
        self.height_convention = height_convention
        self.cam_in_band = cam_in_band
        self.slice_weighting = slice_weighting
        self.band_fill = float(band_fill)
        if not -1.0 <= self.band_fill <= 1.0:
            raise ValueError(f"--band_fill must lie in [-1, 1], got {self.band_fill}")
        for name, value, choices in (
            ("height_convention", self.height_convention, HEIGHT_CONVENTIONS),
            ("cam_in_band", self.cam_in_band, CAM_IN_BAND),
            ("slice_weighting", self.slice_weighting, SLICE_WEIGHTINGS),
        ):
            if value not in choices:
                raise ValueError(f"--{name} {value!r}: choose one of {choices}")
        if self.vert_class not in VERT_CLASSES:
            raise ValueError(f"--vert_class {self.vert_class!r}: choose one of {VERT_CLASSES}")
        if self.slice_mode not in SLICE_MODES:
            raise ValueError(f"--slice_mode {self.slice_mode!r}: choose one of {SLICE_MODES}")
        if self.img_size < 16:
            raise ValueError(f"--img_size must be at least 16, got {self.img_size}")
        self.cache = VolumeCache(float(max_cache_mb))
        # the epoch of set_epoch(), in shared memory so that persistent workers see it too
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._healthy: dict[str, VertebraIndexEntry] = {}

        self.grades, keys = self._read_split()
        for folder in ("CT", "label") + (("heatmap",) if self.use_cam else ()):
            if not (self.root / folder).is_dir():
                hint = " (or pass --no_cam to use an all-zero CAM)" if folder == "heatmap" else ""
                raise FileNotFoundError(f"data folder not found: {self.root / folder}{hint}")
        infos, dropped = [], []
        for key in keys:
            info = self._index(key, healthy=False)
            (infos if info.valid.size else dropped).append(info)
        if dropped:
            warnings.warn(
                f"{len(dropped)} vertebrae have no slice with a height below the band "
                f"({band_px(self.img_size)} rows at {self.img_size} px) and are dropped: "
                + ", ".join(i.key for i in dropped),
                stacklevel=2,
            )
        if not infos:
            raise ValueError(
                f"no usable vertebra in {self.root / SPLIT_FILE} for phase "
                f"{self.phase!r}, vert_class {self.vert_class!r}"
            )
        self.infos: dict[str, VertebraIndexEntry] = {i.key: i for i in infos}
        if self.slice_mode == "random":
            self.items: list[tuple[str, int | None]] = [(i.key, None) for i in infos]
        else:
            self.items = [(i.key, int(k)) for i in infos for k in i.valid]
        if max_dataset_size is not None and len(self.items) > max_dataset_size:
            self.items = self.items[: int(max_dataset_size)]

    # ------------------------------------------------------------------ index
    def _read_split(self) -> tuple[dict[str, int], list[str]]:
        """All grades of the JSON (this phase last) and the keys of this phase/vert_class."""
        path = self.root / SPLIT_FILE
        splits = load_splits(self.root)
        grades: dict[str, int] = {}
        for name in [n for n in splits if n != self.phase] + [self.phase]:
            grades.update(splits.get(name, {}))
        wanted = {
            "normal": is_normal,
            "abnormal": lambda g: g > NORMAL_MAX_GRADE,
            "all": lambda g: True,
        }
        keys = [k for k in splits.get(self.phase, {}) if wanted[self.vert_class](grades[k])]
        if not keys:
            raise ValueError(
                f"empty split: {path} has no vertebra for phase {self.phase!r} "
                f"with vert_class {self.vert_class!r}"
            )
        return grades, keys

    def _paths(self, key: str, healthy: bool) -> tuple[Path, Path, Path | None]:
        ct_dir, label_dir = ("healthy_CT", "healthy_label") if healthy else ("CT", "label")
        cam = volume_path(self.root, "heatmap", key) if self.use_cam else None
        return volume_path(self.root, ct_dir, key), volume_path(self.root, label_dir, key), cam

    def _index(self, key: str, healthy: bool) -> VertebraIndexEntry:
        """Check the files of ``key`` and scan its label for valid slices."""
        pid, vid = split_key(key)
        ct_path, label_path, cam_path = self._paths(key, healthy)
        shape = header_shape(label_path)
        for path in (ct_path, cam_path):
            if path is not None and header_shape(path) != shape:
                raise ValueError(
                    f"{path} has shape {header_shape(path)} but {label_path} has shape {shape}"
                )
        label = self._volume(label_path, "label", shape)  # (D, S, S)
        present = label == vid
        zs = np.flatnonzero(present.any(axis=(1, 2)))
        if zs.size == 0:
            raise ValueError(f"{label_path} does not contain vertebra id {vid} (from {key!r})")
        lo, hi = central_range(int(zs[0]), int(zs[-1]))
        size = self.img_size
        min_px = scaled_area_px(MIN_PIECE_PX_AT_256, size)
        target = drop_small_pieces(present, min_px)  # as build_slice_sample, every slice
        rows_any = target.any(axis=2)  # (D, S): rows holding the target, per slice
        first = rows_any.argmax(axis=1)
        last = size - 1 - rows_any[:, ::-1].argmax(axis=1)
        height = last - first + (self.height_convention == "rows")
        ks = np.arange(lo, hi + 1)
        ok = (target[ks].sum(axis=(1, 2)) > min_px) & (height[ks] >= 1)
        ok &= height[ks] < band_px(size)
        if self.slice_weighting == "original":
            weights, ratios = original_slice_weights(int(zs[0]), int(zs[-1]), ks)
        else:
            weights, ratios = pyramid_weights(lo, hi, ks)
        valid = ks[ok]
        probs = weights[ok] / weights[ok].sum() if valid.size else weights[ok]
        ids = np.flatnonzero(np.bincount(label.ravel(), minlength=256)[1:]) + 1
        grade = self.grades.get(key, -1)
        return VertebraIndexEntry(
            key=key,
            pid=pid,
            vid=vid,
            grade=grade,
            shape=shape,
            lo=lo,
            hi=hi,
            valid=valid.astype(np.int64),
            probs=probs,
            ratios=ratios[ok],
            label_ids=tuple(int(i) for i in ids),
        )

    # ------------------------------------------------------------------ loading
    def _volume(self, path: Path, kind: str, shape: tuple[int, ...]) -> np.ndarray:
        def load(p: Path) -> np.ndarray:
            data = load_nifti(p)[0]
            if data.shape != shape:
                raise ValueError(f"{p} has shape {data.shape}, expected {shape} (its label)")
            return volume_to_slices(data, kind, self.img_size, p)

        return self.cache.get(path, load)

    def normal_ids(self, key: str, *, healthy: bool = False) -> list[int]:
        """Label ids of the volume of ``key`` that count as normal in ``normal_vert``: those
        whose grade in the JSON is normal (:func:`is_normal`; a vertebra that no split lists,
        or with an unknown grade, is not), and the target always with ``healthy=True`` (the
        healthy truth of a fractured vertebra)."""
        info = self._info(key, healthy)
        out = []
        for i in info.label_ids:
            if i == info.vid:
                normal = healthy or is_normal(info.grade)
            else:
                normal = is_normal(self.grades.get(f"{info.pid}_{i}"))
            if normal:
                out.append(i)
        return out

    def _info(self, key: str, healthy: bool) -> VertebraIndexEntry:
        if healthy:
            if key not in self._healthy:
                self._healthy[key] = self._index(key, healthy=True)
            return self._healthy[key]
        if key not in self.infos:
            raise KeyError(
                f"vertebra {key!r} is not in this dataset ({self.phase}, {self.vert_class})"
            )
        return self.infos[key]

    # ------------------------------------------------------------------ public helpers
    def keys(self) -> list[str]:
        """Vertebra ids of this dataset, in JSON order."""
        return list(self.infos)

    def valid_slices(self, key: str, *, healthy: bool = False) -> list[int]:
        """Every valid slice index of vertebra ``key`` (ascending); ``healthy`` reads
        ``healthy_CT/``/``healthy_label/`` (phantom) instead of ``CT/``/``label/``."""
        return [int(k) for k in self._info(key, healthy).valid]

    def slice_options(self) -> dict[str, Any]:
        """The keyword options this dataset passes to ``build_slice_sample`` (for callers that
        build samples from arrays, e.g. the iterative synthesis, so they match)."""
        return {
            "height_convention": self.height_convention,
            "cam_in_band": self.cam_in_band,
            "band_fill": self.band_fill,
        }

    def has_healthy(self, key: str) -> bool:
        """Whether the root holds a healthy volume pair for ``key`` (phantom fractures)."""
        ct, label, _ = self._paths(key, healthy=True)
        return ct.is_file() and label.is_file()

    def get_sample(self, key: str, k: int, *, healthy: bool = False) -> dict[str, Any]:
        """The sample of vertebra ``key`` at slice ``k`` (deterministic).

        With ``healthy=True`` the CT and label come from ``healthy_CT/``/``healthy_label/``
        (the heatmap stays ``heatmap/<key>``) and the target counts as normal in
        ``normal_vert``; ``grade`` stays the JSON grade. ``ValueError`` if ``k`` is not valid.
        """
        info = self._info(key, healthy)
        pos = np.searchsorted(info.valid, k)
        if pos >= info.valid.size or info.valid[pos] != k:
            raise ValueError(
                f"slice {k} of {key!r} is not valid (valid: "
                f"{info.valid.tolist()}; healthy={healthy})"
            )
        ct_path, label_path, cam_path = self._paths(key, healthy)
        label = self._volume(label_path, "label", info.shape)[k]
        ct = self._volume(ct_path, "ct", info.shape)[k]
        cam = None if cam_path is None else self._volume(cam_path, "cam", info.shape)[k]
        normal = self.normal_ids(key, healthy=healthy)
        s = build_slice_sample(ct, label, cam, info.vid, normal, **self.slice_options())
        out: dict[str, Any] = {name: torch.from_numpy(s[name][None]) for name in IMAGE_KEYS}
        out["height"] = torch.tensor(s["height"], dtype=torch.float32)
        for name in ("x1", "x2", "h2"):
            out[name] = torch.tensor(s[name], dtype=torch.int64)
        out["slice_ratio"] = torch.tensor(info.ratios[pos], dtype=torch.float32)
        out["slice_index"] = torch.tensor(k, dtype=torch.int64)
        out["grade"] = torch.tensor(info.grade, dtype=torch.int64)
        out["id"] = key
        return out

    def vertebra_rows_in_slice(self, key: str, k: int, *, healthy: bool = False) -> tuple[int, int]:
        """Rows ``(x1, x2)`` (inclusive, at ``img_size``) that the sample of slice ``k`` cuts
        out of the unshifted slice (``src_x1, src_x2`` of the sample): B geometry moves them by
        ``sample['x1'] - x1``."""
        info = self._info(key, healthy)
        _, label_path, _ = self._paths(key, healthy)
        label = self._volume(label_path, "label", info.shape)[k]
        min_px = scaled_area_px(MIN_PIECE_PX_AT_256, self.img_size)
        rows = vertebra_span(drop_small_pieces(label == info.vid, min_px), self.height_convention)
        if rows is None:
            raise ValueError(f"vertebra {key!r} is absent from slice {k}")
        return rows

    # ------------------------------------------------------------------ Dataset API
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random slices :meth:`__getitem__` draws (see :meth:`item_rng`);
        seen by every DataLoader worker, persistent ones included."""
        self._epoch.fill_(int(epoch))

    def item_rng(self, index: int) -> np.random.Generator:
        """numpy Generator of item ``index``, a function of (``seed``, epoch, ``index``) only:
        the same whatever the workers, the worker loading the item, or a resume."""
        entropy = [self.seed % 2**64, int(self._epoch), int(index)]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key, k = self.items[index]
        if k is None:
            info = self.infos[key]
            k = int(self.item_rng(index).choice(info.valid, p=info.probs))
        return self.get_sample(key, k)

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers start with an empty cache instead of a pickled copy of it.
        state = self.__dict__.copy()
        state["cache"] = self.cache.empty_copy()
        return state
