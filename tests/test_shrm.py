"""SHRM composition against a slow per-sample reference, and the B-geometry round trip."""

from __future__ import annotations

import math

import pytest
import torch

from models.generator_base import GeneratorOutput
from models.shrm import restored_height_rows, shrm_compose, shrm_outputs
from util.geometry import band_px, band_rows


def _reference(band: torch.Tensor, ctx: torch.Tensor, ht: list[int], h2: int) -> torch.Tensor:
    """Obviously-correct loop: place the kept band rows, then the context blocks next to them."""
    b, _, s, _ = band.shape
    out = torch.empty_like(band)
    band_start = s // 2 - h2 // 2
    band_stop = band_start + h2
    for i in range(b):
        start = s // 2 - ht[i] // 2
        stop = start + ht[i]
        for r in range(s):
            if start <= r < stop:
                out[i, :, r] = band[i, :, r]
            elif r < start:
                # The context above ends at band_start in the input and at start in the output.
                src = band_start - (start - r)
                out[i, :, r] = ctx[i, :, min(max(src, 0), s - 1)]
            else:
                # The context below begins at band_stop in the input and at stop in the output.
                src = band_stop + (r - stop)
                out[i, :, r] = ctx[i, :, min(max(src, 0), s - 1)]
    return out


@pytest.mark.parametrize("img_size", [64, 256])
@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("channels", [1, 2])
def test_shrm_matches_reference(img_size: int, batch: int, channels: int) -> None:
    gen = torch.Generator().manual_seed(img_size * 100 + batch * 10 + channels)
    h2 = band_px(img_size)
    band = torch.randn(batch, channels, img_size, 7, generator=gen)
    ctx = torch.randn(batch, channels, img_size, 7, generator=gen)
    ht = torch.randint(1, h2 + 1, (batch,), generator=gen)
    ht[0] = h2  # the extremes are always covered
    if batch > 1:
        ht[1] = 1
    out = shrm_compose(band, ctx, ht, h2)
    torch.testing.assert_close(out, _reference(band, ctx, ht.tolist(), h2), rtol=0, atol=0)


def test_shrm_full_height_is_identity_on_a_geometry() -> None:
    """Ht = h2 keeps the whole band and does not move the context."""
    s, h2 = 64, band_px(64)
    band = torch.randn(2, 1, s, s)
    ctx = torch.randn(2, 1, s, s)
    out = shrm_compose(band, ctx, torch.full((2,), h2), h2)
    r0, r1 = band_rows(s)
    torch.testing.assert_close(out[:, :, r0:r1], band[:, :, r0:r1])
    torch.testing.assert_close(out[:, :, :r0], ctx[:, :, :r0])
    torch.testing.assert_close(out[:, :, r1:], ctx[:, :, r1:])


@pytest.mark.parametrize("h", [1, 5, 24, 39])
def test_shrm_with_true_height_reproduces_b_geometry(h: int) -> None:
    """Build A from a B-geometry slice as the dataset does; SHRM(Ht=h) gives B back."""
    s, h2 = 256, band_px(256)
    b_img = torch.arange(s, dtype=torch.float32)[None, None, :, None].expand(1, 1, s, 3) + 0.5
    v0, v1 = s // 2 - h // 2, s // 2 - h // 2 + h  # vertebra rows in B
    b0, b1 = band_rows(s)
    a_img = torch.zeros_like(b_img)
    a_img[:, :, :b0] = b_img[:, :, v0 - b0 : v0]  # context above closes on the band
    a_img[:, :, b1:] = b_img[:, :, v1 : v1 + s - b1]  # context below closes on the band
    band_source = b_img.clone()  # generator trained towards B's band rows
    out = shrm_compose(band_source, a_img, torch.tensor([h]), h2)
    # Rows whose context was shifted out of the input image are clamped; compare the rest.
    lo, hi = v0 - b0, s - (b1 - v1)
    torch.testing.assert_close(out[:, :, lo:hi], b_img[:, :, lo:hi])
    # Above lo the source row falls off the top of A and clamps to A's first row (= B row lo).
    torch.testing.assert_close(out[:, :, :lo], b_img[:, :, lo : lo + 1].expand(1, 1, lo, 3))
    torch.testing.assert_close(out[:, :, v0:v1], b_img[:, :, v0:v1])


def test_shrm_gradients_reach_kept_band_rows_only() -> None:
    s, h2 = 64, band_px(64)
    band = torch.randn(2, 1, s, 4, requires_grad=True)
    ctx = torch.randn(2, 1, s, 4)
    ht = torch.tensor([4, 10])
    shrm_compose(band, ctx, ht, h2).sum().backward()
    rows_with_grad = band.grad.abs().sum(dim=(1, 3)) > 0
    for i, height in enumerate(ht.tolist()):
        start = s // 2 - height // 2
        expected = torch.zeros(s, dtype=torch.bool)
        expected[start : start + height] = True
        assert torch.equal(rows_with_grad[i], expected)
    torch.testing.assert_close(band.grad[band.grad != 0], torch.ones(int((band.grad != 0).sum())))


def test_restored_height_rows() -> None:
    h2 = 40
    pred = torch.tensor([[0.5], [0.01], [0.0], [1.0], [0.3]])
    measured = torch.tensor([10.0, 3.0, 0.0, 39.0, 25.0])
    got = restored_height_rows(pred, measured, h2)
    expected = [max(math.ceil(0.5 * 40), 10), max(1, 3), 1, 40, 25]
    assert got.tolist() == expected
    assert got.dtype == torch.int64


def test_shrm_rejects_bad_input() -> None:
    x = torch.zeros(2, 1, 64, 64)
    with pytest.raises(ValueError, match="target_rows"):
        shrm_compose(x, x, torch.tensor([0, 5]), 10)
    with pytest.raises(ValueError, match="batch"):
        shrm_compose(x, x, torch.tensor([5]), 10)
    with pytest.raises(ValueError, match="band_source"):
        shrm_compose(x, x[:1], torch.tensor([5, 5]), 10)


def test_shrm_outputs_uses_each_stage_height() -> None:
    s, h2 = 64, band_px(64)
    imgs = [torch.randn(2, 1, s, s) for _ in range(4)]
    pred1, pred2 = torch.tensor([[0.2], [0.9]]), torch.tensor([[0.5], [0.1]])
    measured = torch.tensor([3.0, 4.0])
    res = shrm_outputs(GeneratorOutput(*imgs, torch.zeros(2, 2, s, s), pred1, pred2), measured, h2)
    out = res.composed
    rows1, rows2 = torch.tensor([3, 9]), torch.tensor([5, 4])  # max(ceil(p * 10), measured)
    assert torch.equal(res.rows1, rows1) and torch.equal(res.rows2, rows2)
    torch.testing.assert_close(out.coarse_seg, _reference(imgs[0], imgs[0], rows1.tolist(), h2))
    torch.testing.assert_close(out.fine_seg, _reference(imgs[1], imgs[1], rows2.tolist(), h2))
    torch.testing.assert_close(out.x_stage1, _reference(imgs[2], imgs[2], rows1.tolist(), h2))
    torch.testing.assert_close(out.x_stage2, _reference(imgs[3], imgs[3], rows2.tolist(), h2))
    assert out.pred1_h is pred1 and out.pred2_h is pred2
    # --shrm off (an ablation): no restoration, the whole band kept; equal to SHRM at Ht = h2.
    raw = GeneratorOutput(*imgs, torch.zeros(2, 2, s, s), pred1, pred2)
    off = shrm_outputs(raw, measured, h2, restore=False)
    assert off.composed is raw and off.rows1.tolist() == off.rows2.tolist() == [h2, h2]
    full = shrm_outputs(
        raw._replace(pred1_h=torch.ones(2, 1), pred2_h=torch.ones(2, 1)), measured, h2
    )
    torch.testing.assert_close(full.composed.x_stage2, raw.x_stage2)
    assert not torch.allclose(out.x_stage2, raw.x_stage2)
