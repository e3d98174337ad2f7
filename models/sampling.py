"""Inpainting sampler loop: iterate the denoiser on the band, keep the known context clean.

The process is separate from the network (guided-diffusion style): :func:`inpaint` takes
the denoiser as a callable and a sampler of :mod:`models.dpm_solver` (DDIM or DPM-Solver++,
on a :class:`~models.noise_scheduler.DDPMScheduler`) as arguments,
and works on images in "A geometry" (band of rows to synthesise, ``band_mask = 1``; context
around it known).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from models.dpm_solver import DDIMSampler, DPMSolverMultistep
from models.generator_base import GeneratorOutput, SampleOutput


class DenoiserOutput(NamedTuple):
    """What the denoiser callable returns for a batch of N noisy slices.

    * ``model_output`` (N, 1, H, W): eps, v or x0 prediction (the scheduler's prediction_type).
    * ``coarse_seg``, ``fine_seg`` (N, 1, H, W) in [0, 1]: segmentation heads.
    * ``pred1_h``, ``pred2_h`` (N, 1) in [0, 1]: height heads, fraction of the band height.
    """

    model_output: Tensor
    coarse_seg: Tensor
    fine_seg: Tensor
    pred1_h: Tensor
    pred2_h: Tensor


#: ``model(x_t, t)``: x_t (N, 1, H, W), t (N,) int64 -> :class:`DenoiserOutput`.
Denoiser = Callable[[Tensor, Tensor], DenoiserOutput]
#: ``callback(step_index, t, x_prev, x0_composed)`` called after every step.
StepCallback = Callable[[int, int, Tensor, Tensor], None]


def compose(band: Tensor, context: Tensor, band_mask: Tensor) -> Tensor:
    """Band pixels from ``band``, everything else from ``context`` (all (N, C, H, W))."""
    return torch.where(band_mask > 0.5, band, context)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    # Draw on the generator's device so that a CPU generator can seed sampling on any device.
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


@torch.no_grad()
def inpaint(
    model: Denoiser,
    sampler: DDIMSampler | DPMSolverMultistep,
    context: Tensor,
    band_mask: Tensor,
    *,
    num_inference_steps: int = 4,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    to_image: Callable[[Tensor], Tensor] | None = None,
) -> SampleOutput:
    """Sample the band with ``sampler``, re-imposing the clean context after every step.

    The denoiser is trained on inputs whose known region holds the *clean* context (not a noised
    copy), so here too every x_t keeps the clean context outside the band.

    Args:
        model: the denoiser. With ``num_samples = K`` it is called on batches of ``K * B``
            slices ordered sample-major (row ``k * B + b`` is draw ``k`` of slice ``b``); a
            conditioning it closes over must be repeated the same way (``x.repeat(K, 1, 1, 1)``).
        sampler: :func:`models.dpm_solver.make_sampler`'s DDIM (with its ``eta``) or
            DPM-Solver++(2M); its ``set_timesteps`` is called here (the timesteps follow the
            scheduler's ``timestep_spacing``).
        context: (B, 1, H, W) masked CT in [-1, 1] (band content ignored).
        band_mask: (B, 1, H, W) in {0, 1}, 1 = band to synthesise.
        num_inference_steps: number of sampler steps (denoiser calls).
        num_samples: K draws per slice, run as one batch; outputs are their mean.
        generator: seeds the initial noise (and DDIM's step noise when ``eta > 0``).
        callback: optional progress hook, see :data:`StepCallback`.
        to_image: maps a (K * B, 1, H, W) diffusion-space slice (the band in the space the
            scheduler works in, e.g. a scaled residual) to image space; default identity.

    Returns:
        :class:`SampleOutput`. ``x_stage1`` is the composed x0 estimate at the middle step of the
        trajectory, ``x_stage2`` the final sample, segmentations and heights come from the last
        denoiser call, ``offset_flow`` is zeros. With K > 1: the mean over draws (context
        re-imposed exactly), ``std`` (B, 1, H, W) the per-pixel sample std of ``x_stage2`` (0
        outside the band) and ``height_std`` (B, 1) that of ``pred2_h``.
    """
    if context.dim() != 4 or context.shape[1] != 1:
        raise ValueError(f"context must be (B, 1, H, W), got {tuple(context.shape)}")
    if band_mask.shape != context.shape:
        raise ValueError(
            f"band_mask {tuple(band_mask.shape)} and context {tuple(context.shape)} differ"
        )
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    b = context.shape[0]
    k = int(num_samples)
    ctx = context.repeat(k, 1, 1, 1)
    mask = band_mask.to(context.dtype).repeat(k, 1, 1, 1)

    sampler.set_timesteps(num_inference_steps, device=context.device)
    timesteps = sampler.timesteps.tolist()
    mid = len(timesteps) // 2

    # 1. x_T: N(0, I) in the band, clean context outside.
    x = compose(_randn(tuple(ctx.shape), generator, ctx), ctx, mask)
    x_stage1 = x
    out: DenoiserOutput | None = None
    for i, t in enumerate(timesteps):
        t_batch = torch.full((ctx.shape[0],), t, dtype=torch.long, device=ctx.device)
        # 2. predict eps / v / x0 at (x_t, t).
        out = model(x, t_batch)
        # 3. one sampler step: x_{t_prev} and the (clipped) x0 estimate.
        step = sampler.step(out.model_output, t, x, generator=generator)
        x0 = compose(step.pred_original_sample, ctx, mask)
        if to_image is not None:
            x0 = to_image(x0)
        if i == mid:
            x_stage1 = x0
        # 4. Re-impose the known region: clean context, as in training.
        x = compose(step.prev_sample, ctx, mask)
        if callback is not None:
            callback(i, t, x, x0)
    assert out is not None  # at least one step ran (set_timesteps checks n >= 1)

    # The last step lands on a_bar = 1, so x is the x0 estimate; clamp for safety.
    x_stage2 = (x if to_image is None else to_image(x)).clamp(-1.0, 1.0)
    x_stage1 = x_stage1.clamp(-1.0, 1.0)
    h, w = context.shape[-2:]
    flow = torch.zeros(b, 2, h, w, dtype=context.dtype, device=context.device)

    def mean(v: Tensor) -> Tensor:
        return v.float().reshape(k, b, *v.shape[1:]).mean(0).to(context.dtype)

    outputs = GeneratorOutput(
        coarse_seg=mean(out.coarse_seg),
        fine_seg=mean(out.fine_seg),
        # The mean of identical context values can differ in the last bit: re-impose it.
        x_stage1=compose(mean(x_stage1), context, band_mask),
        x_stage2=compose(mean(x_stage2), context, band_mask),
        offset_flow=flow,
        pred1_h=mean(out.pred1_h),
        pred2_h=mean(out.pred2_h),
    )
    if k == 1:
        return SampleOutput(outputs)
    std = x_stage2.float().reshape(k, b, 1, h, w).std(0, correction=1)
    std = torch.where(band_mask > 0.5, std, torch.zeros_like(std)).to(context.dtype)
    h_std = out.pred2_h.float().reshape(k, b, -1).std(0, correction=1).to(context.dtype)
    return SampleOutput(outputs, std=std, height_std=h_std)
