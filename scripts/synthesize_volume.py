"""Synthesise whole pseudo-healthy vertebrae: every valid sagittal slice, rebuilt in 3-D.

Example::

    python scripts/synthesize_volume.py --dataroot datasets/phantom64 --name gan64 \
        --netG_type gan --img_size 64 --gpu_ids -1 [--phase all_eval] [--ids a,b] \
        [--iterative] [--out DIR] [--num_inference_steps K] [--epoch latest]

Every flag of ``test.py`` (``options/test_options.py``, ``--num_inference_steps`` included) is
accepted; the flags below are this script's own. Writes ``<out>/CT/<id>.nii.gz``,
``<out>/label/<id>.nii.gz`` and ``<out>/synthesis.json``; default ``<out>``:
``<results_dir>/<name>/synthesis_<phase>_<epoch>/``. The method (slice order, volume
assembly, ``--iterative`` context) is described in ``evaluation/synthesis.py``.

Sharded (``evaluation/synthesis_shard.py``): ``--shard i/N`` (or ``RANK``/``WORLD_SIZE`` under
``torchrun``) synthesises a disjoint share of the vertebrae (whole patients with
``--iterative``) into the same ``--out`` and writes ``synthesis_shard_<i>of<N>.json``; after
all N, ``--merge --out DIR`` writes the ``synthesis.json`` one process would. A restarted run
skips the vertebrae it already finished (same model, checkpoint and settings).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evaluation.synthesis import run_synthesis
from evaluation.synthesis_shard import merge_synthesis
from options.test_options import TestOptions
from util.cli import run_main
from util.geometry import PHASES
from util.shard import resolve_shard, shard_arg


def build_parser() -> argparse.ArgumentParser:
    """This script's own flags (every other flag goes to ``TestOptions``)."""
    p = argparse.ArgumentParser(
        description="Synthesise every valid slice of each vertebra and write 3-D volumes. "
        "Also accepts every flag of test.py (options/test_options.py).",
    )
    p.add_argument("--phase", default="all_eval", choices=list(PHASES), help="split(s)")
    p.add_argument("--ids", default=None, help="comma-separated vertebra ids (default: all)")
    p.add_argument(
        "--iterative",
        action="store_true",
        help="per patient, fractured vertebrae first; later ones see them as context",
    )
    p.add_argument("--out", default=None, help="output folder (default: results/<name>/...)")
    p.add_argument(
        "--shard",
        type=shard_arg,
        help="'i/N': this process's share (default: RANK/WORLD_SIZE under torchrun, else 0/1)",
    )
    p.add_argument("--merge", action="store_true", help="merge the shard indexes of --out and stop")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    """``(own flags, test options)``; the phase given to ``TestOptions`` is a placeholder."""
    args, rest = build_parser().parse_known_args(None if argv is None else list(argv))
    splits = PHASES[args.phase]
    opt = TestOptions(list(rest) + ["--phase", splits[0]]).parse(save=False)
    return args, opt


def main(argv: Sequence[str] | None = None) -> int:
    own, _ = build_parser().parse_known_args(None if argv is None else list(argv))
    if own.merge:
        if own.out is None:
            raise ValueError("--merge needs --out (the folder the shards wrote to)")
        index = merge_synthesis(own.out)
        print(f"merged {len(index['vertebrae'])} vertebrae -> {own.out}/synthesis.json")
        return 0
    args, opt = parse_args(argv)
    shard = resolve_shard(args.shard)
    ids = [k.strip() for k in args.ids.split(",") if k.strip()] if args.ids else None
    index, out = run_synthesis(
        opt, phase=args.phase, ids=ids, iterative=args.iterative, out=args.out, shard=shard
    )
    n_slices = sum(len(v["slices"]) for v in index["vertebrae"].values())
    what = f"shard {shard}: " if shard.count > 1 else ""
    print(f"{what}synthesised {len(index['vertebrae'])} vertebrae ({n_slices} slices) -> {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
