"""Train the small normal-vs-fractured slice classifier whose Grad-CAM++ maps feed HGAM.

Example (phantom at 64 px: about 30 s with one thread, under 3 min at 128 px; on a busy shared
CPU, --num_threads 1 is several times faster than more threads)::

    python scripts/train_classifier.py --dataroot datasets/phantom --img_size 64 --epochs 10 \
        --out checkpoints/classifier/classifier.pth

See ``cam/classifier_training.py`` for the data, the training and the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from cam.classifier_training import train_from_dataroot
from util.cli import run_main
from util.misc import add_device_options, device_from_options


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataroot", default="datasets/phantom", help="data root (CT/, label/, JSON)")
    p.add_argument("--out", default="checkpoints/classifier/classifier.pth", help="checkpoint")
    p.add_argument("--img_size", type=int, default=128, help="slice size S the net sees")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (cosine decay)")
    p.add_argument(
        "--widths", type=_ints, default="16,32,48,64,64", help="channels of the conv blocks"
    )
    p.add_argument("--n_pool", type=int, default=2, help="2x2 max pools (CAM at S / 2**n_pool)")
    p.add_argument(
        "--window", type=float, default=0.25, help="central fraction of the rows trained on"
    )
    p.add_argument("--no_augment", action="store_true", help="no shift/intensity augmentation")
    p.add_argument("--seed", type=int, default=0)
    add_device_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    best = train_from_dataroot(
        args.dataroot, args.out, img_size=args.img_size, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, widths=args.widths, n_pool=args.n_pool,
        window=args.window, augmentation=not args.no_augment, seed=args.seed,
        device=device_from_options(args), progress=not args.quiet, options=vars(args),
    )  # fmt: skip
    print(f"saved {args.out} (epoch {best['epoch']}): " + json.dumps(best))
    return 0


if __name__ == "__main__":
    run_main(main)
