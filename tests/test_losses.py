"""Each loss against values computed by hand on tiny tensors."""

from __future__ import annotations

import argparse

import pytest
import torch

from models.losses import (
    LossWeights,
    add_loss_options,
    dice_loss,
    masked_l1_loss,
    relative_height_loss,
    sobel_edge_loss,
    sobel_edges,
    two_stage_l1_loss,
)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pred = torch.cat([_t([[1.0, 0.0], [0.0, 0.0]]), _t([[0.5, 0.5], [0.0, 0.0]])])
    target = torch.cat([_t([[0.0, 0.0], [0.0, 0.0]]), _t([[0.0, 0.0], [0.0, 1.0]])])
    mask = torch.cat([_t([[1.0, 1.0], [0.0, 0.0]]), _t([[0.0, 0.0], [1.0, 1.0]])])
    return pred, target, mask


def test_masked_l1_hand_computed() -> None:
    pred, target, mask = _pair()
    # Sample 0: |1| over a band of 2 px = 0.5. Sample 1: (0.5 + 0.5 + 1) / 2 = 1.0.
    per_sample = masked_l1_loss(pred, target, mask, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(masked_l1_loss(pred, target, mask), torch.tensor(0.75))
    # Equals the whole-image mean L1 times image area / band area (4 / 2), the original form.
    whole = (pred - target).abs().flatten(1).mean(1) * 4 / 2
    torch.testing.assert_close(per_sample, whole)


def test_two_stage_l1_hand_computed() -> None:
    pred, target, mask = _pair()
    x1 = pred
    x2 = target.clone()  # perfect stage 2
    # (stage-1 L1 + 0) / 2 * 2 = stage-1 L1: [0.5, 1.0].
    got = two_stage_l1_loss(x1, x2, target, mask, reduction="none")
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(two_stage_l1_loss(x1, x1, target, mask), torch.tensor(1.5))


def test_dice_hand_computed() -> None:
    pred = _t([[0.5, 1.0], [0.0, 0.0]])
    target = _t([[1.0, 1.0], [0.0, 0.0]])
    # Intersection 1.5, sums 1.5 and 2. smooth 1: 1 - 4 / 4.5 = 1/9; smooth 0: 1 - 3/3.5 = 1/7.
    torch.testing.assert_close(dice_loss(pred, target), torch.tensor(1.0 / 9.0))
    torch.testing.assert_close(dice_loss(pred, target, smooth=0.0), torch.tensor(1.0 / 7.0))
    both = dice_loss(torch.cat([pred, target]), torch.cat([target, target]), reduction="none")
    torch.testing.assert_close(both, torch.tensor([1.0 / 9.0, 0.0]))


def test_sobel_edges_hand_computed() -> None:
    seg = _t([[0.0, 0.0, 1.0]] * 3)
    # Replicated border: columns (0, 0, 0, 1, 1); gx = (1 + 2 + 1) * (right - left) = 0, 4, 4.
    expected = _t([[0.0, 4.0, 4.0]] * 3)
    torch.testing.assert_close(sobel_edges(seg), expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(
        sobel_edges(seg.transpose(2, 3)), expected.transpose(2, 3), atol=1e-3, rtol=0
    )


def test_sobel_edge_loss_hand_computed() -> None:
    pred = _t([[0.0, 0.0, 1.0]] * 3)
    target = torch.zeros_like(pred)
    # Six pixels of magnitude 4 against 0: 6 * 16 / 9.
    torch.testing.assert_close(
        sobel_edge_loss(pred, target), torch.tensor(96.0 / 9.0), atol=2e-3, rtol=0
    )
    assert float(sobel_edge_loss(pred, pred)) == 0.0


def test_sobel_edge_loss_has_finite_gradients_on_partly_flat_input() -> None:
    # Flat top half (zero gradient magnitude, where a bare sqrt would give NaN), ramp below.
    pred = torch.zeros(1, 1, 4, 4)
    pred[..., 2:, :] = torch.linspace(0.0, 1.0, 4)
    pred.requires_grad_(True)
    sobel_edge_loss(pred, _t([[0.0, 1.0, 1.0, 0.0]] * 4)).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_relative_height_hand_computed() -> None:
    pred = torch.tensor([[0.5], [0.3]])
    target = torch.tensor([0.4, 0.6])
    torch.testing.assert_close(
        relative_height_loss(pred, target, reduction="none"), torch.tensor([0.25, 0.5])
    )
    torch.testing.assert_close(relative_height_loss(pred, target), torch.tensor(0.375))


def test_bad_input_raises() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="reduction"):
        dice_loss(x, x, reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="band_mask is empty"):
        masked_l1_loss(x, x, x)
    with pytest.raises(ValueError, match="positive"):
        relative_height_loss(torch.ones(1), torch.zeros(1))
    with pytest.raises(ValueError, match="same shape"):
        sobel_edge_loss(x, torch.zeros(1, 1, 3, 3))


def test_loss_weights_and_options() -> None:
    w = LossWeights()
    assert (w.lambda_GAN, w.lambda_L1, w.lambda_dice_coarse, w.lambda_dice_fine) == (1, 200, 10, 15)
    assert (w.lambda_edge, w.lambda_height) == (800, 40)
    parser = add_loss_options(argparse.ArgumentParser())
    assert LossWeights.from_opt(parser.parse_args([])) == w
    opt = parser.parse_args(["--lambda_L1", "100", "--lambda_edge", "0"])
    assert LossWeights.from_opt(opt) == LossWeights(lambda_L1=100.0, lambda_edge=0.0)
