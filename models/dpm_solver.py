"""Few-step samplers on our :class:`~models.noise_scheduler.DDPMScheduler`: DPM-Solver++(2M)
and DDIM behind one small interface, so that the inpainting loop does not care which runs.

DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", arXiv:2211.01095, Algorithm 2) integrates the diffusion ODE in
``lambda = log(alpha_t / sigma_t)`` with a second-order multistep formula on the *data*
prediction (x0), which is what makes it accurate in 5-20 steps. The numbers match diffusers'
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")`` with the same
``timestep_spacing`` (and ``rescale_betas_zero_snr``) as our scheduler (a test checks every
step against it; diffusers is test-only).

Notation (VP process): ``alpha_t = sqrt(a_bar_t)``, ``sigma_t = sqrt(1 - a_bar_t)``,
``lambda_t = log(alpha_t) - log(sigma_t)``; the last step goes to ``sigma = 0`` (x = x0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from models.noise_scheduler import DDPMScheduler, SchedulerOutput, spaced_timesteps

SAMPLERS = ("ddim", "dpmsolver++")


class DDIMSampler:
    """DDIM (Song et al. 2021, eq. 12) as a sampler: the scheduler's spacing, ``eta``
    stochasticity."""

    def __init__(self, scheduler: DDPMScheduler, eta: float = 0.0) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.scheduler = scheduler
        self.eta = float(eta)
        self.timesteps: Tensor = scheduler.timesteps

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None):
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self.timesteps = self.scheduler.timesteps

    def step(
        self,
        model_output: Tensor,
        t: int,
        sample: Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        return self.scheduler.ddim_step(model_output, t, sample, eta=self.eta, generator=generator)


class DPMSolverMultistep:
    """DPM-Solver++(2M) on the noise levels of a :class:`DDPMScheduler`.

    Args:
        scheduler: gives ``a_bar`` and converts eps / v / x0 outputs to x0 (its
            ``prediction_type``); x0 is clipped when the scheduler's ``clip_sample`` is set
            (diffusers' solver does not clip: compare with ``clip_sample=False``).

    Usage: :meth:`set_timesteps` once, then :meth:`step` for each timestep in
    :attr:`timesteps` in order (the solver remembers the previous x0 estimate).
    """

    def __init__(self, scheduler: DDPMScheduler) -> None:
        self.scheduler = scheduler
        self.timesteps: Tensor = torch.zeros(0, dtype=torch.int64)
        self.sigmas: np.ndarray = np.zeros(0)
        self._index = 0
        self._last_x0: Tensor | None = None

    def set_timesteps(
        self, num_inference_steps: int, device: torch.device | str | None = None
    ) -> None:
        """``n`` timesteps with the scheduler's ``timestep_spacing``
        (:func:`~models.noise_scheduler.spaced_timesteps`), and their noise levels
        ``sigma = sqrt((1 - a_bar) / a_bar)`` followed by 0. A zero-terminal-SNR schedule
        (a_bar_{T-1} = 0, infinite sigma) uses ``a_bar = 2**-24`` there, as diffusers does."""
        n = int(num_inference_steps)
        steps = spaced_timesteps(len(self.scheduler), n, self.scheduler.timestep_spacing).numpy()
        a_bar = self.scheduler.alphas_cumprod.double().numpy()[steps]
        a_bar = np.where(a_bar > 0, a_bar, 2.0**-24)
        self.sigmas = np.append(np.sqrt((1 - a_bar) / a_bar), 0.0)
        self.timesteps = torch.from_numpy(steps.copy()).to(device)
        self._index = 0
        self._last_x0 = None

    @staticmethod
    def _alpha_sigma_lambda(sigma: float) -> tuple[float, float, float]:
        # VP: alpha = 1 / sqrt(1 + sigma^2), sigma_t = sigma * alpha, lambda = -log(sigma).
        alpha = 1.0 / math.sqrt(sigma**2 + 1.0)
        lam = -math.log(sigma) if sigma > 0 else math.inf
        return alpha, sigma * alpha, lam

    def step(
        self,
        model_output: Tensor,
        t: int,
        sample: Tensor,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        """One solver step from ``timesteps[i]`` to the next level (``generator`` unused: the
        solver is deterministic). Returns ``(prev_sample, pred_original_sample)``."""
        i = self._index
        if i >= len(self.timesteps):
            raise ValueError("DPMSolverMultistep.step called more often than set_timesteps allows")
        if int(t) != int(self.timesteps[i]):
            raise ValueError(f"expected timestep {int(self.timesteps[i])} at step {i}, got {t}")
        x0 = self.scheduler.predict_x0(model_output, int(t), sample).to(torch.float64)
        x = sample.to(torch.float64)
        n = len(self.timesteps)
        alpha_t, sigma_t, lam_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s0, lam_s0 = self._alpha_sigma_lambda(self.sigmas[i])
        # The first step has no history, and the last one (to sigma = 0) is first order
        # (diffusers' lower_order_final with final_sigmas_type="zero").
        first_order = self._last_x0 is None or i == n - 1
        if math.isinf(lam_t):  # sigma_t = 0: x_t = x0 exactly
            prev = x0
        elif first_order:
            # DPM-Solver++ first order (= DDIM): x_t = sigma_t/sigma_s x_s - alpha_t (e^-h - 1) x0.
            h = lam_t - lam_s0
            prev = (sigma_t / sigma_s0) * x - alpha_t * math.expm1(-h) * x0
        else:
            # Algorithm 2 (2M, midpoint): D = x0_i + (x0_i - x0_{i-1}) / (2 r), r = h_{i-1} / h_i.
            _, _, lam_s1 = self._alpha_sigma_lambda(self.sigmas[i - 1])
            h, h0 = lam_t - lam_s0, lam_s0 - lam_s1
            d1 = (x0 - self._last_x0) * (h / h0)
            prev = (sigma_t / sigma_s0) * x - alpha_t * math.expm1(-h) * (x0 + 0.5 * d1)
        self._last_x0 = x0
        self._index += 1
        return SchedulerOutput(prev.to(sample.dtype), x0.to(sample.dtype))


def make_sampler(
    name: str, scheduler: DDPMScheduler, eta: float = 0.0
) -> DDIMSampler | DPMSolverMultistep:
    """``--sampler`` value -> a fresh sampler on ``scheduler`` (``eta`` is DDIM's only)."""
    if name == "ddim":
        return DDIMSampler(scheduler, eta)
    if name == "dpmsolver++":
        return DPMSolverMultistep(scheduler)
    raise ValueError(f"unknown --sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
