"""Our code against the original HealthiVert-GAN code on identical inputs.

Each test feeds the same tensors to a function of ours and to the original's code (imported
from ../shared/reference/healthivert_original by ``tests/healthivert_original.py``, never
copied) and compares one number with a stated tolerance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from healthivert_original import original_module, requires_original

from models.gan_generator import contextual_attention

pytestmark = requires_original


# ----------------------------------------------------------------------------- attention
def _band_masks(size: int, n: int) -> torch.Tensor:
    """(n, 1, size, size): the centred band, a taller band, a band lower down."""
    h2 = 40 * size // 256
    m = torch.zeros(n, 1, size, size)
    c = size // 2
    for i, (top, rows) in enumerate([(c - h2 // 2, h2), (c - h2, 2 * h2), (c, h2)][:n]):
        m[i, :, top : top + rows] = 1.0
    return m


def _cosine_in_hole(ours: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) cosine similarity of the two feature maps over the hole (feature pixels whose block
    touches the mask), per sample."""
    hole = F.adaptive_max_pool2d(mask, ours.shape[-2:]).expand_as(ours) > 0
    return torch.stack([F.cosine_similarity(o[h], r[h], dim=0) for o, r, h in zip(ours, ref, hole)])


def test_contextual_attention_matches_the_original_in_the_hole() -> None:
    """Tolerance: cosine > 0.999 per sample (measured 1.0000000) and |diff| < 1e-4 in the hole.

    The original runs sample by sample (its batched form uses sample 0's mask for every
    sample); ours runs the batch at once, each sample with its own mask."""
    ca = original_module("models.inpaint_networks").ContextualAttention(
        False, ksize=3, stride=1, rate=2, fuse_k=3, softmax_scale=10, fuse=True
    )
    torch.manual_seed(0)
    for size, channels in ((64, 8), (256, 16)):
        feat = torch.randn(3, channels, size // 4, size // 4)
        mask = _band_masks(size, 3)
        ours, _ = contextual_attention(feat, mask)
        one = [(feat[i : i + 1], mask[i : i + 1]) for i in range(3)]
        ref = torch.cat([ca(f, f, m)[0] for f, m in one])
        cos = _cosine_in_hole(ours, ref, mask)
        assert bool((cos > 0.999).all()), cos
        hole = F.adaptive_max_pool2d(mask, feat.shape[-2:]).expand_as(feat) > 0
        torch.testing.assert_close(ours[hole], ref[hole], rtol=0, atol=1e-4)
        assert torch.equal(ours[~hole], feat[~hole])  # ours keeps the known features
