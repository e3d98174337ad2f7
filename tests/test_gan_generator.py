"""The GAN generator: seven-output contract, contextual attention oracle, one training step."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from models.discriminators import GANLoss, HealthiVertDiscriminators, generator_gan_loss
from models.gan_generator import CamConcat, GanGenerator, contextual_attention
from models.generator_base import GeneratorInput, GeneratorOutput, find_generator
from models.losses import (
    LossWeights,
    dice_loss,
    relative_height_loss,
    sobel_edge_loss,
    two_stage_l1_loss,
)
from models.shrm import shrm_outputs
from util.geometry import band_px, band_rows

S = 64


def _inputs(batch: int = 2, seed: int = 0, size: int = S) -> GeneratorInput:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 1, size, size)
    r0, r1 = band_rows(size)
    mask[:, :, r0:r1] = 1.0
    ct = (torch.rand(batch, 1, size, size, generator=gen) * 2 - 1) * (1 - mask)
    cam = torch.rand(batch, 1, size, size, generator=gen)
    return GeneratorInput(ct, mask, cam, torch.rand(batch, generator=gen))


def _check_contract(out: GeneratorOutput, inp: GeneratorInput) -> None:
    b, _, size, _ = inp.masked_ct.shape
    outside = inp.band_mask == 0
    for name in ("coarse_seg", "fine_seg", "x_stage1", "x_stage2"):
        assert getattr(out, name).shape == (b, 1, size, size), name
        assert getattr(out, name).dtype == torch.float32, name
    assert out.offset_flow.shape == (b, 2, size, size)
    assert out.pred1_h.shape == (b, 1) and out.pred2_h.shape == (b, 1)
    for name in ("coarse_seg", "fine_seg", "pred1_h", "pred2_h"):
        t = getattr(out, name).detach()
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0, name
    for name in ("x_stage1", "x_stage2"):
        t = getattr(out, name).detach()
        assert float(t.min()) >= -1.0 and float(t.max()) <= 1.0, name
        assert torch.equal(t[outside], inp.masked_ct[outside]), name
        assert not torch.equal(t, inp.masked_ct), name  # the band was generated
    assert torch.all(out.offset_flow[outside.expand(-1, 2, -1, -1)] == 0)
    assert out.offset_flow[:, :, band_rows(size)[0]].abs().sum() > 0
    # Offsets are whole multiples of the matching stride (8 px) and point into the image.
    assert torch.all(out.offset_flow % 8 == 0)
    assert float(out.offset_flow.abs().max()) < size


def test_seven_output_contract_training_and_sample() -> None:
    torch.manual_seed(0)
    g = GanGenerator(ngf=16, img_size=S)
    inp = _inputs()
    res = g.training_forward(inp, target=torch.zeros_like(inp.masked_ct))
    _check_contract(res.outputs, inp)
    assert res.aux_losses == {}
    torch.testing.assert_close(res.x0_weight, torch.ones(2))
    assert res.outputs.x_stage2.requires_grad
    g.eval()
    first, second = g.sample(inp), g.sample(inp)
    _check_contract(first.outputs, inp)
    assert first.std is None and not first.outputs.x_stage2.requires_grad
    for a, b in zip(first.outputs, second.outputs):
        assert torch.equal(a, b)  # deterministic


@pytest.mark.parametrize("size", [128, 256])
def test_other_image_sizes(size: int) -> None:
    torch.manual_seed(0)
    g = GanGenerator(ngf=16, img_size=size).eval()
    inp = _inputs(batch=1, size=size)
    _check_contract(g.sample(inp).outputs, inp)


def test_autocast_bf16_is_safe() -> None:
    torch.manual_seed(0)
    g = GanGenerator(ngf=16, img_size=S).eval()
    inp = _inputs(batch=1)
    ref = g.sample(inp).outputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = g.sample(inp).outputs
    _check_contract(low, inp)
    assert float((low.x_stage2 - ref.x_stage2).abs().max()) < 0.05
    assert float((low.pred2_h - ref.pred2_h).abs().max()) < 0.02
    # Training under autocast: spectral norm's power iteration keeps fp32 buffers.
    g.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = g.training_forward(inp, inp.masked_ct).outputs
    assert all(t.dtype == torch.float32 for t in out)
    sum(t.mean() for t in out).backward()
    assert all(torch.isfinite(p.grad).all() for p in g.parameters())
    assert all(b.dtype == torch.float32 for b in g.buffers())


def test_size_parameters_and_options() -> None:
    parser = GanGenerator.modify_commandline_options(argparse.ArgumentParser(), True)
    opt = parser.parse_args([])
    opt.img_size = 128
    g = GanGenerator.from_opt(opt)
    assert find_generator("gan") is GanGenerator
    n_params = sum(p.numel() for p in g.parameters())
    assert 0.85e6 < n_params < 1.15e6  # about 1.0 M, like the original at ngf 16
    with pytest.raises(ValueError, match="img_size"):
        GanGenerator(img_size=72)
    wrong_size = _inputs()._replace(masked_ct=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="masked_ct"):
        GanGenerator(img_size=S).sample(wrong_size)


def test_cam_as_input_channels() -> None:
    """--cam_injection concat (the original's HGAM): the CAM is a channel of two decoder convs,
    so it changes the output from the first step (the zero-initialised modulation does not)."""
    torch.manual_seed(0)
    inp = _inputs()
    for injection, changes in (("concat", True), ("modulation", False)):
        g = GanGenerator(ngf=8, img_size=S, cam_injection=injection).eval()
        a = g.sample(inp).outputs.x_stage1
        b = g.sample(inp._replace(cam=1 - inp.cam)).outputs.x_stage1
        assert (not torch.equal(a, b)) == changes, injection
    assert isinstance(
        GanGenerator(ngf=8, img_size=S, cam_injection="concat").net.coarse.decoder.cam1, CamConcat
    )
    with pytest.raises(ValueError, match="cam_injection"):
        GanGenerator(img_size=S, cam_injection="add")


def test_contextual_attention_keeps_context_and_points_offsets_at_background() -> None:
    # Equivalence with the original's values: tests/test_equivalence_original.py.
    torch.manual_seed(3)
    feat = torch.randn(3, 4, 16, 12)
    mask = torch.zeros(3, 1, 64, 48)
    mask[0, :, 28:36] = 1.0  # the usual centred band
    mask[1, :, 20:44] = 1.0  # a taller one
    mask[2, :, 30:34, 8:40] = 1.0  # a rectangle, not full width
    out, flow = contextual_attention(feat, mask)
    outside = F.adaptive_max_pool2d(mask, (16, 12)).expand_as(feat) == 0
    assert torch.equal(out[outside], feat[outside])
    assert not torch.equal(out[~outside], feat[~outside])
    assert torch.equal(flow * (1 - mask), torch.zeros_like(flow))
    # every hole pixel points at a matching-grid key whose 3x3 neighbourhood is unmasked
    for i in range(3):
        ys, xs = torch.nonzero(mask[i, 0], as_tuple=True)
        ty = (ys + flow[i, 0, ys, xs]).long() // 8
        tx = (xs + flow[i, 1, ys, xs]).long() // 8
        grid = F.max_pool2d(mask[i : i + 1, :, ::8, ::8], 3, 1, 1)[0, 0]
        assert bool((grid[ty, tx] == 0).all())


def test_one_training_step_changes_weights_with_finite_losses() -> None:
    torch.manual_seed(0)
    g = GanGenerator(ngf=8, img_size=S)
    ds = HealthiVertDiscriminators(img_size=S, ndf=8, norm="none")
    ds.requires_grad_(False)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    inp = _inputs()
    h2 = band_px(S)
    height = torch.tensor([6.0, 8.0])
    gt = torch.rand(2, 1, S, S) * 2 - 1
    vert = torch.zeros(2, 1, S, S)
    vert[:, :, 29:36, 20:40] = 1.0
    w = LossWeights()
    before = [p.detach().clone() for p in g.parameters()]
    raw = g.training_forward(inp, gt).outputs
    out = shrm_outputs(raw, height, h2).composed
    x1, x2, seg = out.x_stage1, out.x_stage2, out.fine_seg
    losses = {
        "GAN": w.lambda_GAN * generator_gan_loss(ds, GANLoss("lsgan"), x2, seg),
        "L1": w.lambda_L1 * two_stage_l1_loss(x1, x2, gt, inp.band_mask),
        "dice": w.lambda_dice_coarse * dice_loss(out.coarse_seg, vert)
        + w.lambda_dice_fine * dice_loss(seg, vert),
        "edge": w.lambda_edge * sobel_edge_loss(seg, vert),
        "height": w.lambda_height
        * (
            relative_height_loss(out.pred1_h, height / h2)
            + relative_height_loss(out.pred2_h, height / h2)
        ),
    }
    assert all(torch.isfinite(v) for v in losses.values())
    opt.zero_grad()
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in g.named_parameters()}
    assert all(v is not None and torch.isfinite(v).all() for v in grads.values())
    assert grads["net.coarse.height.fc.weight"].abs().sum() > 0
    assert grads["net.coarse.decoder.cam1.affine.weight"].abs().sum() > 0
    opt.step()
    changed = sum(not torch.equal(a, p) for a, p in zip(before, g.parameters()))
    assert changed == len(before)
