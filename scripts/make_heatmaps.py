"""Write Grad-CAM++ fracture attention maps (``heatmap/``, HealthiVert's HGAM input).

Example::

    python scripts/make_heatmaps.py --dataroot datasets/phantom \
        --classifier checkpoints/classifier/classifier.pth --evaluate test

See ``cam/heatmaps.py`` for the maps, their normalisation and the ``--evaluate`` measure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from cam.heatmaps import evaluate_heatmaps, make_heatmaps
from util.cli import run_main
from util.misc import add_device_options, device_from_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataroot", required=True, help="data root with CT/ (and label/ for eval)")
    p.add_argument("--classifier", required=True, help="checkpoint of train_classifier.py")
    p.add_argument("--out_dir", default=None, help="output folder (default: <dataroot>/heatmap)")
    p.add_argument("--img_size", type=int, default=None, help="check: must match the classifier")
    p.add_argument("--batch_size", type=int, default=64, help="slices per Grad-CAM++ pass")
    add_device_options(p)
    p.add_argument(
        "--evaluate",
        default=None,
        metavar="PHASE",
        help="then report map mass on the target vertebrae of this split (e.g. test)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    written = make_heatmaps(
        args.dataroot,
        args.classifier,
        out_dir=args.out_dir,
        batch_size=args.batch_size,
        device=device_from_options(args),
        img_size=args.img_size,
        progress=not args.quiet,
    )
    print(f"wrote {len(written)} heatmaps to {written[0].parent}")
    if args.evaluate:
        result = evaluate_heatmaps(args.dataroot, written[0].parent, args.evaluate)
        print(json.dumps({"phase": args.evaluate, **result}, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
