"""DDPM noise schedule with ancestral DDPM and DDIM steps, shaped like diffusers' schedulers.

One class holds the schedule math once: the forward process (``add_noise``), conversions between
the three parameterisations of the network output (epsilon, v, x0), the ancestral DDPM posterior
step (Ho et al. 2020) and the DDIM step (Song et al. 2021). Values match diffusers'
``DDPMScheduler`` / ``DDIMScheduler`` (``timestep_spacing="leading"``, ``steps_offset=0``,
``variance_type="fixed_small"``, ``set_alpha_to_one=True``) to float32 round-off.

Notation: ``a_bar_t = prod_{s<=t} (1 - beta_s)`` (``alphas_cumprod``); images in [-1, 1].
Timesteps are integers in ``[0, num_train_timesteps)``, either a Python int / 0-d tensor shared
by the batch or a (B,) tensor with one timestep per sample.

The schedule tensors are float32 on the CPU, built exactly as diffusers builds them (so a network
trained with either scheduler sees the same noise levels); they are never modified after
construction. Each call gathers the coefficients it needs, computes them in float32 (float64 for
float64 samples) on the sample's device, and returns results in the sample's dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class SchedulerOutput(NamedTuple):
    """Result of one reverse step (unpacks as ``prev_sample, pred_original_sample``).

    * ``prev_sample``          (B, C, H, W): x_{t_prev}, the input of the next step.
    * ``pred_original_sample`` (B, C, H, W): the x0 estimate of this step (clipped if enabled).
    """

    prev_sample: Tensor
    pred_original_sample: Tensor


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Squared-cosine schedule (Nichol & Dhariwal 2021, eq. 17), diffusers ``squaredcos_cap_v2``.

    Returns (T,) float32 betas with ``beta_t = min(1 - a_bar(t+1) / a_bar(t), max_beta)`` where
    ``a_bar(u) = cos(((u / T) + s) / (1 + s) * pi / 2) ** 2``, ``s = 0.008``.
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(
            1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps),
            max_beta,
        )
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


#: How n inference timesteps are spread over [0, T - 1] (see :func:`spaced_timesteps`).
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(num_train_timesteps: int, n: int, spacing: str) -> Tensor:
    """The ``n`` inference timesteps (descending, int64) of every sampler: the one place the
    spacing is defined (DDIM and DPM-Solver++ both read it through the scheduler).

    * ``leading``: ``k * (T // n)``, e.g. T = 1000, n = 4: [750, 500, 250, 0] (never t = T-1);
    * ``trailing``: ``round(T - k T / n) - 1``: [999, 749, 499, 249] (Lin et al. 2024, sec. 3.3);
    * ``linspace``: ``round(linspace(0, T - 1, n + 1))[::-1][:-1]``: [999, 749, 500, 250]
      (diffusers' ``"linspace"``, the spacing of the DPM-Solver++ oracle test).
    """
    T = int(num_train_timesteps)
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps must be in [1, {T}], got {n}")
    if spacing == "trailing":
        return torch.round(torch.arange(T, 0, -T / n, dtype=torch.float64)).long() - 1
    if spacing == "linspace":
        return torch.from_numpy(np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy()).long()
    if spacing == "leading":
        return torch.arange(n - 1, -1, -1, dtype=torch.int64) * (T // n)
    raise ValueError(f"unknown timestep_spacing {spacing!r}; choose one of: {TIMESTEP_SPACINGS}")


def zero_terminal_snr_betas(betas: Tensor) -> Tensor:
    """Betas whose a_bar ends at exactly 0 (Lin et al. 2024, "Common diffusion noise schedules
    and sample steps are flawed", Algorithm 1): shift and scale sqrt(a_bar) so that its last
    value is 0 and its first unchanged."""
    a_bar_sqrt = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = a_bar_sqrt[0].clone(), a_bar_sqrt[-1].clone()
    a_bar_sqrt = (a_bar_sqrt - last) * first / (first - last)
    a_bar = a_bar_sqrt**2
    alphas = torch.cat([a_bar[:1], a_bar[1:] / a_bar[:-1]])
    return (1.0 - alphas).float()


class DDPMScheduler:
    """Noise schedule for DDPM training and DDPM / DDIM sampling.

    Args:
        num_train_timesteps: T, number of diffusion steps the network is trained on.
        beta_schedule: ``"linear"`` (``beta_start`` .. ``beta_end``, DDPM) or ``"cosine"``
            (squared cosine, betas capped at 0.999).
        beta_start, beta_end: end points of the linear schedule.
        prediction_type: what the network predicts: ``"epsilon"`` (the noise), ``"v_prediction"``
            (v = sqrt(a_bar) eps - sqrt(1 - a_bar) x0, Salimans & Ho 2022) or ``"sample"`` (x0).
        clip_sample: clamp the predicted x0 to ``[-clip_sample_range, clip_sample_range]`` in
            :meth:`predict_x0`, :meth:`step` and :meth:`ddim_step`.
        clip_sample_range: see ``clip_sample``.
        timestep_spacing: ``"leading"`` (``k * T // n``: never visits t = T - 1, so the first
            DDIM step gets pure noise at a timestep whose training inputs still hold signal) or
            ``"trailing"`` (``T - 1 - k * T / n``: starts at t = T - 1; Lin et al. 2024, sec. 3.3)
            or ``"linspace"``; see :func:`spaced_timesteps`. Both samplers of
            :mod:`models.dpm_solver` use it.
        rescale_zero_terminal_snr: rescale the betas so that a_bar_{T-1} = 0 (Lin et al. 2024,
            Alg. 1): training at t = T - 1 then sees pure noise, as sampling does. Needs
            ``v_prediction`` or ``sample`` (eps cannot give x0 at SNR 0).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_zero_terminal_snr: bool = False,
    ) -> None:
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(
                f"unknown beta_schedule {beta_schedule!r}; "
                f"choose one of: {', '.join(BETA_SCHEDULES)}"
            )
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; "
                f"choose one of: {', '.join(PREDICTION_TYPES)}"
            )
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"unknown timestep_spacing {timestep_spacing!r}; "
                f"choose one of: {', '.join(TIMESTEP_SPACINGS)}"
            )
        if rescale_zero_terminal_snr and prediction_type == "epsilon":
            raise ValueError(
                "rescale_zero_terminal_snr needs prediction_type v_prediction or sample"
            )
        self.timestep_spacing = timestep_spacing
        self.rescale_zero_terminal_snr = bool(rescale_zero_terminal_snr)
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_schedule = beta_schedule
        self.prediction_type = prediction_type
        self.clip_sample = bool(clip_sample)
        self.clip_sample_range = float(clip_sample_range)

        # 1. betas (DDPM sec. 4: linear 1e-4 .. 0.02 for T = 1000), built as diffusers does.
        if beta_schedule == "linear":
            betas = torch.linspace(
                beta_start, beta_end, self.num_train_timesteps, dtype=torch.float32
            )
        else:
            betas = cosine_betas(self.num_train_timesteps)
        if self.rescale_zero_terminal_snr:
            betas = zero_terminal_snr_betas(betas)
        self.betas: Tensor = betas
        # 2. a_t = 1 - beta_t and a_bar_t = prod_{s <= t} a_s (DDPM eq. 4).
        self.alphas: Tensor = 1.0 - betas
        self.alphas_cumprod: Tensor = torch.cumprod(self.alphas, dim=0)

        # Inference timesteps, set by set_timesteps (descending).
        self.num_inference_steps: int | None = None
        self.timesteps: Tensor = torch.arange(self.num_train_timesteps - 1, -1, -1)

    # ------------------------------------------------------------------ helpers
    def _timesteps(self, t: int | Tensor, x: Tensor) -> Tensor:
        """``t`` as an int64 tensor on ``x``'s device, shape () or (B,), range-checked."""
        t = torch.as_tensor(t, device=x.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        t = t.long()
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(
                f"timesteps must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}"
            )
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t}")
        return t

    @staticmethod
    def _compute_dtype(x: Tensor) -> torch.dtype:
        # float64 samples keep float64; everything else (float32, bf16, fp16) computes in float32.
        return torch.float64 if x.dtype == torch.float64 else torch.float32

    def _a_bar(self, t: Tensor, x: Tensor) -> Tensor:
        """a_bar at ``t`` (index -1 or below means a_bar = 1), broadcastable against ``x``."""
        table = self.alphas_cumprod.to(device=x.device, dtype=self._compute_dtype(x))
        a = torch.where(
            t >= 0, table[t.clamp(min=0)], torch.ones((), dtype=table.dtype, device=x.device)
        )
        return a.reshape(a.shape + (1,) * (x.dim() - a.dim())) if a.dim() else a

    def _clip(self, x0: Tensor) -> Tensor:
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0

    @property
    def step_ratio(self) -> int:
        """Distance between consecutive inference timesteps (1 before :meth:`set_timesteps`)."""
        if self.num_inference_steps is None:
            return 1
        return self.num_train_timesteps // self.num_inference_steps

    def prev_timestep(self, t: Tensor) -> Tensor:
        """The inference timestep after ``t`` (-1 after the last one); needs set_timesteps."""
        table = getattr(self, "_prev_table", None)
        if table is None:
            return t - self.step_ratio
        return table.to(t.device)[t]

    # ------------------------------------------------------------- forward process
    def add_noise(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x0) (DDPM eq. 4): ``sqrt(a_bar_t) x0 + sqrt(1 - a_bar_t) noise``.

        Args:
            x0: (B, C, H, W) clean sample in [-1, 1].
            noise: same shape, N(0, 1).
            t: int or (B,) integer timesteps.
        Returns:
            (B, C, H, W) x_t in the dtype of ``x0``.
        """
        t = self._timesteps(t, x0)
        a = self._a_bar(t, x0)
        cd = self._compute_dtype(x0)
        out = a.sqrt() * x0.to(cd) + (1 - a).sqrt() * noise.to(cd)
        return out.to(x0.dtype)

    def get_velocity(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        """v target (Salimans & Ho 2022, sec. 4): ``sqrt(a_bar_t) noise - sqrt(1 - a_bar_t) x0``."""
        t = self._timesteps(t, x0)
        a = self._a_bar(t, x0)
        cd = self._compute_dtype(x0)
        return (a.sqrt() * noise.to(cd) - (1 - a).sqrt() * x0.to(cd)).to(x0.dtype)

    def snr(self, t: int | Tensor) -> Tensor:
        """Signal-to-noise ratio ``a_bar_t / (1 - a_bar_t)`` (float32, shape of ``t``, CPU)."""
        t = torch.as_tensor(t).long().cpu()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps}), got {t}")
        a = self.alphas_cumprod[t]
        return a / (1 - a)

    # --------------------------------------------------------- output conversions
    def predict_x0_from_eps(self, x_t: Tensor, eps: Tensor, t: int | Tensor) -> Tensor:
        """x0 from predicted noise (DDPM eq. 15), clamped to [-1, 1].

        ``x0 = (x_t - sqrt(1 - a_bar_t) eps) / sqrt(a_bar_t)``; shapes (B, C, H, W).
        """
        t = self._timesteps(t, x_t)
        a = self._a_bar(t, x_t)
        cd = self._compute_dtype(x_t)
        x0 = (x_t.to(cd) - (1 - a).sqrt() * eps.to(cd)) / a.sqrt()
        return x0.clamp(-1.0, 1.0).to(x_t.dtype)

    def _x0_and_eps(self, model_output: Tensor, a: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        """Unclipped (x0, eps) implied by the network output, in the compute dtype."""
        m = model_output.to(a.dtype)
        x = x_t.to(a.dtype)
        if self.prediction_type == "epsilon":
            # DDPM eq. 15 inverted for x0.
            return (x - (1 - a).sqrt() * m) / a.sqrt(), m
        if self.prediction_type == "v_prediction":
            # v = sqrt(a) eps - sqrt(1-a) x0 and x_t = sqrt(a) x0 + sqrt(1-a) eps give
            # x0 = sqrt(a) x_t - sqrt(1-a) v and eps = sqrt(a) v + sqrt(1-a) x_t.
            return a.sqrt() * x - (1 - a).sqrt() * m, a.sqrt() * m + (1 - a).sqrt() * x
        # "sample": the network predicts x0 directly.
        return m, (x - a.sqrt() * m) / (1 - a).sqrt()

    def predict_x0(
        self, model_output: Tensor, t: int | Tensor, x_t: Tensor, clip: bool | None = None
    ) -> Tensor:
        """x0 estimate from the network output for the configured ``prediction_type``.

        Args:
            model_output: (B, C, H, W) eps, v or x0 prediction.
            t: int or (B,) integer timesteps.
            x_t: (B, C, H, W) the noisy input the network saw.
            clip: clamp to ``clip_sample_range`` (default: the scheduler's ``clip_sample``).
        Returns:
            (B, C, H, W) x0 estimate in the dtype of ``x_t``.
        """
        t = self._timesteps(t, x_t)
        x0, _ = self._x0_and_eps(model_output, self._a_bar(t, x_t), x_t)
        if self.clip_sample if clip is None else clip:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0.to(x_t.dtype)

    # ------------------------------------------------------------------ sampling
    def set_timesteps(
        self, num_inference_steps: int, device: torch.device | str | None = None
    ) -> None:
        """Choose ``num_inference_steps`` timesteps with the scheduler's ``timestep_spacing``
        (:func:`spaced_timesteps`). Sets ``self.timesteps`` (int64, on ``device``)."""
        n = int(num_inference_steps)
        ts = spaced_timesteps(self.num_train_timesteps, n, self.timestep_spacing)
        self.num_inference_steps = n
        T = self.num_train_timesteps
        self.timesteps = ts.to(device)
        # t -> the next (smaller) inference timestep, -1 after the last (a_bar = 1).
        prev = torch.arange(T, dtype=torch.int64) - T // n
        prev[ts] = torch.cat([ts[1:], torch.tensor([-1])])
        self._prev_table = prev

    def _noise(
        self, like: Tensor, generator: torch.Generator | None, variance_noise: Tensor | None
    ) -> Tensor:
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise.shape != like.shape:
                raise ValueError(
                    f"variance_noise has shape {tuple(variance_noise.shape)}, "
                    f"expected {tuple(like.shape)}"
                )
            return variance_noise
        # Draw on the generator's device (a CPU generator can seed CUDA sampling), then move.
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(
            like.device
        )

    def step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        x_t: Tensor,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
    ) -> SchedulerOutput:
        """One ancestral DDPM step x_t -> x_{t_prev} (posterior q(x_{t_prev} | x_t, x0)).

        ``t_prev = t - step_ratio`` (``t - 1`` before :meth:`set_timesteps`). The variance is
        DDPM's "fixed_small" posterior variance; no noise is added where ``t == 0``.

        Args:
            model_output: (B, C, H, W) network output (see ``prediction_type``).
            t: int or (B,) integer timesteps.
            x_t: (B, C, H, W) current sample.
            generator: seeds the noise (drawn as ``torch.randn(x_t.shape, generator=...)``).
            variance_noise: (B, C, H, W) N(0, 1) noise to use instead of drawing it.
        """
        t = self._timesteps(t, x_t)
        # 1. alphas and betas of the (possibly strided) step t -> t_prev.
        a_t = self._a_bar(t, x_t)
        a_prev = self._a_bar(self.prev_timestep(t), x_t)
        beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        # 2. predicted x0 (DDPM eq. 15), 3. clipped.
        x0 = self._clip(self._x0_and_eps(model_output, a_t, x_t)[0])
        # 4. posterior mean coefficients (DDPM eq. 7):
        #    mu = sqrt(a_prev) beta_t / (1 - a_t) x0 + sqrt(alpha_t) (1 - a_prev) / (1 - a_t) x_t.
        mean = (a_prev.sqrt() * beta_t / beta_prod_t) * x0 + (
            alpha_t.sqrt() * beta_prod_prev / beta_prod_t
        ) * x_t.to(a_t.dtype)
        # 5. posterior variance beta_tilde = (1 - a_prev) / (1 - a_t) beta_t (DDPM eq. 7,
        #    "fixed_small"), floored at 1e-20 as diffusers does; 6. add noise where t > 0.
        if bool((t > 0).any()):
            var = (beta_prod_prev / beta_prod_t * beta_t).clamp(min=1e-20)
            noise = self._noise(x_t, generator, variance_noise).to(a_t.dtype)
            has_noise = (t > 0).to(a_t.dtype)
            has_noise = has_noise.reshape(has_noise.shape + (1,) * (x_t.dim() - has_noise.dim()))
            mean = mean + has_noise * var.sqrt() * noise
        return SchedulerOutput(mean.to(x_t.dtype), x0.to(x_t.dtype))

    def ddim_step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        x_t: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
    ) -> SchedulerOutput:
        """One DDIM step x_t -> x_{t_prev} with ``t_prev = t - T // num_inference_steps``.

        Requires :meth:`set_timesteps`. At the last step (``t_prev < 0``) a_bar_prev = 1, so with
        any ``eta`` the result is the (clipped) x0 estimate. ``eta = 0`` is deterministic DDIM,
        ``eta = 1`` has DDPM's posterior variance. Returns ``(prev_sample, pred_original_sample)``;
        use ``.prev_sample`` for x_{t_prev}.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before ddim_step")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        t = self._timesteps(t, x_t)
        # 1. a_bar_t and a_bar_{t_prev} (a_bar = 1 before the first timestep: set_alpha_to_one).
        a_t = self._a_bar(t, x_t)
        a_prev = self._a_bar(self.prev_timestep(t), x_t)
        # 2. predicted x0 "f_theta(x_t)" and eps (DDIM eq. 9 / 12), x0 clipped.
        x0, eps = self._x0_and_eps(model_output, a_t, x_t)
        x0 = self._clip(x0)
        # 3. sigma_t(eta) = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev) (DDIM eq. 16).
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        # 4. x_{t_prev} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z (DDIM eq. 12).
        prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            prev = prev + sigma * self._noise(x_t, generator, variance_noise).to(a_t.dtype)
        return SchedulerOutput(prev.to(x_t.dtype), x0.to(x_t.dtype))

    def __len__(self) -> int:
        return self.num_train_timesteps

    def __repr__(self) -> str:
        return (
            f"DDPMScheduler(num_train_timesteps={self.num_train_timesteps}, "
            f"beta_schedule={self.beta_schedule!r}, prediction_type={self.prediction_type!r}, "
            f"clip_sample={self.clip_sample}, clip_sample_range={self.clip_sample_range})"
        )
