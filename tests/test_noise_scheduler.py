"""DDPMScheduler against the diffusers oracle, plus its invariants."""

from __future__ import annotations

import pytest
import torch

from models.noise_scheduler import DDPMScheduler, SchedulerOutput

diffusers = pytest.importorskip("diffusers")

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
TOL = 1e-5


def _diffusers_schedule(name: str) -> str:
    return "squaredcos_cap_v2" if name == "cosine" else name


def _ours(schedule: str, prediction: str, clip: bool = True) -> DDPMScheduler:
    return DDPMScheduler(beta_schedule=schedule, prediction_type=prediction, clip_sample=clip)


def _ddpm_oracle(schedule: str, prediction: str, clip: bool = True):
    return diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=_diffusers_schedule(schedule),
        prediction_type=prediction,
        clip_sample=clip,
        variance_type="fixed_small",
    )


def _ddim_oracle(schedule: str, prediction: str, clip: bool = True):
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=_diffusers_schedule(schedule),
        prediction_type=prediction,
        clip_sample=clip,
        set_alpha_to_one=True,
        steps_offset=0,
    )


def _data(seed: int = 0, shape=(4, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    noise = torch.randn(shape, generator=g)
    out = torch.randn(shape, generator=g) * 0.7
    return x0, noise, out


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_add_noise_and_velocity_match_diffusers(schedule):
    ours, ref = _ours(schedule, "epsilon"), _ddpm_oracle(schedule, "epsilon")
    assert _max_diff(ours.alphas_cumprod, ref.alphas_cumprod) == 0.0
    x0, noise, _ = _data()
    t = torch.tensor([0, 1, 517, 999])
    assert _max_diff(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)) < TOL
    assert _max_diff(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t)) < TOL
    if schedule == "linear":
        # DDPM's end points (sec. 4), and a_bar decreasing to ~4e-5 at T - 1.
        assert float(ours.betas[0]) == pytest.approx(1e-4)
        assert float(ours.betas[-1]) == pytest.approx(0.02)
        assert float(ours.alphas_cumprod[-1]) == pytest.approx(4.04e-5, rel=0.01)
    else:
        assert float(ours.betas.max()) <= 0.999 + 1e-7
    assert bool((ours.alphas_cumprod[1:] < ours.alphas_cumprod[:-1]).all())


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("num_inference_steps", [None, 10])
def test_ddpm_step_matches_diffusers(schedule, prediction, num_inference_steps):
    ours, ref = _ours(schedule, prediction), _ddpm_oracle(schedule, prediction)
    if num_inference_steps is not None:
        ours.set_timesteps(num_inference_steps)
        ref.set_timesteps(num_inference_steps)
        steps = [int(t) for t in ref.timesteps]  # all of them, 0 (no noise) included
    else:
        steps = [999, 500, 37, 1, 0]
    x0, noise, out = _data(1)
    for t in steps:
        x_t = ours.add_noise(x0, noise, t)
        # Same seed -> same noise in both: mean and variance are both compared.
        got = ours.step(out, t, x_t, generator=torch.Generator().manual_seed(t))
        exp = ref.step(out, t, x_t, generator=torch.Generator().manual_seed(t))
        assert isinstance(got, SchedulerOutput)
        assert _max_diff(got.pred_original_sample, exp.pred_original_sample) < TOL, t
        assert _max_diff(got.prev_sample, exp.prev_sample) < TOL, t
    # The noise term alone: with zero noise the step is the posterior mean, so the difference
    # to a noisy step divided by the noise is the posterior std of DDPM eq. 7.
    t = 500
    x_t = ours.add_noise(x0, noise, t)
    mean = ours.step(out, t, x_t, variance_noise=torch.zeros_like(x_t)).prev_sample
    noisy = ours.step(out, t, x_t, variance_noise=torch.ones_like(x_t)).prev_sample
    a = ours.alphas_cumprod.double()
    t_prev = t - ours.step_ratio
    var = (1 - a[t_prev]) / (1 - a[t]) * (1 - a[t] / a[t_prev])
    assert _max_diff(noisy - mean, torch.full_like(mean, float(var.sqrt()))) < TOL


def test_ddpm_step_without_clipping_matches_diffusers():
    ours, ref = _ours("linear", "epsilon", clip=False), _ddpm_oracle("linear", "epsilon", False)
    x0, noise, out = _data(2)
    for t in (10, 300, 700):
        x_t = ours.add_noise(x0, noise, t)
        got = ours.step(out, t, x_t, generator=torch.Generator().manual_seed(3))
        exp = ref.step(out, t, x_t, generator=torch.Generator().manual_seed(3))
        # x0 is not clamped here, so compare relative to its magnitude.
        scale = float(exp.pred_original_sample.abs().max())
        assert _max_diff(got.pred_original_sample, exp.pred_original_sample) < TOL * scale
        assert _max_diff(got.prev_sample, exp.prev_sample) < TOL


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_ddim_step_matches_diffusers(schedule, prediction, eta):
    ours, ref = _ours(schedule, prediction), _ddim_oracle(schedule, prediction)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    x0, noise, out = _data(4)
    for t in ref.timesteps.tolist():
        x_t = ours.add_noise(x0, noise, t)
        got = ours.ddim_step(out, t, x_t, eta=eta, generator=torch.Generator().manual_seed(t))
        exp = ref.step(out, t, x_t, eta=eta, generator=torch.Generator().manual_seed(t))
        assert _max_diff(got.pred_original_sample, exp.pred_original_sample) < TOL, t
        assert _max_diff(got.prev_sample, exp.prev_sample) < TOL, t
    # The last step lands on a_bar = 1: the result is the clipped x0 estimate itself.
    last = ours.ddim_step(out, 0, x_t, eta=eta, generator=torch.Generator().manual_seed(0))
    assert _max_diff(last.prev_sample, last.pred_original_sample) < 1e-6


@pytest.mark.parametrize("n", [1, 3, 7, 25, 50, 999, 1000])
def test_set_timesteps_matches_diffusers_and_is_evenly_spaced(n):
    ours = _ours("linear", "epsilon")
    ours.set_timesteps(n)
    for ref in (_ddpm_oracle("linear", "epsilon"), _ddim_oracle("linear", "epsilon")):
        ref.set_timesteps(n)
        assert ours.timesteps.tolist() == ref.timesteps.tolist()
    ts = ours.timesteps
    assert ts.dtype == torch.int64 and len(ts) == n and int(ts[-1]) == 0
    if n > 1:
        gaps = ts[:-1] - ts[1:]
        assert bool((gaps == 1000 // n).all())  # strictly descending, even spacing


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_predict_x0_from_eps_inverts_add_noise(schedule):
    s = _ours(schedule, "epsilon")
    x0, noise, _ = _data(5, shape=(1000, 1, 4, 4))
    t = torch.arange(1000)
    # float64: exact at every timestep, even where sqrt(a_bar) ~ 1e-5 (cosine, t = 999).
    x0d, nd = x0.double(), noise.double()
    rec = s.predict_x0_from_eps(s.add_noise(x0d, nd, t), nd, t)
    assert rec.dtype == torch.float64
    assert _max_diff(rec, x0d) < 1e-9
    # float32: round-off in x_t is amplified by 1 / sqrt(a_bar); below t = 300 it stays < 1e-5.
    t32 = t[:300]
    rec32 = s.predict_x0_from_eps(s.add_noise(x0[:300], noise[:300], t32), noise[:300], t32)
    assert rec32.dtype == torch.float32
    assert _max_diff(rec32, x0[:300]) < TOL
    # Clamped to [-1, 1] for a wrong noise guess.
    assert float(s.predict_x0_from_eps(x0d, -10 * nd, t).abs().max()) <= 1.0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_predict_x0_recovers_x0_for_each_parameterisation(prediction):
    s = _ours("cosine", prediction)
    x0, noise, _ = _data(6)
    x0, noise = x0.double(), noise.double()
    t = torch.tensor([3, 200, 640, 980])
    x_t = s.add_noise(x0, noise, t)
    target = {"epsilon": noise, "v_prediction": s.get_velocity(x0, noise, t), "sample": x0}
    assert _max_diff(s.predict_x0(target[prediction], t, x_t), x0) < 1e-9


def test_snr_values():
    s = _ours("linear", "epsilon")
    a = s.alphas_cumprod
    t = torch.tensor([0, 10, 999])
    assert torch.allclose(s.snr(t), a[t] / (1 - a[t]))
    # a_bar_0 = 1 - 1e-4 is stored in float32 (as diffusers stores it): 1 - a_bar loses digits.
    assert float(s.snr(0)) == pytest.approx((1 - 1e-4) / 1e-4, rel=1e-3)
    assert bool((s.snr(torch.arange(1000)).diff() < 0).all())


def test_float64_and_bf16_inputs_follow_dtype_and_schedule_is_not_mutated():
    s = _ours("linear", "v_prediction")
    s.set_timesteps(10)
    before = {k: getattr(s, k).clone() for k in ("betas", "alphas", "alphas_cumprod")}
    x0, noise, out = _data(7)
    for dtype in (torch.float64, torch.bfloat16):
        x, n, o = x0.to(dtype), noise.to(dtype), out.to(dtype)
        t = torch.tensor([900, 500, 100, 0])
        x_t = s.add_noise(x, n, t)
        assert x_t.dtype == dtype
        assert s.predict_x0(o, t, x_t).dtype == dtype
        assert (
            s.step(o, t, x_t, generator=torch.Generator().manual_seed(0)).prev_sample.dtype == dtype
        )
        assert s.ddim_step(o, t, x_t, eta=0.5).prev_sample.dtype == dtype
    # bf16 results agree with the float32 computation to bf16 precision.
    t = torch.tensor([900, 500, 100, 0])
    ref = s.add_noise(x0, noise, t)
    assert _max_diff(s.add_noise(x0.bfloat16(), noise.bfloat16(), t), ref) < 0.05
    for k, v in before.items():
        assert getattr(s, k).dtype == torch.float32 and getattr(s, k).device.type == "cpu"
        assert torch.equal(getattr(s, k), v)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_batched_timesteps_match_scalar_calls(prediction):
    s = _ours("cosine", prediction)
    s.set_timesteps(20)
    x0, noise, out = _data(8)
    vnoise = torch.randn_like(x0, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([950, 400, 50, 0])
    x_t = s.add_noise(x0, noise, t)
    batched = {
        "add_noise": x_t,
        "x0": s.predict_x0(out, t, x_t),
        "step": s.step(out, t, x_t, variance_noise=vnoise).prev_sample,
        "ddim": s.ddim_step(out, t, x_t, eta=0.8, variance_noise=vnoise).prev_sample,
    }
    for i, ti in enumerate(t.tolist()):
        sl = slice(i, i + 1)
        xi = s.add_noise(x0[sl], noise[sl], ti)
        single = {
            "add_noise": xi,
            "x0": s.predict_x0(out[sl], ti, xi),
            "step": s.step(out[sl], ti, xi, variance_noise=vnoise[sl]).prev_sample,
            "ddim": s.ddim_step(out[sl], ti, xi, eta=0.8, variance_noise=vnoise[sl]).prev_sample,
        }
        for k in batched:
            assert _max_diff(batched[k][sl], single[k]) < 1e-6, (k, ti)
    # t = 0 gets no noise in the DDPM step, whatever the noise tensor holds.
    no_noise = s.step(out, t, x_t, variance_noise=torch.zeros_like(x0)).prev_sample
    assert torch.equal(batched["step"][3], no_noise[3])


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="beta_schedule.*linear, cosine"):
        DDPMScheduler(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="prediction_type.*epsilon"):
        DDPMScheduler(prediction_type="noise")
    s = DDPMScheduler()
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        s.ddim_step(x, 10, x)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        s.add_noise(x, x, 1000)
    with pytest.raises(ValueError, match="shape"):
        s.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)


def test_trailing_spacing_starts_at_T_minus_1_and_steps_to_the_next_timestep():
    s = DDPMScheduler(timestep_spacing="trailing")
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [999, 749, 499, 249]
    s.set_timesteps(16)  # 1000 / 16 is not an integer: prev must follow the list, not T // n
    ts = s.timesteps
    assert int(ts[0]) == 999 and len(ts) == 16
    assert s.prev_timestep(ts).tolist() == ts[1:].tolist() + [-1]
    # the last DDIM step lands on a_bar = 1: the result is the clipped x0 estimate
    x = torch.randn(2, 1, 4, 4)
    out = s.ddim_step(x, int(ts[-1]), x)
    assert torch.allclose(out.prev_sample, out.pred_original_sample)


def test_zero_terminal_snr_rescale():
    s = DDPMScheduler(prediction_type="v_prediction", rescale_zero_terminal_snr=True)
    ref = DDPMScheduler()
    assert float(s.alphas_cumprod[-1]) == 0.0
    assert abs(float(s.alphas_cumprod[0] - ref.alphas_cumprod[0])) < 1e-6
    assert bool((s.alphas_cumprod[1:] <= s.alphas_cumprod[:-1]).all())
    x0, noise = torch.rand(1, 1, 4, 4) * 2 - 1, torch.randn(1, 1, 4, 4)
    v = s.get_velocity(x0, noise, 999)
    x_t = s.add_noise(x0, noise, 999)
    assert torch.allclose(s.predict_x0(v, 999, x_t, clip=False), x0, atol=1e-5)
    with pytest.raises(ValueError, match="v_prediction or sample"):
        DDPMScheduler(rescale_zero_terminal_snr=True)
