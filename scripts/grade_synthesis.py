"""Genant grading with and without synthesis, from synthesised vertebra volumes.

Example::

    python scripts/synthesize_volume.py --dataroot D --name N ... --phase all_eval --out S
    python scripts/grade_synthesis.py --dataroot D --synthesis S --out G [--phase all_eval]

See ``evaluation/synthesis_grading.py`` for the heights, the classifiers and the outputs;
``--protocol healthivert`` evaluates the original HealthiVert-GAN's way
(``evaluation/healthivert_protocol.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evaluation.healthivert_protocol import PROTOCOLS
from evaluation.synthesis_grading import grade_synthesis, summary
from util.cli import run_main
from util.geometry import PHASES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", required=True, help="data root of the original volumes")
    parser.add_argument("--synthesis", required=True, help="output of synthesize_volume.py")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--phase", default="all_eval", choices=list(PHASES), help="split(s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CV folds")
    parser.add_argument(
        "--frame",
        default="image",
        choices=["image", "pca"],
        help="height axis: the volume's S-I axis (straightened volumes) or the body's PCA axis",
    )
    parser.add_argument(
        "--protocol",
        default="ours",
        choices=list(PROTOCOLS),
        help="ours, or the original HealthiVert-GAN's RHLV, grading and synthesis metrics",
    )
    args = parser.parse_args(argv)
    result = grade_synthesis(
        args.dataroot,
        args.synthesis,
        args.out,
        phase=args.phase,
        seed=args.seed,
        frame=args.frame,
        protocol=args.protocol,
    )
    print(summary(result, args.out))
    return 0


if __name__ == "__main__":
    run_main(main)
