"""Compare our vertebral body heights (``util.heights``) with TPTBox's six-point heights.

Development tool: TPTBox is a test-only requirement (``requirements-dev.txt``).

    python scripts/compare_heights_tptbox.py \
        --seg ../shared/data/totalseg_example/vertebrae_labels.nii.gz \
        --body ../shared/data/totalseg_example/vertebrae_body.nii.gz \
        --label_map totalseg [--out compare.json]

See ``evaluation/heights_tptbox.py`` for the two measures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from evaluation.heights_tptbox import compare_with_tptbox, markdown
from util.cli import run_main
from util.io import write_json_atomic
from util.labels import LABEL_MAP_NAMES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seg", required=True, help="vertebra label volume (NIfTI)")
    parser.add_argument("--body", required=True, help="vertebral-body mask (1 = body)")
    parser.add_argument("--label_map", choices=LABEL_MAP_NAMES, default="verse")
    parser.add_argument("--out", help="optional JSON file of the comparison")
    args = parser.parse_args(argv)
    try:
        found = compare_with_tptbox(args.seg, args.body, args.label_map)
    except ImportError as exc:  # TPTBox missing: a development requirement, not a bug
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, reason in found.skipped.items():
        print(f"warning: {name} not measured by util.heights: {reason}", file=sys.stderr)
    print(markdown(found.result, found.voxel_mm))
    if args.out:
        write_json_atomic(args.out, found.result)
    return 0


if __name__ == "__main__":
    run_main(main)
