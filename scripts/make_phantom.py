"""Write the procedural phantom spine data set (the framework's embedded data root).

Example::

    python scripts/make_phantom.py --out datasets/phantom --n_patients 20 --img_size 256 --seed 0

See ``data/phantom.py`` for the anatomy, the fracture model and the file layout.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from data.phantom import generate_dataset
from data.phantom_patients import MORPHOMETRIES
from util.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="data root to write (e.g. datasets/phantom)")
    parser.add_argument("--n_patients", type=int, required=True, help="number of patients (>= 1)")
    parser.add_argument(
        "--img_size",
        type=int,
        default=256,
        help="in-plane size S: volumes S x S x S/4 at 256/S mm (multiple of 16)",
    )
    parser.add_argument("--seed", type=int, default=0, help="master seed")
    parser.add_argument(
        "--morphometry",
        choices=MORPHOMETRIES,
        default="published",
        help="published: wedged, correlated, sex-specific anatomy with the published fracture "
        "level distribution (default); simple: the first phantom, bit-for-bit",
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (patients in parallel)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the phantom files of a non-empty --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = generate_dataset(
        args.out,
        args.n_patients,
        img_size=args.img_size,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
        morphometry=args.morphometry,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
