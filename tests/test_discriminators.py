"""PatchGAN, GANLoss modes, D_3's crop, straight-through binarisation, loss helpers."""

from __future__ import annotations

import math

import pytest
import torch

from models.discriminators import (
    GANLoss,
    HealthiVertDiscriminators,
    NLayerDiscriminator,
    discriminator_losses,
    generator_gan_loss,
    straight_through_binarise,
)

LOGITS = torch.tensor([0.5, -1.0]).reshape(2, 1, 1, 1)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


@pytest.mark.parametrize(
    ("mode", "real", "for_d", "expected"),
    [
        ("lsgan", True, True, [0.25, 4.0]),  # (x - 1)^2
        ("lsgan", False, True, [0.25, 1.0]),  # x^2
        ("lsgan", True, False, [0.25, 4.0]),
        ("vanilla", True, True, [_softplus(-0.5), _softplus(1.0)]),  # -log sigmoid(x)
        ("vanilla", False, True, [_softplus(0.5), _softplus(-1.0)]),  # -log(1 - sigmoid(x))
        ("hinge", True, True, [0.5, 2.0]),  # relu(1 - x)
        ("hinge", False, True, [1.5, 0.0]),  # relu(1 + x)
        ("hinge", True, False, [-0.5, 1.0]),  # -x
    ],
)
def test_gan_loss_modes(mode: str, real: bool, for_d: bool, expected: list[float]) -> None:
    crit = GANLoss(mode)  # type: ignore[arg-type]
    per_sample = crit(LOGITS, real, for_discriminator=for_d, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor(expected))
    mean = crit(LOGITS, real, for_discriminator=for_d)
    torch.testing.assert_close(mean, torch.tensor(sum(expected) / 2))


def test_gan_loss_rejects_bad_mode_and_fake_hinge_generator() -> None:
    with pytest.raises(ValueError, match="gan_mode"):
        GANLoss("wgan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hinge"):
        GANLoss("hinge")(LOGITS, False, for_discriminator=False)


def test_patchgan_output_size_and_spectral_norm() -> None:
    d = NLayerDiscriminator(input_nc=2, ndf=8, n_layers=3, norm="none", use_spectral_norm=True)
    out = d(torch.randn(1, 2, 64, 64))
    # 64 -> 32 -> 16 -> 8 (stride 2), -> 7 -> 6 (stride 1).
    assert out.shape == (1, 1, 6, 6)
    assert NLayerDiscriminator.min_input_size(3) == 24


@pytest.mark.parametrize(("img_size", "rows"), [(256, (93, 163)), (64, (23, 41))])
def test_d3_crops_the_central_band(img_size: int, rows: tuple[int, int]) -> None:
    ds = HealthiVertDiscriminators(img_size=img_size, ndf=4, norm="none")
    image = torch.arange(img_size, dtype=torch.float32)[None, None, :, None].expand(1, 1, -1, 5)
    crop = ds.crop_band(image)
    assert crop[0, 0, :, 0].tolist() == list(range(*rows))


def test_d3_sees_only_its_rows() -> None:
    torch.manual_seed(0)
    ds = HealthiVertDiscriminators(img_size=64, ndf=4, norm="none")
    ct = torch.rand(1, 1, 64, 64) * 2 - 1
    seg = torch.rand(1, 1, 64, 64)
    base = ds(ct, seg)[2]
    outside = ct.clone()
    outside[:, :, :23] = 0.3
    outside[:, :, 41:] = -0.7
    torch.testing.assert_close(ds(outside, seg)[2], base)
    inside = ct.clone()
    inside[:, :, 30] += 0.5
    assert not torch.allclose(ds(inside, seg)[2], base)
    assert ds.D_3.n_layers == 2  # an 18-row band is too short for 3 stride-2 layers


def test_d3_band_columns_region_and_unit_seg_range() -> None:
    """The original's D_3 region (band rows x central 70 columns at 256 px, zero elsewhere,
    full size) and D_2 input range ({0, 1})."""
    ds = HealthiVertDiscriminators(
        img_size=64, ndf=4, norm="none", d3_region="band_columns", seg_range="unit"
    )
    x = torch.ones(1, 1, 64, 64)
    region = ds.crop_band(x)[0, 0]
    assert region.shape == (64, 64) and ds.D_3.n_layers == 3
    assert torch.nonzero(region.any(1)).flatten().tolist() == list(range(27, 37))  # 10-row band
    assert torch.nonzero(region.any(0)).flatten().tolist() == list(range(23, 41))  # 18 columns
    seen = []
    ds.D_2.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    ds(x, torch.full((1, 1, 64, 64), 0.7))
    assert seen[0].unique().tolist() == [1.0]
    with pytest.raises(ValueError, match="d3_region"):
        HealthiVertDiscriminators(img_size=64, d3_region="crop")


def test_straight_through_binarise() -> None:
    prob = torch.tensor([0.1, 0.5, 0.51, 0.9], requires_grad=True)
    hard = straight_through_binarise(prob)
    assert hard.tolist() == [0.0, 0.0, 1.0, 1.0]
    weights = torch.tensor([1.0, -2.0, 3.0, 4.0])
    (hard * weights).sum().backward()
    torch.testing.assert_close(prob.grad, weights)  # identity in the backward pass


def _setup(cond_nc: int = 0) -> tuple[HealthiVertDiscriminators, GANLoss, list[torch.Tensor]]:
    torch.manual_seed(1)
    ds = HealthiVertDiscriminators(img_size=64, cond_nc=cond_nc, ndf=4, norm="none")
    tensors = [torch.rand(2, 1, 64, 64) for _ in range(4)]
    return ds, GANLoss("lsgan"), tensors


def test_generator_gan_loss_is_sum_over_six_and_reaches_the_segmentation() -> None:
    ds, crit, (fake_ct, fake_seg, _, _) = _setup()
    fake_seg.requires_grad_(True)
    loss = generator_gan_loss(ds, crit, fake_ct, fake_seg)
    d1, d2, d3 = ds(fake_ct, fake_seg)
    expected = sum(((x - 1) ** 2).mean() for x in (d1, d2, d3)) / 6
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert fake_seg.grad is not None and fake_seg.grad.abs().sum() > 0


def test_discriminator_losses_are_fake_plus_real_over_two_and_detach_fakes() -> None:
    ds, crit, (fake_ct, fake_seg, real_ct, real_seg) = _setup(cond_nc=1)
    cond = torch.rand(2, 1, 64, 64)
    fake_ct.requires_grad_(True)
    real_seg = (real_seg > 0.5).float()
    losses = discriminator_losses(
        ds,
        crit,
        real_ct=real_ct,
        real_seg=real_seg,
        fake_ct=fake_ct,
        fake_seg=fake_seg,
        cond=cond,
    )
    assert sorted(losses) == ["D_1", "D_2", "D_3"]
    fake_logit = ds.D_1(torch.cat([fake_ct, cond], 1))
    real_logit = ds.D_1(torch.cat([real_ct, cond], 1))
    expected = 0.5 * ((fake_logit**2).mean() + ((real_logit - 1) ** 2).mean())
    torch.testing.assert_close(losses["D_1"], expected)
    sum(losses.values()).backward()
    assert fake_ct.grad is None  # the D step does not reach the generator
    assert all(p.grad is not None for p in ds.D_3.parameters())
    with pytest.raises(ValueError, match="cond_nc"):
        ds(fake_ct, fake_seg)
