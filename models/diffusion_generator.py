"""``--netG_type diffusion``: the generator that trains and samples the conditional U-Net.

:class:`DiffusionGenerator` reads its options, trains the U-Net of
:mod:`models.diffusion_unet` with the DDPM objective and samples with the DDIM inpainting loop
of :mod:`models.sampling`; it returns the seven outputs of
:class:`~models.generator_base.GeneratorOutput` in A geometry.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from models.diffusion_unet import DiffusionUNet, UNetOutput
from models.generator_base import (
    GENERATORS,
    Generator,
    GeneratorInput,
    GeneratorOutput,
    SampleOutput,
    TrainingOutput,
)
from models.noise_scheduler import BETA_SCHEDULES, PREDICTION_TYPES, DDPMScheduler
from models.sampling import DenoiserOutput, compose, ddim_inpaint
from util.geometry import band_px, scaled_px

#: Default of ``--num_inference_steps`` while training: validation samples with these steps.
VALIDATION_STEPS = 10


def crop_rows_for(img_size: int, crop_at_256: int) -> int:
    """Rows of the central crop the U-Net runs on, at ``img_size`` (0 = the whole slice).

    ``crop_at_256`` is quoted at 256 px, scaled like every pixel constant and rounded up to a
    multiple of 8; it must cover the band.
    """
    if crop_at_256 <= 0:
        return img_size
    rows = min(img_size, 8 * math.ceil(scaled_px(crop_at_256, img_size) / 8))
    if rows < band_px(img_size):
        raise ValueError(
            f"--diffusion_crop {crop_at_256} gives {rows} rows at --img_size {img_size}, "
            f"fewer than the {band_px(img_size)}-row band"
        )
    return rows


@GENERATORS.register("diffusion")
class DiffusionGenerator(Generator):
    """Conditional DDPM generator: trains with eps / v / x0 MSE, samples with DDIM inpainting.

    Args:
        img_size: slice size S (multiple of 8).
        num_train_timesteps, beta_schedule, prediction_type: see :class:`DDPMScheduler`.
        num_inference_steps, eta, num_samples: DDIM sampling (see :func:`ddim_inpaint`).
        snr_gamma: gamma of the Min-SNR weighting (Hang et al. 2023), see :meth:`training_forward`;
            0 disables it.
        crop_rows: the U-Net runs on the central ``crop_rows`` x S rows (band plus context);
            outside them its outputs are 0 (segmentations) and the input context (CT).
        cnum: base width of the U-Net.

    ``num_inference_steps`` is the default of :meth:`sample` (``default_steps``); the model passes
    ``--num_inference_steps`` per call. Precision (``--precision bf16``) is the model's
    autocast around training and :meth:`sample`; the scheduler math stays in fp32.
    """

    aux_loss_names = ("diff",)
    #: EMA of the weights matters for diffusion sampling quality (DDPM, Ho et al. 2020).
    default_ema_decay = 0.999

    def __init__(
        self,
        img_size: int = 256,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        num_inference_steps: int = 25,
        eta: float = 0.0,
        num_samples: int = 1,
        snr_gamma: float = 5.0,
        crop_rows: int | None = None,
        cnum: int = 32,
    ) -> None:
        super().__init__()
        if img_size % 8:
            raise ValueError(f"img_size must be a multiple of 8 for the U-Net, got {img_size}")
        crop_rows = img_size if crop_rows is None else int(crop_rows)
        if crop_rows % 8 or not band_px(img_size) <= crop_rows <= img_size:
            raise ValueError(
                f"crop_rows must be a multiple of 8 in [{band_px(img_size)}, {img_size}], "
                f"got {crop_rows}"
            )
        if snr_gamma < 0:
            raise ValueError(f"--snr_gamma must be >= 0, got {snr_gamma}")
        if num_inference_steps < 1 or num_samples < 1 or eta < 0:
            raise ValueError(
                "need num_inference_steps >= 1, --num_samples >= 1 and --eta >= 0, got "
                f"{num_inference_steps}, {num_samples}, {eta}"
            )
        self.img_size = img_size
        self.crop_rows = crop_rows
        self.default_steps = int(num_inference_steps)
        self.eta = float(eta)
        self.num_samples = int(num_samples)
        self.snr_gamma = float(snr_gamma)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
        )
        self.unet = DiffusionUNet(cnum=cnum)

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        g = parser.add_argument_group("diffusion generator")
        # fmt: off
        g.add_argument("--diffusion_timesteps", type=int, default=1000,
                       help="T, number of training diffusion steps")
        g.add_argument("--diffusion_beta_schedule", default="linear", choices=BETA_SCHEDULES,
                       help="linear betas 1e-4 .. 0.02 (DDPM) or squared cosine")
        g.add_argument("--prediction_type", default="epsilon", choices=PREDICTION_TYPES,
                       help="what the U-Net predicts: the noise, v, or x0")
        g.add_argument("--eta", type=float, default=0.0,
                       help="DDIM stochasticity: 0 deterministic, 1 DDPM-like")
        g.add_argument("--num_samples", type=int, default=1,
                       help="samples per slice at inference; > 1 gives mean and std maps")
        g.add_argument("--lambda_diff", type=float, default=1.0, help="weight of L_diff")
        g.add_argument("--snr_gamma", type=float, default=5.0,
                       help="Min-SNR gamma: weights L_diff (min(SNR, gamma) on the x0 scale) "
                            "and the image losses (min(SNR, gamma) / gamma); 0 = unweighted")
        g.add_argument("--diffusion_crop", type=int, default=96,
                       help="rows (at 256 px, scaled with --img_size) of the central crop the "
                            "U-Net sees: the band plus context; 0 = the whole slice")
        # fmt: on
        if is_train:
            # The adversarial term fights the denoising objective early in training, and a
            # DDPM's likelihood training already gives sharp samples: keep it a light touch.
            # Validation during training samples with fewer steps than the 25 of inference
            # (the model's --num_inference_steps), to keep it cheap.
            parser.set_defaults(lambda_GAN=0.1, num_inference_steps=VALIDATION_STEPS)
        return parser

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> DiffusionGenerator:
        return cls(
            img_size=opt.img_size,
            num_train_timesteps=opt.diffusion_timesteps,
            beta_schedule=opt.diffusion_beta_schedule,
            prediction_type=opt.prediction_type,
            eta=opt.eta,
            num_samples=opt.num_samples,
            snr_gamma=opt.snr_gamma,
            crop_rows=crop_rows_for(opt.img_size, opt.diffusion_crop),
        )

    # ------------------------------------------------------------------ helpers
    def crop_bounds(self, h: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of a slice of ``h`` rows that the U-Net sees (centred crop).

        Outside them the segmentation outputs are 0; restrict segmentation losses to them.
        """
        start = h // 2 - self.crop_rows // 2
        return start, start + self.crop_rows

    def _check_input(self, inp: GeneratorInput) -> None:
        x = inp.masked_ct
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[-2] != self.img_size:
            raise ValueError(f"masked_ct must be (B, 1, {self.img_size}, W), got {tuple(x.shape)}")
        r0, r1 = self.crop_bounds(x.shape[-2])
        if bool(inp.band_mask[..., :r0, :].any()) or bool(inp.band_mask[..., r1:, :].any()):
            raise ValueError(
                f"the band reaches outside the central {self.crop_rows} rows the U-Net sees; "
                "raise --diffusion_crop"
            )

    def _denoise(self, x_t: Tensor, t: Tensor, inp: GeneratorInput) -> UNetOutput:
        """Run the U-Net on the central crop and paste its outputs into full-size maps."""
        h = x_t.shape[-2]
        r0, r1 = self.crop_bounds(h)
        rows = slice(r0, r1)
        out = self.unet(
            x_t[..., rows, :],
            inp.masked_ct[..., rows, :],
            inp.band_mask[..., rows, :],
            inp.cam[..., rows, :],
            t,
            inp.slice_ratio,
        )
        if r0 == 0 and r1 == h:
            return out
        pad = (0, 0, r0, h - r1)  # zeros outside the crop; composition takes the context there
        return out._replace(
            model_output=F.pad(out.model_output, pad),
            x0_coarse=F.pad(out.x0_coarse, pad),
            coarse_seg=F.pad(out.coarse_seg, pad),
            fine_seg=F.pad(out.fine_seg, pad),
        )

    def _loss_weight(self, snr: Tensor) -> Tensor:
        """Min-SNR-gamma weight of the MSE in the parameterisation predicted (Hang et al. 2023).

        It equals ``min(SNR, gamma)`` on the x0-MSE scale: ``/ SNR`` for eps, ``/ (SNR + 1)``
        for v, unchanged for x0.
        """
        if self.snr_gamma == 0:
            return torch.ones_like(snr)
        clipped = snr.clamp(max=self.snr_gamma)
        kind = self.scheduler.prediction_type
        if kind == "epsilon":
            return clipped / snr
        if kind == "v_prediction":
            return clipped / (snr + 1)
        return clipped

    # ---------------------------------------------------------------- interface
    def training_forward(
        self, inp: GeneratorInput, target: Tensor, *, generator: torch.Generator | None = None
    ) -> TrainingOutput:
        """One DDPM training pass; ``generator`` (optional) seeds t and the noise.

        Steps: 1. t ~ U{0, T-1} per sample; 2. x_t = band of ``add_noise(target, eps, t)``
        with the clean context outside (what the sampler feeds the network too); 3. predict;
        4. L_diff = per-sample masked MSE over the band against eps / v / x0, Min-SNR weighted,
        averaged over the batch; 5. x0 estimates composed with the context and clamped:
        ``x_stage2`` from the full-resolution prediction, ``x_stage1`` from the half-resolution
        decoder's direct x0 head (upsampled), trained only by the image losses.

        ``x0_weight = min(SNR(t), gamma) / gamma`` (1 when gamma = 0): the x0 estimate at a
        noisy timestep is a blurry conditional mean whose L1 / GAN / Dice errors say little, and
        for eps prediction ``x0 = (x_t - sqrt(1 - a_bar) eps) / sqrt(a_bar)`` amplifies the
        gradient by ``1 / sqrt(a_bar)`` (up to ~160 at t = T-1); the weight, which decays like
        SNR, cancels that amplification. It is 1 for SNR >= gamma (t < 130 of 1000 for the
        linear schedule, t < 261 for cosine; mean 0.21 / 0.40 over uniform t). It is an absolute
        weight: average ``weight * loss`` over the batch rather than dividing by the weights' sum,
        which would restore full weight to a batch of only noisy timesteps.
        """
        self._check_input(inp)
        ctx, mask = inp.masked_ct, inp.band_mask.to(target.dtype)
        b = target.shape[0]
        dev = target.device
        # 1.
        gdev = generator.device if generator is not None else dev
        t = torch.randint(0, len(self.scheduler), (b,), generator=generator, device=gdev).to(dev)
        noise = torch.randn(target.shape, generator=generator, device=gdev, dtype=target.dtype)
        noise = noise.to(dev)
        # 2.
        x_t = compose(self.scheduler.add_noise(target, noise, t), ctx, mask)
        # 3.
        out = self._denoise(x_t, t, inp)
        # 4.
        kind = self.scheduler.prediction_type
        if kind == "epsilon":
            goal = noise
        elif kind == "v_prediction":
            goal = self.scheduler.get_velocity(target, noise, t)
        else:
            goal = target
        area = mask.sum(dim=(1, 2, 3)).clamp(min=1.0)
        mse = ((out.model_output.float() - goal.float()) ** 2 * mask).sum(dim=(1, 2, 3)) / area
        snr = self.scheduler.snr(t).to(dev)
        l_diff = (self._loss_weight(snr) * mse).mean()
        # 5.
        x0 = self.scheduler.predict_x0(out.model_output, t, x_t, clip=True)
        x_stage2 = compose(x0, ctx, mask)
        x_stage1 = compose(out.x0_coarse.clamp(-1.0, 1.0), ctx, mask)
        if self.snr_gamma > 0:
            x0_weight = snr.clamp(max=self.snr_gamma) / self.snr_gamma
        else:
            x0_weight = torch.ones_like(snr)
        outputs = GeneratorOutput(
            coarse_seg=out.coarse_seg,
            fine_seg=out.fine_seg,
            x_stage1=x_stage1,
            x_stage2=x_stage2,
            offset_flow=torch.zeros(b, 2, *target.shape[-2:], dtype=target.dtype, device=dev),
            pred1_h=out.pred1_h,
            pred2_h=out.pred2_h,
        )
        return TrainingOutput(outputs, {"diff": l_diff}, x0_weight.to(target.dtype))

    @torch.no_grad()
    def sample(
        self,
        inp: GeneratorInput,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """DDIM inpainting of the band with ``steps`` steps (default: ``default_steps``),
        see :func:`models.sampling.ddim_inpaint`. Under an outer autocast the U-Net runs in
        reduced precision and its outputs return to the sample's dtype for the scheduler."""
        self._check_input(inp)
        steps = self.default_steps if steps is None else int(steps)
        k = self.num_samples
        rep = GeneratorInput(
            masked_ct=inp.masked_ct.repeat(k, 1, 1, 1),
            band_mask=inp.band_mask.repeat(k, 1, 1, 1),
            cam=inp.cam.repeat(k, 1, 1, 1),
            slice_ratio=inp.slice_ratio.reshape(-1).repeat(k),
        )

        def denoiser(x_t: Tensor, t: Tensor) -> DenoiserOutput:
            o = self._denoise(x_t, t, rep)
            f = x_t.dtype  # back to the sample's dtype for the scheduler
            return DenoiserOutput(
                o.model_output.to(f), o.coarse_seg.to(f), o.fine_seg.to(f),
                o.pred1_h.to(f), o.pred2_h.to(f),
            )  # fmt: skip

        out = ddim_inpaint(
            denoiser,
            self.scheduler,
            inp.masked_ct,
            inp.band_mask,
            num_inference_steps=steps,
            eta=self.eta,
            num_samples=k,
            generator=generator,
        )
        return out._replace(steps=steps)
