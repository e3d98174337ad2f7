"""The training choices where we differ from the original HealthiVert-GAN, as flags.

Each flag offers the original's value as a choice; ``--preset healthivert``
(``options/presets.py``) selects them all. The differences table in docs/ARCHITECTURE.md
says why ours differ.
"""

from __future__ import annotations

import argparse

from models.discriminators import D3_REGIONS, INIT_TYPES, SEG_RANGES


def add_training_choice_options(parser: argparse.ArgumentParser) -> None:
    """The training choices where we differ from the original HealthiVert-GAN, each with the
    original's value as a choice (``--preset healthivert`` selects them all; see the
    differences table in docs/ARCHITECTURE.md)."""
    g = parser.add_argument_group("training choices (original's values: --preset healthivert)")
    g.add_argument(
        "--init_type",
        default="default",
        choices=INIT_TYPES,
        help="discriminator init: PyTorch's, or normal = N(0, --init_gain) (the original's)",
    )
    g.add_argument("--init_gain", type=float, default=0.02, help="std of --init_type normal")
    g.add_argument(
        "--d3_region",
        default="rows",
        choices=D3_REGIONS,
        help="what D_3 sees: the central 70 rows (at 256 px), or the band rows x the "
        "central 70 columns, zero elsewhere (the original's)",
    )
    g.add_argument(
        "--d2_seg_range",
        default="signed",
        choices=SEG_RANGES,
        help="D_2's binarised segmentation in {-1, 1} like the CT, or {0, 1} (the original's)",
    )
    g.add_argument(
        "--shrm_context",
        default="input",
        choices=["input", "truth"],
        help="context of the SHRM composition the losses and discriminators see: the input "
        "(as at inference), or the ground truth, on the measured vertebra (the original's)",
    )
    g.add_argument(
        "--seg_losses",
        default="composed",
        choices=["composed", "raw"],
        help="segmentation for the fine Dice, edge loss and D_2: SHRM-composed, or the "
        "generator's raw output (the original's)",
    )
    g.add_argument(
        "--coarse_dice_target",
        default="normal_vert",
        choices=["normal_vert", "neighbours"],
        help="coarse Dice: composed coarse seg vs the normal vertebrae (B geometry, target "
        "included when normal), or raw coarse seg vs the normal vertebrae of the context "
        "(A geometry, band empty: the original's)",
    )
    g.add_argument(
        "--dice_smooth",
        type=float,
        default=1.0,
        help="Dice smoothing added to numerator and denominator (the original's 1e-5)",
    )
    g.add_argument(
        "--l1_batch_norm",
        action="store_true",
        help="exact reproduction of an original bug: the masked L1 divided by the band "
        "pixels of the whole batch, so its weight falls as 1 / batch size",
    )
    g.add_argument(
        "--edge_loss",
        default="soft",
        choices=["soft", "original"],
        help="EEM edge loss on the soft segmentation, or the original's on the thresholded "
        "one (exact reproduction of an original bug: it never trains the generator)",
    )
