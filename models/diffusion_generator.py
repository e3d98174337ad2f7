"""``--netG_type diffusion``: the generator that trains and samples the conditional U-Net.

:class:`DiffusionGenerator` reads its options, trains the U-Net of
:mod:`models.diffusion_unet` with the diffusion objective on the band's residual to a
deterministic mean (:mod:`models.diffusion_residual`) and samples with the inpainting loop of
:mod:`models.sampling` and a sampler of :mod:`models.dpm_solver`; it returns the seven outputs
of :class:`~models.generator_base.GeneratorOutput` in A geometry.

Design and its measurements: docs/BENCHMARKS.md ("Diffusion design"), issue 12.
"""

from __future__ import annotations

import argparse
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from models.diffusion_options import HEAD_MODES, WEIGHTINGS, add_diffusion_options, crop_rows_for
from models.diffusion_residual import RESIDUAL_MODES, Stage1Net, fill_mean
from models.diffusion_unet import DiffusionUNet, UNetOutput
from models.dpm_solver import SAMPLERS, make_sampler
from models.generator_base import (
    GENERATORS,
    Generator,
    GeneratorInput,
    GeneratorOutput,
    SampleOutput,
    TrainingOutput,
)
from models.noise_scheduler import DDPMScheduler
from models.sampling import DenoiserOutput, compose, inpaint
from util.geometry import band_px


@GENERATORS.register("diffusion")
class DiffusionGenerator(Generator):
    """Conditional diffusion generator: residual diffusion on a deterministic band mean.

    Args:
        img_size: slice size S (multiple of 8).
        num_train_timesteps, beta_schedule, prediction_type, timestep_spacing: see
            :class:`DDPMScheduler`; ``zero_terminal_snr`` rescales the betas to a_bar_{T-1} = 0
            (Lin et al. 2024; not with eps prediction).
        num_inference_steps: default steps of :meth:`sample` (``default_steps``).
        sampler: ``"ddim"`` or ``"dpmsolver++"`` (:func:`models.dpm_solver.make_sampler`);
            ``eta`` is DDIM's stochasticity; ``num_samples`` draws per slice.
        snr_gamma, weighting: L_diff weight on the x0 scale, ``min(SNR, gamma)`` (Min-SNR, Hang
            et al. 2023) or ``min(SNR, gamma) + 1`` (``"minsnr1"``); gamma 0 = unweighted.
        residual, residual_scale: the diffusion runs on ``(x0 - mu) / residual_scale`` in the
            band, ``mu`` from :mod:`models.diffusion_residual` (``none`` | ``fill`` | ``stage1``).
        stage1_cnum: width of the stage-1 network (``residual="stage1"``).
        image_grad: ``"both"``: the shared image losses see both x0 estimates; ``"stage1"``:
            the full-resolution x0 of the denoiser is detached from them.
        head_grad_scale: gradient the denoiser's auxiliary heads send into its trunk (0 =
            probes on detached features); irrelevant with ``residual="stage1"``, where the
            heads' outputs come from the stage-1 network.
        heads: where the segmentations and heights come from (``residual`` fill / none):
            ``"segmenter"``, a deterministic :class:`Stage1Net` of width ``stage1_cnum`` that
            reads the image estimate (in training: the denoiser's detached x0; in sampling: the
            sample), trained by the shared Dice / edge / height losses; ``"denoiser"``, the
            denoiser's own heads (at sampling: one more call at t = 0 on the sample).
        crop_rows: the U-Nets run on the central ``crop_rows`` x S rows (band plus context);
            outside them the segmentations are 0 and the CT is the input context.
        cnum: base width of the denoiser U-Net.

    These constructor defaults are the one place of every default: the argparse defaults of
    :meth:`modify_commandline_options` are read from this signature. With
    ``residual="stage1"`` the seven outputs are: ``coarse_seg``, ``fine_seg``, ``pred1_h``,
    ``pred2_h`` from stage 1; ``x_stage1`` the stage-1 mean (in training: its half-resolution
    estimate), ``x_stage2`` the diffusion sample (in training: the stage-1 mean, so that the
    shared L1 and GAN train stage 1; the denoiser learns from L_diff only).
    """

    aux_loss_names = ("diff",)
    #: EMA of the weights matters for diffusion sampling quality (DDPM, Ho et al. 2020).
    default_ema_decay = 0.999

    def __init__(
        self,
        img_size: int = 256,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        prediction_type: str = "v_prediction",
        timestep_spacing: str = "trailing",
        zero_terminal_snr: bool = True,
        num_inference_steps: int = 4,
        sampler: str = "dpmsolver++",
        eta: float = 0.0,
        num_samples: int = 1,
        snr_gamma: float = 5.0,
        weighting: str = "minsnr1",
        residual: str = "fill",
        residual_scale: float = 0.1,
        stage1_cnum: int = 16,
        image_grad: str = "stage1",
        head_grad_scale: float = 0.0,
        heads: str = "segmenter",
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
        if snr_gamma < 0 or residual_scale <= 0:
            raise ValueError(
                f"need --snr_gamma >= 0 and --residual_scale > 0, got {snr_gamma}, {residual_scale}"
            )
        if num_inference_steps < 1 or num_samples < 1 or eta < 0:
            raise ValueError(
                "need num_inference_steps >= 1, --num_samples >= 1 and --eta >= 0, got "
                f"{num_inference_steps}, {num_samples}, {eta}"
            )
        for name, value, allowed in (
            ("--sampler", sampler, SAMPLERS),
            ("--diffusion_weighting", weighting, WEIGHTINGS),
            ("--diffusion_residual", residual, RESIDUAL_MODES),
            ("--image_grad", image_grad, ("both", "stage1")),
            ("--diffusion_heads", heads, HEAD_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")
        self.img_size = img_size
        self.crop_rows = crop_rows
        self.default_steps = int(num_inference_steps)
        self.sampler_name = sampler
        self.eta = float(eta)
        self.num_samples = int(num_samples)
        self.snr_gamma = float(snr_gamma)
        self.weighting = weighting
        self.residual = residual
        self.residual_scale = float(residual_scale) if residual != "none" else 1.0
        self.image_grad = image_grad
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            prediction_type=prediction_type,
            timestep_spacing=timestep_spacing,
            rescale_zero_terminal_snr=zero_terminal_snr,
            # In residual space |z| <= 2 / scale; the image-space x0 is clamped to [-1, 1].
            clip_sample_range=1.0 / self.residual_scale,
        )
        self.unet = DiffusionUNet(cnum=cnum, head_grad_scale=head_grad_scale)
        self.stage1 = Stage1Net(stage1_cnum) if residual == "stage1" else None
        use_segmenter = heads == "segmenter" and self.stage1 is None
        self.segmenter = Stage1Net(stage1_cnum) if use_segmenter else None
        #: diagnostics of the last training_forward (detached, on the CPU): t, per-sample MSE
        #: in the predicted parameterisation ("mse") and of the image-space x0 ("x0_mse").
        self.last_stats: dict[str, Tensor] = {}

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        return add_diffusion_options(parser, _constructor_defaults(), is_train)

    @classmethod
    def from_opt(cls, opt: argparse.Namespace) -> DiffusionGenerator:
        if opt.zero_terminal_snr and opt.prediction_type == "epsilon":
            raise ValueError(
                "--prediction_type epsilon cannot predict x0 at SNR 0: add --no-zero_terminal_snr"
            )
        return cls(
            img_size=opt.img_size,
            num_train_timesteps=opt.diffusion_timesteps,
            beta_schedule=opt.diffusion_beta_schedule,
            prediction_type=opt.prediction_type,
            timestep_spacing=opt.timestep_spacing,
            zero_terminal_snr=opt.zero_terminal_snr,
            sampler=opt.sampler,
            eta=opt.eta,
            num_samples=opt.num_samples,
            snr_gamma=opt.snr_gamma,
            weighting=opt.diffusion_weighting,
            residual=opt.diffusion_residual,
            residual_scale=opt.residual_scale,
            stage1_cnum=opt.stage1_cnum,
            image_grad=opt.image_grad,
            head_grad_scale=opt.head_grad_scale,
            heads=opt.diffusion_heads,
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

    def _denoise(
        self,
        x_t: Tensor,
        t: Tensor | None,
        inp: GeneratorInput,
        context: Tensor | None = None,
        net: Stage1Net | None = None,
    ) -> UNetOutput:
        """Run the denoiser, or ``net`` (the segmenter; stage 1 when ``t`` is None) at ``t`` (None:
        0), on the central crop and paste the outputs into full-size maps. ``context``: the
        conditioning CT channel (default ``inp.masked_ct``)."""
        h = x_t.shape[-2]
        r0, r1 = self.crop_bounds(h)
        rows = slice(r0, r1)
        ctx = inp.masked_ct if context is None else context
        args = (x_t[..., rows, :], ctx[..., rows, :], inp.band_mask[..., rows, :])
        if net is None and t is None:
            net = self.stage1
        if net is not None:
            out = net(*args, inp.cam[..., rows, :], inp.slice_ratio, t)
        else:
            out = self.unet(*args, inp.cam[..., rows, :], t, inp.slice_ratio)
        if r0 == 0 and r1 == h:
            return out
        pad = (0, 0, r0, h - r1)  # zeros outside the crop; composition takes the context there
        return out._replace(
            model_output=F.pad(out.model_output, pad),
            x0_coarse=F.pad(out.x0_coarse, pad),
            coarse_seg=F.pad(out.coarse_seg, pad),
            fine_seg=F.pad(out.fine_seg, pad),
        )

    def _mean(self, inp: GeneratorInput) -> tuple[Tensor, UNetOutput | None]:
        """The band mean mu the diffusion is a residual to (composed with the context; zeros in
        the band for ``residual="none"``), and the stage-1 outputs (``residual="stage1"``)."""
        ctx, mask = inp.masked_ct, inp.band_mask.to(inp.masked_ct.dtype)
        if self.residual == "none":
            return compose(torch.zeros_like(ctx), ctx, mask), None
        fill = compose(fill_mean(ctx), ctx, mask)
        if self.residual == "fill":
            return fill, None
        s1 = self._denoise(fill, None, inp)
        return compose(fill + s1.model_output.to(ctx.dtype), ctx, mask), s1

    def _to_z(self, x: Tensor, mu: Tensor, ctx: Tensor, mask: Tensor) -> Tensor:
        """Image -> diffusion space: band ``(x - mu) / scale``, context unchanged."""
        return compose((x - mu) / self.residual_scale, ctx, mask)

    def _to_image(self, z: Tensor, mu: Tensor, ctx: Tensor, mask: Tensor) -> Tensor:
        return compose(mu + self.residual_scale * z, ctx, mask)

    def _denoiser_context(self, inp: GeneratorInput, mu: Tensor) -> Tensor:
        """Conditioning CT channel of the denoiser: with a learned mean (stage 1), the context
        with mu in the band, so that the denoiser sees what it refines."""
        return mu.detach() if self.residual == "stage1" else inp.masked_ct

    def _loss_weight(self, snr: Tensor) -> Tensor:
        """L_diff weight in the parameterisation predicted: ``min(SNR, gamma)`` (+ 1 for
        ``"minsnr1"``) on the x0-MSE scale: ``/ SNR`` for eps, ``/ (SNR + 1)`` for v."""
        if self.snr_gamma == 0:
            return torch.ones_like(snr)
        clipped = snr.clamp(max=self.snr_gamma)
        if self.weighting == "minsnr1":
            clipped = clipped + 1.0
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
        """One training pass; ``generator`` (optional) seeds t and the noise.

        1. t ~ U{0, T-1} per sample; 2. mu (stage 1 / fill / 0) and x_t = the band of
        ``add_noise(z0, eps, t)`` with ``z0 = (target - mu.detach()) / scale`` and the clean
        context outside (what the sampler feeds the network too); 3. predict; 4. L_diff =
        per-sample masked MSE over the band against eps / v / z0, weighted by
        :meth:`_loss_weight`, averaged over the batch; 5. the outputs (see the class doc).

        ``x0_weight`` (per sample, for the shared image losses): 1 with stage 1 (deterministic);
        otherwise ``min(SNR(t), gamma) / gamma`` (1 when gamma = 0), since the denoiser's x0
        at a noisy timestep is a blurry conditional mean whose L1 / GAN / Dice errors say little.
        """
        self._check_input(inp)
        ctx, mask = inp.masked_ct, inp.band_mask.to(target.dtype)
        b, dev = target.shape[0], target.device
        # 1.
        gdev = generator.device if generator is not None else dev
        t = torch.randint(0, len(self.scheduler), (b,), generator=generator, device=gdev).to(dev)
        noise = torch.randn(target.shape, generator=generator, device=gdev, dtype=target.dtype)
        noise = noise.to(dev)
        # 2.
        mu, s1 = self._mean(inp)
        mu_d = mu.detach()
        z0 = self._to_z(target, mu_d, ctx, mask)
        x_t = compose(self.scheduler.add_noise(z0, noise, t), ctx, mask)
        # 3.
        out = self._denoise(x_t, t, inp, self._denoiser_context(inp, mu))
        # 4.
        kind = self.scheduler.prediction_type
        if kind == "epsilon":
            goal = noise
        elif kind == "v_prediction":
            goal = self.scheduler.get_velocity(z0, noise, t)
        else:
            goal = z0
        area = mask.sum(dim=(1, 2, 3)).clamp(min=1.0)
        mse = ((out.model_output.float() - goal.float()) ** 2 * mask).sum(dim=(1, 2, 3)) / area
        snr = self.scheduler.snr(t).to(dev)
        l_diff = (self._loss_weight(snr) * mse).mean()
        # 5.
        z = compose(self.scheduler.predict_x0(out.model_output, t, x_t, clip=True), ctx, mask)
        x0 = self._to_image(z, mu_d, ctx, mask).clamp(-1.0, 1.0)
        with torch.no_grad():
            x0_mse = ((x0.float() - target.float()) ** 2 * mask).sum(dim=(1, 2, 3)) / area
            self.last_stats = {"t": t.cpu(), "mse": mse.detach().cpu(), "x0_mse": x0_mse.cpu()}
        if s1 is not None:  # predict-then-refine: the image losses train stage 1 only
            heads = s1
            coarse = fill_mean(ctx) + s1.x0_coarse.to(ctx.dtype)
            x_stage1 = compose(coarse.clamp(-1.0, 1.0), ctx, mask)
            x_stage2 = mu.clamp(-1.0, 1.0)
            x0_weight = torch.ones_like(snr)
        else:
            heads = out
            if self.segmenter is not None:  # reads the image estimate, not the trunk's features
                heads = self._denoise(x0.detach(), t, inp, net=self.segmenter)
            x_stage1 = compose((mu + out.x0_coarse).clamp(-1.0, 1.0), ctx, mask)
            x_stage2 = x0.detach() if self.image_grad == "stage1" else x0
            x0_weight = snr.clamp(max=self.snr_gamma) / self.snr_gamma
            if self.snr_gamma == 0:
                x0_weight = torch.ones_like(snr)
        outputs = GeneratorOutput(
            coarse_seg=heads.coarse_seg,
            fine_seg=heads.fine_seg,
            x_stage1=x_stage1,
            x_stage2=x_stage2,
            offset_flow=torch.zeros(b, 2, *target.shape[-2:], dtype=target.dtype, device=dev),
            pred1_h=heads.pred1_h,
            pred2_h=heads.pred2_h,
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
        """Inpaint the band with ``steps`` sampler steps (default: ``default_steps``) of
        ``--sampler``, see :func:`models.sampling.inpaint`; the sample is ``mu`` plus the
        scaled residual. Segmentations and heights: one more denoiser call at t = 0 on the
        sample (:meth:`_heads_on_sample`), or stage 1's. Under an outer autocast the U-Nets
        run in reduced precision and their outputs return to the sample's dtype for the
        scheduler."""
        self._check_input(inp)
        steps = self.default_steps if steps is None else int(steps)
        k, b = self.num_samples, inp.masked_ct.shape[0]
        rep = GeneratorInput(
            masked_ct=inp.masked_ct.repeat(k, 1, 1, 1),
            band_mask=inp.band_mask.repeat(k, 1, 1, 1),
            cam=inp.cam.repeat(k, 1, 1, 1),
            slice_ratio=inp.slice_ratio.reshape(-1).repeat(k),
        )
        mu, s1 = self._mean(rep)
        cond = self._denoiser_context(rep, mu)
        mask_k = rep.band_mask.to(rep.masked_ct.dtype)

        def denoiser(x_t: Tensor, t: Tensor) -> DenoiserOutput:
            o = self._denoise(x_t, t, rep, cond)
            f = x_t.dtype  # back to the sample's dtype for the scheduler
            return DenoiserOutput(
                o.model_output.to(f), o.coarse_seg.to(f), o.fine_seg.to(f),
                o.pred1_h.to(f), o.pred2_h.to(f),
            )  # fmt: skip

        sampler = make_sampler(self.sampler_name, self.scheduler, self.eta)
        res = inpaint(
            denoiser,
            sampler,
            inp.masked_ct,
            inp.band_mask,
            num_inference_steps=steps,
            num_samples=k,
            generator=generator,
            to_image=lambda z: self._to_image(z, mu, rep.masked_ct, mask_k),
        )
        if s1 is None:
            t_last = int(sampler.timesteps[-1])
            res = self._heads_on_sample(res, inp, mu[:b], cond[:b], t_last)
        else:  # stage 1 is deterministic: its k copies are equal
            f = inp.masked_ct.dtype
            res = res._replace(
                outputs=res.outputs._replace(
                    coarse_seg=s1.coarse_seg[:b].to(f),
                    fine_seg=s1.fine_seg[:b].to(f),
                    x_stage1=mu[:b].clamp(-1.0, 1.0).to(f),
                    pred1_h=s1.pred1_h[:b].to(f),
                    pred2_h=s1.pred2_h[:b].to(f),
                ),
                height_std=None if res.height_std is None else torch.zeros_like(res.height_std),
            )
        return res._replace(steps=steps)

    def _heads_on_sample(
        self, res: SampleOutput, inp: GeneratorInput, mu: Tensor, cond: Tensor, t_last: int
    ) -> SampleOutput:
        """Segmentations and heights of the final (mean) sample: from the segmenter, told the
        timestep ``t_last`` of the last denoiser call (in training it reads the x0 estimate of
        a call at t and is told t: the final sample of n steps is such an estimate at
        ``t_last``); or from one more denoiser call at t = 0 (the last sampler step runs at t =
        T/n - 1, trailing, too noisy for the heads at few steps: 64 px, 1 / 2 DDIM steps: Dice
        0.53 / 0.66, RHDR 82 / 40 % without it)."""
        o = res.outputs
        if self.segmenter is not None:
            x = o.x_stage2
            tl = torch.full((x.shape[0],), t_last, dtype=torch.long, device=x.device)
            h = self._denoise(x, tl, inp, net=self.segmenter)
        else:
            mask = inp.band_mask.to(inp.masked_ct.dtype)
            z = self._to_z(o.x_stage2, mu, inp.masked_ct, mask)
            t0 = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
            h = self._denoise(z, t0, inp, cond)
        f = o.x_stage2.dtype
        heads = {k: getattr(h, k).to(f) for k in ("coarse_seg", "fine_seg", "pred1_h", "pred2_h")}
        return res._replace(outputs=o._replace(**heads))


def _constructor_defaults() -> dict[str, object]:
    """Defaults of :class:`DiffusionGenerator`'s constructor, the one place they are set."""
    params = inspect.signature(DiffusionGenerator.__init__).parameters
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
