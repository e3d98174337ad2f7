"""A small CNN that classifies a sagittal CT slice as normal (0) or fractured (1).

Its only job is to provide Grad-CAM++ attention maps (HealthiVert's HGAM input, the
``heatmap/`` folder) through ``scripts/make_heatmaps.py``; ``scripts/train_classifier.py``
trains it. Architecture (``n = len(widths)`` blocks):

1. ``n`` conv blocks, 3x3 conv -> BatchNorm -> ReLU, one conv in block 0 (it runs at full
   resolution, where it costs most on a CPU) and two in the others; the first ``n_pool``
   blocks end with a 2x2 max pool, so the last block works at ``S / 2**n_pool`` px (16 x 16 at
   S = 64 by default; receptive field 62 px). The map of the last block is the class
   activation map, so its resolution matters: with 8 x 8 cells at S = 64 a cell is larger
   than a vertebral body and the maps missed the bodies on the phantom.
2. Global average pooling, dropout, one linear layer -> 2 logits.

The last conv block is ``self.last_conv`` (also ``target_layer()``): Grad-CAM++ hooks it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Class indices of the two logits.
NORMAL, FRACTURED = 0, 1


def _block(c_in: int, c_out: int, n_conv: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_conv):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class FractureClassifier(nn.Module):
    """Normal-vs-fractured classifier of ``(B, 1, S, S)`` slices in [-1, 1] -> ``(B, 2)`` logits.

    Args:
        img_size: slice size ``S`` it is trained at (stored for checkpoints; the network is
            fully convolutional, but Grad-CAM maps are only meaningful at this scale).
        widths: channels of the conv blocks (at least 2 blocks); the default has 188 k weights.
        n_pool: number of 2x2 max pools (after the first ``n_pool`` blocks; < len(widths)).
        dropout: dropout probability before the linear head.
    """

    def __init__(
        self,
        *,
        img_size: int = 128,
        widths: tuple[int, ...] = (16, 32, 48, 64, 64),
        n_pool: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths must hold at least 2 positive channel counts, got {widths}")
        if not 0 <= n_pool < len(widths):
            raise ValueError(f"n_pool must lie in [0, {len(widths) - 1}], got {n_pool}")
        if img_size < 2**n_pool or img_size % 2**n_pool:
            raise ValueError(
                f"img_size {img_size} must be a multiple of {2**n_pool} for n_pool={n_pool}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.img_size = int(img_size)
        self.widths = widths
        self.n_pool = int(n_pool)
        self.dropout_p = float(dropout)
        layers: list[nn.Module] = []
        c_in = 1
        for i, w in enumerate(widths[:-1]):
            layers.append(_block(c_in, w, 1 if i == 0 else 2))
            if i < n_pool:
                layers.append(nn.MaxPool2d(2))
            c_in = w
        self.features = nn.Sequential(*layers)
        self.last_conv = _block(c_in, widths[-1])
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], 2)
        )

    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this network (stored in checkpoints)."""
        return {
            "img_size": self.img_size,
            "widths": list(self.widths),
            "n_pool": self.n_pool,
            "dropout": self.dropout_p,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FractureClassifier:
        """Inverse of :meth:`config`."""
        cfg = dict(config)
        cfg["widths"] = tuple(cfg["widths"])
        return cls(**cfg)

    def target_layer(self) -> nn.Module:
        """The last conv block, the layer Grad-CAM++ explains."""
        return self.last_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, 1, H, W)`` CT in [-1, 1] -> logits ``(B, 2)`` (normal, fractured)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, H, W) batch, got shape {tuple(x.shape)}")
        return self.head(self.last_conv(self.features(x)))
