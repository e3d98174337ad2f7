"""DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler (test-only oracle)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from models.dpm_solver import DDIMSampler, DPMSolverMultistep, make_sampler
from models.noise_scheduler import DDPMScheduler

_DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}


def _oracle(
    schedule: str, prediction_type: str, spacing: str = "linspace", zero_snr: bool = False
) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=_DIFFUSERS_SCHEDULE[schedule],
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        timestep_spacing=spacing,
        rescale_betas_zero_snr=zero_snr,
    )


def _fake_model(x: torch.Tensor, t: int) -> torch.Tensor:
    # A smooth, timestep-dependent stand-in for a network.
    return 0.3 * torch.tanh(x) + 0.1 * torch.sin(x * (1 + t / 500.0))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10, 25])
def test_matches_diffusers_step_by_step(schedule, prediction_type, steps):
    ours = DPMSolverMultistep(
        DDPMScheduler(
            beta_schedule=schedule,
            prediction_type=prediction_type,
            clip_sample=False,
            timestep_spacing="linspace",
        )
    )
    ref = _oracle(schedule, prediction_type)
    _compare(ours, ref, steps)


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 16])
def test_matches_diffusers_trailing_zero_terminal_snr(steps):
    # The diffusion generator's schedule: trailing spacing from t = T-1, a_bar_{T-1} = 0.
    ours = DPMSolverMultistep(
        DDPMScheduler(
            prediction_type="v_prediction",
            clip_sample=False,
            timestep_spacing="trailing",
            rescale_zero_terminal_snr=True,
        )
    )
    ref = _oracle("linear", "v_prediction", spacing="trailing", zero_snr=True)
    # At t = T-1 diffusers converts v to x0 with a_bar = 2**-24 instead of 0, i.e. adds
    # 2**-12 x_T (|x_T| <= 4 here) to the exact x0 = -v that we use: 1e-3 bounds that.
    _compare(ours, ref, steps, atol=1e-3)


def _compare(
    ours: DPMSolverMultistep, ref: DPMSolverMultistepScheduler, steps: int, atol: float = 1e-5
) -> None:
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x_ref = x.clone()
    for t in ours.timesteps.tolist():
        x = ours.step(_fake_model(x, t), t, x).prev_sample
        x_ref = ref.step(_fake_model(x_ref, t), t, x_ref).prev_sample
        assert torch.allclose(x, x_ref, atol=atol, rtol=1e-5), (t, (x - x_ref).abs().max())


def test_last_step_returns_the_x0_estimate():
    solver = DPMSolverMultistep(DDPMScheduler(prediction_type="sample"))
    solver.set_timesteps(3)
    x = torch.randn(1, 1, 4, 4)
    target = torch.full_like(x, 0.25)
    for t in solver.timesteps.tolist():
        out = solver.step(target, t, x)
        x = out.prev_sample
    assert torch.allclose(x, target)


def test_step_order_is_checked():
    solver = DPMSolverMultistep(DDPMScheduler())
    solver.set_timesteps(4)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="expected timestep"):
        solver.step(x, 0, x)


def test_make_sampler():
    sched = DDPMScheduler()
    assert isinstance(make_sampler("ddim", sched, eta=0.5), DDIMSampler)
    assert isinstance(make_sampler("dpmsolver++", sched), DPMSolverMultistep)
    with pytest.raises(ValueError, match="--sampler"):
        make_sampler("euler", sched)
