"""Integration tests of the diffusion path beside the GAN path (run by scripts/test.sh).

Both generator types behind the same seven-output contract, the scheduler against the
diffusers oracle, one training step of the full pix2pix model per generator type, a short
CPU overfit that makes the DDIM sample approach the truth, and seeded determinism.
"""

from __future__ import annotations

import diffusers  # test-only oracle, installed from requirements-dev.txt
import pytest
import torch

from data.phantom import generate_dataset
from data.vertebra_dataset import VertebraDataset
from models import find_generator
from models.generator_base import GeneratorInput, GeneratorOutput
from models.noise_scheduler import DDPMScheduler
from options.train_options import TrainOptions
from util.geometry import band_rows


def _inputs(batch: int, size: int, seed: int = 0) -> tuple[GeneratorInput, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, 1, size, size)
    b0, b1 = band_rows(size)
    mask[..., b0:b1, :] = 1
    target = torch.rand(batch, 1, size, size, generator=g) * 2 - 1
    inp = GeneratorInput(
        target * (1 - mask),
        mask,
        torch.rand(batch, 1, size, size, generator=g),
        torch.rand(batch, generator=g),
    )
    return inp, target


def _generator(netg: str, size: int, **extra):
    argv = ["--netG_type", netg, "--img_size", str(size), "--gpu_ids", "-1", "--name", "it"]
    for key, value in extra.items():
        argv += [f"--{key}", str(value)]
    opt = TrainOptions(argv).parse(save=False)
    return find_generator(netg).from_opt(opt), opt


def _check_contract(out: GeneratorOutput, inp: GeneratorInput, size: int, batch: int) -> None:
    assert len(out) == 7 and out._fields[0] == "coarse_seg" and out._fields[-1] == "pred2_h"
    for name in ("coarse_seg", "fine_seg", "x_stage1", "x_stage2"):
        t = getattr(out, name)
        assert t.shape == (batch, 1, size, size), name
        assert torch.isfinite(t).all(), name
    for name in ("coarse_seg", "fine_seg"):
        t = getattr(out, name)
        assert t.min() >= 0 and t.max() <= 1, name
    for name in ("x_stage1", "x_stage2"):
        t = getattr(out, name)
        assert t.min() >= -1 and t.max() <= 1, name
        outside = inp.band_mask == 0
        assert torch.equal(t[outside], inp.masked_ct[outside]), f"{name} keeps the context"
    assert out.offset_flow.shape == (batch, 2, size, size)
    assert out.pred1_h.shape == out.pred2_h.shape == (batch, 1)
    for h in (out.pred1_h, out.pred2_h):
        assert h.min() >= 0 and h.max() <= 1
    assert not torch.equal(out.x_stage1, out.x_stage2), "stage 1 and stage 2 must differ"


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("netg", ["gan", "diffusion"])
def test_seven_outputs_for_both_generator_types(netg, size):
    gen, _ = _generator(netg, size)
    with torch.no_grad():  # leave the zero-initialised output layers: a non-trivial network
        for p in gen.parameters():
            p.add_(0.02 * torch.randn_like(p))
    inp, target = _inputs(2, size)
    train_out = gen.train().training_forward(inp, target)
    _check_contract(train_out.outputs, inp, size, 2)
    assert train_out.x0_weight.shape == (2,)
    sample = gen.eval().sample(inp, steps=4, generator=torch.Generator().manual_seed(0))
    _check_contract(sample.outputs, inp, size, 2)
    if netg == "diffusion":
        assert set(train_out.aux_losses) == {"diff"}
        assert torch.count_nonzero(train_out.outputs.offset_flow) == 0
        assert torch.count_nonzero(sample.outputs.offset_flow) == 0


@pytest.mark.parametrize(
    "schedule,oracle_schedule", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")]
)
def test_scheduler_matches_diffusers(schedule, oracle_schedule):
    ours = DDPMScheduler(beta_schedule=schedule)
    kw = dict(
        num_train_timesteps=1000,
        beta_schedule=oracle_schedule,
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=True,
    )
    ddpm = diffusers.DDPMScheduler(**kw)
    ddim = diffusers.DDIMScheduler(**kw)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([0, 499, 999])
    assert (ours.add_noise(x0, noise, t) - ddpm.add_noise(x0, noise, t)).abs().max() < 1e-5

    ours.set_timesteps(25)
    ddim.set_timesteps(25)
    assert torch.equal(torch.as_tensor(ours.timesteps).long(), ddim.timesteps.long())
    x_t = torch.randn(3, 1, 8, 8, generator=g)
    for step in ddim.timesteps[::6]:
        eps = torch.randn(3, 1, 8, 8, generator=g)
        expected = ddim.step(eps, int(step), x_t, eta=0.0).prev_sample
        got = ours.ddim_step(eps, int(step), x_t, eta=0.0).prev_sample
        assert (got - expected).abs().max() < 1e-5


def test_add_noise_then_predict_x0_recovers_x0():
    sched = DDPMScheduler()
    g = torch.Generator().manual_seed(2)
    x0 = (torch.rand(16, 1, 8, 8, generator=g) * 2 - 1).double()
    noise = torch.randn(16, 1, 8, 8, generator=g).double()
    t = torch.linspace(0, 999, 16).long()
    x_t = sched.add_noise(x0, noise, t)
    assert (sched.predict_x0_from_eps(x_t, noise, t) - x0).abs().max() < 1e-9


def _batch(size: int, batch: int = 2) -> dict:
    inp, target = _inputs(batch, size, seed=3)
    vert = torch.zeros(batch, 1, size, size)
    b0, b1 = band_rows(size)
    vert[..., b0 + 1 : b1 - 1, size // 4 : size // 2] = 1
    return {
        "A": inp.masked_ct,
        "B": target,
        "mask": inp.band_mask,
        "vert_mask": vert,
        "normal_vert": vert,
        "CAM": inp.cam,
        "height": torch.full((batch,), b1 - b0 - 2.0),
        "slice_ratio": inp.slice_ratio,
        "id": [f"p{i}_20" for i in range(batch)],
    }


@pytest.mark.parametrize("netg", ["gan", "diffusion"])
def test_one_training_step_changes_weights_with_finite_losses(netg, tmp_path):
    from models import create_model

    argv = [
        "--netG_type",
        netg,
        "--img_size",
        "64",
        "--gpu_ids",
        "-1",
        "--name",
        "step",
        "--checkpoints_dir",
        str(tmp_path),
    ]
    opt = TrainOptions(argv).parse(save=False)
    model = create_model(opt)
    model.setup(opt)
    before = {k: v.clone() for k, v in model.netG.state_dict().items()}
    model.set_input(_batch(64))
    model.optimize_parameters()
    losses = model.get_current_losses()
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    changed = {
        k
        for k, v in model.netG.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, before[k])
    }
    with_grad = {
        k for k, p in model.netG.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    # zero-initialised output convs block the gradient of the layers before them at step 1,
    # so not every weight moves; every weight that received a gradient must have
    assert len(with_grad) >= 10 and with_grad <= changed
    if netg == "diffusion":
        assert "G_diff" in losses


@pytest.fixture(scope="module")
def phantom_slices(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("phantom")
    generate_dataset(root, n_patients=1, img_size=64, seed=3, workers=1, progress=False)
    ds = VertebraDataset(
        dataroot=root, phase="train", img_size=64, seed=0, vert_class="all", slice_mode="all"
    )
    keys = ds.keys()[:4]
    return [ds.get_sample(k, ds.valid_slices(k)[len(ds.valid_slices(k)) // 2]) for k in keys]


def _stack(samples: list[dict]) -> tuple[GeneratorInput, torch.Tensor]:
    a = torch.stack([s["A"] for s in samples])
    b = torch.stack([s["B"] for s in samples])
    mask = torch.stack([s["mask"] for s in samples])
    cam = torch.stack([s["CAM"] for s in samples])
    ratio = torch.stack([s["slice_ratio"] for s in samples])
    return GeneratorInput(a, mask, 1 - cam, ratio), mask * b + (1 - mask) * a


def _band_l1(gen, inp, target) -> float:
    out = gen.eval().sample(inp, steps=10, generator=torch.Generator().manual_seed(0)).outputs
    band = inp.band_mask.bool()
    return float((out.x_stage2[band] - target[band]).abs().mean())


def test_short_overfit_makes_ddim_sample_approach_the_truth(phantom_slices):
    torch.manual_seed(0)
    gen, _ = _generator("diffusion", 64, snr_gamma=5)
    inp, target = _stack(phantom_slices)
    # Untrained, the residual design already returns the context fill (band L1 ~0.087 here), so
    # halving it means learning the residual. lr 3e-3 overfits unstably with it (10-step sample
    # L1 0.080; 1e-3: 0.038, exp/diff12 REPORT); L_diff alone trains the denoiser.
    untrained = _band_l1(gen, inp, target)
    optim = torch.optim.Adam(gen.parameters(), lr=1e-3)
    gen.train()
    for _ in range(150):
        result = gen.training_forward(inp, target)
        optim.zero_grad()
        result.aux_losses["diff"].backward()
        optim.step()
    trained = _band_l1(gen, inp, target)
    print(f"in-band L1 untrained {untrained:.3f} trained {trained:.3f}")
    assert trained < 0.5 * untrained, (untrained, trained)


def test_sampling_is_deterministic_for_a_seed_with_eta_zero():
    gen, _ = _generator("diffusion", 64, eta=0.0)
    inp, _ = _inputs(2, 64)
    gen.eval()
    a = gen.sample(inp, steps=4, generator=torch.Generator().manual_seed(5)).outputs.x_stage2
    b = gen.sample(inp, steps=4, generator=torch.Generator().manual_seed(5)).outputs.x_stage2
    c = gen.sample(inp, steps=4, generator=torch.Generator().manual_seed(6)).outputs.x_stage2
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the seed matters: the band starts from noise


def test_unknown_generator_type_is_a_parse_error(capsys):
    with pytest.raises(SystemExit):
        TrainOptions(["--netG_type", "foo"]).parse(save=False)
    assert "diffusion" in capsys.readouterr().err
    with pytest.raises(ValueError, match="gan"):
        find_generator("foo")


#: The pre-issue-12 diffusion design as flags (eps on the band, leading DDIM, Min-SNR, the
#: image losses on the denoiser's x0): the default-weights test below fails with it.
OLD_DESIGN = [
    "--prediction_type", "epsilon", "--no-zero_terminal_snr", "--timestep_spacing", "leading",
    "--diffusion_weighting", "minsnr", "--diffusion_residual", "none", "--image_grad", "both",
    "--head_grad_scale", "1",
]  # fmt: skip


def diffusion_loss_first_last(
    samples: list[dict], tmp_path, extra=(), steps: int = 40, name: str = "G_diff"
):
    """Train the full model (default loss weights, lr, discriminators) for ``steps`` steps on
    the phantom slices; the (t, noise) draws cycle through 4 seeds, so the mean loss ``name``
    of the first 4 and of the last 4 steps are comparable."""
    from torch.utils.data import default_collate

    from models import create_model

    argv = ["--netG_type", "diffusion", "--img_size", "64", "--gpu_ids", "-1", "--name", "fall"]
    opt = TrainOptions([*argv, "--checkpoints_dir", str(tmp_path), *extra]).parse(save=False)
    torch.manual_seed(0)
    model = create_model(opt)
    model.setup(opt)
    model.set_input(default_collate(samples))
    losses = []
    for step in range(steps):
        torch.manual_seed(step % 4)
        model.optimize_parameters()
        losses.append(float(getattr(model, f"loss_{name}").detach()))
    return sum(losses[:4]) / 4, sum(losses[-4:]) / 4


def test_default_loss_weights_let_the_diffusion_loss_fall(phantom_slices, tmp_path):
    # Issue 12: with the GAN-scale image losses on the denoiser, L_diff rose during training
    # (0.90 -> 1.27 in the demo) and the samples were noise. With OLD_DESIGN as extra flags this
    # test fails: G_diff first / last 4 steps 0.89 -> 0.97 (rises); the default (fill residual)
    # design 0.47 -> 0.34 (x 0.72) on the published-morphometry phantom.
    first, last = diffusion_loss_first_last(phantom_slices, tmp_path)
    assert last < 0.8 * first, (first, last)


def test_default_design_learns_the_segmentation(phantom_slices, tmp_path):
    # The denoiser's probe heads (1x1 convs on detached trunk features, --diffusion_heads
    # denoiser) did not learn the segmentation on the published-morphometry phantom: demo Dice
    # 0.002, G_dice_fine 0.91 -> 0.92 over 300 steps. The default segmenter of the image
    # estimate learns it (demo: G_dice_fine 0.92 -> 0.28, Dice 0.81). On these 4 slices,
    # 100 steps: segmenter 0.921 -> 0.89; probe heads 0.921 -> 0.912 (fail here).
    first, last = diffusion_loss_first_last(phantom_slices, tmp_path, steps=100, name="G_dice_fine")
    assert last < first - 0.02, (first, last)
