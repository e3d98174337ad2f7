"""Option values checked right after parsing, before anything is written or built: each
problem is one ``ValueError`` naming the option (``--lr must be > 0, got -0.1``)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from util.geometry import inside

#: ``option: (low, low inclusive, high, high inclusive)``; None = unbounded. Checked when the
#: option exists (models and generator types add their own) and is not None.
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "lr": (0.0, False, None, False),
    "lr_D": (0.0, False, None, False),
    "beta1": (0.0, True, 1.0, False),
    "ema_decay": (0.0, True, 1.0, False),
    "eta": (0.0, True, None, False),
    "snr_gamma": (0.0, True, None, False),
    "max_cache_mb": (0.0, False, None, False),
    "ngf": (1, True, None, False),
    "ndf": (1, True, None, False),
    "n_layers_D": (1, True, None, False),
    "diffusion_timesteps": (1, True, None, False),
    "num_inference_steps": (1, True, None, False),
    "num_samples": (1, True, None, False),
    "diffusion_crop": (0, True, None, False),
    "stage1_cnum": (1, True, None, False),
    "max_train_minutes": (0.0, True, None, False),
}
#: Loss weights (``--lambda_L1``...) must be finite and >= 0.
_LAMBDA = re.compile(r"lambda_\w+")
_EPOCH = re.compile(r"latest|best|\d+")


def _range_problem(value: float, bounds: tuple[float | None, bool, float | None, bool]) -> str:
    low, low_in, high, high_in = bounds
    too_low = low is not None and (value < low or (value == low and not low_in))
    too_high = high is not None and (value > high or (value == high and not high_in))
    if not (too_low or too_high):
        return ""
    lo = "" if low is None else f"{'>=' if low_in else '>'} {low:g}"
    hi = "" if high is None else f"{'<=' if high_in else '<'} {high:g}"
    return " and ".join(p for p in (lo, hi) if p)


def check_name(name: str, root: str | Path, flag: str = "--name") -> Path:
    """``<root>/<name>`` after checking that ``name`` is a relative path below ``root`` (no
    ``..``, not absolute, not empty); ``ValueError`` naming ``flag`` otherwise."""
    parts = Path(name).parts
    if not name or not parts or Path(name).is_absolute() or ".." in parts:
        raise ValueError(
            f"{flag} {name!r} must be a relative folder name below {root} (no '..', not absolute)"
        )
    try:
        resolved = inside(Path(root) / name, root)
    except ValueError:
        raise ValueError(f"{flag} {name!r} leads outside {root} (through a link?)") from None
    if resolved == Path(root).resolve():
        raise ValueError(f"{flag} {name!r} names {root} itself; give the run a folder of its own")
    return Path(root) / name


def check_options(opt: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the first option with a bad value: floats must be finite,
    :data:`RANGES` and loss weights hold, ``--name`` stays below its folder, ``--epoch`` is
    ``latest``, ``best`` or an epoch number, and flags do not contradict each other."""
    for key, value in sorted(vars(opt).items()):
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{key} must be a finite number, got {value}")
        bounds = RANGES.get(key) or ((0.0, True, None, False) if _LAMBDA.fullmatch(key) else None)
        if bounds and (need := _range_problem(value, bounds)):
            raise ValueError(f"--{key} must be {need}, got {value:g}")
    check_name(opt.name, opt.checkpoints_dir)
    if not _EPOCH.fullmatch(str(opt.epoch)):
        raise ValueError(f"--epoch must be latest, best or an epoch number, got {opt.epoch!r}")
    if getattr(opt, "continue_train", False) and getattr(opt, "overwrite", False):
        raise ValueError("--continue_train and --overwrite contradict each other; pick one")
