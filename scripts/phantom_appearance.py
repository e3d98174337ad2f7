"""CT appearance of the phantom beside the real CT of the TotalSegmentator example.

Example::

    python scripts/phantom_appearance.py --totalseg ../shared/data/totalseg_example --seeds 0 1 2 3

Prints a markdown table, phantom vs real, with a distance per row: HU distributions (mean
(SD) [5th, 50th, 95th percentile]) of cancellous bone, cortex, disc and paraspinal muscle
(1-Wasserstein distance and |difference of means| / real SD), the muscle's radial noise
power spectrum (relative L2, integral, peak) and the bodies' AP depth / height and fill
ratio by level L1-L5. The phantom is rendered at ``--spacing`` mm (3: the real scan's), one
healthy patient per seed. See ``evaluation/appearance.py`` for the definitions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evaluation.appearance import compare, phantom_appearance, real_appearance, table_rows
from util.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--totalseg", required=True, help="folder with ct, vertebrae_labels, _body")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--spacing", type=float, default=3.0, help="phantom voxel size (mm)")
    parser.add_argument("--morphometry", default="published", choices=("published", "simple"))
    args = parser.parse_args(argv)
    real = real_appearance(args.totalseg)
    phantom = phantom_appearance(args.seeds, args.spacing, args.morphometry)
    print("\n".join(table_rows(compare(phantom, real))))
    return 0


if __name__ == "__main__":
    run_main(main)
