"""``--preset NAME``: one switch for a set of option defaults, written in one place.

``healthivert`` sets every training choice where we differ from the original HealthiVert-GAN
(github.com/zhibaishouheilab/HealthiVert-GAN) to the original's value; the table in
docs/ARCHITECTURE.md gives each difference with its reason. A flag given on the command line
always wins over the preset. Two of the original's bugs stay opt-in flags even with the preset
(``--l1_batch_norm``, ``--edge_loss original``): for an exact reproduction add them.

Not in the preset: the run length and batch size (the original trained 200 + 800 epochs with
batch 12; choose them for your data and budget), and what our architecture does differently
inside the generator (listed in the table).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "none": MappingProxyType({}),
        "healthivert": MappingProxyType(
            {
                # discriminators (models/discriminators.py)
                "gan_mode": "vanilla",
                "ndf": 64,
                "init_type": "normal",
                "d3_region": "band_columns",
                "d2_seg_range": "unit",
                # losses (models/pix2pix_model.py)
                "shrm_context": "truth",
                "seg_losses": "raw",
                "coarse_dice_target": "neighbours",
                "dice_smooth": 1e-5,
                # generator (models/gan_generator.py)
                "cam_injection": "concat",
                # data (data/vertebra_dataset.py)
                "height_convention": "span",
                "cam_in_band": "zero",
                "slice_weighting": "original",
                "band_fill": -1.0,
            }
        ),
    }
)


def apply_preset(parser: argparse.ArgumentParser, name: str) -> dict[str, Any]:
    """Set the defaults of preset ``name`` on ``parser`` (after every flag is added); flags
    the parser lacks (e.g. training-only ones at test time, or another generator's) are
    skipped. Returns the defaults applied. ``ValueError`` names the presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown --preset {name!r}; choose one of: {', '.join(PRESETS)}")
    dests = {action.dest for action in parser._actions}
    applied = {k: v for k, v in PRESETS[name].items() if k in dests}
    parser.set_defaults(**applied)
    return applied
