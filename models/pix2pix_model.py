"""The HealthiVert pix2pix model: one generator (``--netG_type gan|diffusion``), SHRM, three
PatchGAN discriminators, the shared losses and an optional EMA of the generator weights.

Nothing here branches on the generator type: the generator object returns the seven outputs
(``models/generator_base.py``) plus its own auxiliary losses and per-sample weights, and the
model composes, scores and optimises them the same way for both.

Inference is one pipeline, :meth:`Pix2PixModel.infer`: a batch in, the generator's sample
composed with SHRM out (:class:`InferenceOutput`). Validation during training, test.py and
whole-vertebra synthesis (``evaluation/``) all call it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from models.acceleration import (
    AUTOCAST_DTYPES,
    add_acceleration_options,
    compile_modules,
    to_device,
)
from models.base_model import MODELS, BaseModel, OptionSetter
from models.discriminators import (
    GANLoss,
    HealthiVertDiscriminators,
    discriminator_losses,
    generator_gan_loss,
    init_weights,
)
from models.generator_base import Generator, GeneratorInput, GeneratorOutput, find_generator
from models.losses import (
    LossWeights,
    add_loss_options,
    dice_loss,
    hard_sobel_edge_loss,
    relative_height_loss,
    sobel_edge_loss,
    two_stage_l1_loss,
)
from models.shrm import ShrmOutput, shrm_compose_on_truth, shrm_outputs
from models.training_choices import add_training_choice_options
from util.distributed import any_rank
from util.geometry import band_px
from util.misc import resolve_precision


class LossViews(NamedTuple):
    """What the losses and discriminators see: the two stages' CT after SHRM, (B, 1, S, S) in
    [-1, 1], and the fine segmentation, (B, 1, S, S) in [0, 1]."""

    ct1: Tensor
    ct2: Tensor
    fine_seg: Tensor


#: Visuals with values in [0, 1]; the others (CT) are in [-1, 1].
UNIT_RANGE_VISUALS = frozenset({"mask", "fine_seg", "vert_mask", "cam"})


@dataclass(frozen=True)
class InferenceOutput:
    """What :meth:`Pix2PixModel.infer` returns for a batch of ``B`` slices of ``S x S`` px.

    SHRM-composed (B geometry when the restored height equals the true one):

    * ``fake_B``     (B, 1, S, S) in [-1, 1]: stage-2 CT, the synthesis.
    * ``fake_B1``    (B, 1, S, S) in [-1, 1]: stage-1 CT.
    * ``fine_seg``   (B, 1, S, S) in [0, 1]: stage-2 segmentation of the target vertebra.
    * ``coarse_seg`` (B, 1, S, S) in [0, 1]: stage-1 segmentation of the normal vertebrae.
    * ``rows1``, ``rows2`` (B,) int64 in [1, h2]: heights in rows that stage 1 and stage 2
      were restored to (``rows2`` is the height SHRM gives the synthesised vertebra).

    As sampled (A geometry):

    * ``raw``: the generator's seven outputs (``GeneratorOutput``), float32.
    * ``std`` (B, 1, S, S): per-pixel standard deviation of ``x_stage2`` over the samples
      drawn (0 outside the band), ``None`` for one deterministic sample.
    * ``height_std`` (B, 1): standard deviation of ``pred2_h`` (fraction of ``h2``), or ``None``.
    * ``steps``: sampling steps run per slice, ``None`` for a one-pass generator.
    """

    fake_B: Tensor
    fake_B1: Tensor
    fine_seg: Tensor
    coarse_seg: Tensor
    rows1: Tensor
    rows2: Tensor
    raw: GeneratorOutput
    std: Tensor | None = None
    height_std: Tensor | None = None
    steps: int | None = None


@MODELS.register("pix2pix")
class Pix2PixModel(BaseModel):
    """HealthiVert pseudo-healthy vertebra synthesis."""

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        g = parser.add_argument_group("pix2pix model")
        add_acceleration_options(g)
        g.add_argument(
            "--num_inference_steps",
            type=int,
            default=None,
            help="sampling steps per slice at inference (validation, test.py, whole-vertebra "
            "synthesis); default: the generator's own (diffusion: see DIFFUSION_QUICKSTART.md); "
            "one-pass generators (gan) ignore it",
        )
        g.add_argument(
            "--shrm",
            default="on",
            choices=["on", "off"],
            help="SHRM height restoration of the generated band in training and at inference; "
            "off (an ablation) keeps the band as the generator drew it",
        )
        g.add_argument(
            "--ema_decay",
            type=float,
            default=None,
            help="EMA decay of the generator weights (0 = off); default depends "
            "on --netG_type (diffusion 0.999, gan 0)",
        )
        if is_train:
            g.add_argument(
                "--gan_mode",
                default="lsgan",
                choices=["lsgan", "vanilla", "hinge"],
                help="adversarial objective of the three discriminators",
            )
            # 32 rather than pix2pix's 64: three 64-wide PatchGANs on a 1-channel CT cost two
            # thirds of a training step (docs/BENCHMARKS.md) for no visible gain.
            g.add_argument("--ndf", type=int, default=32, help="discriminator base width")
            g.add_argument("--n_layers_D", type=int, default=3, help="PatchGAN depth")
            g.add_argument(
                "--lr_D",
                type=float,
                default=None,
                help="discriminator learning rate (default: --lr)",
            )
            add_training_choice_options(parser)
            add_loss_options(parser)
        return parser

    @classmethod
    def extra_option_setters(cls, opt: argparse.Namespace) -> list[OptionSetter]:
        return [find_generator(opt.netG_type).modify_commandline_options]

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        gen_cls = find_generator(opt.netG_type)
        self.netG: Generator = gen_cls.from_opt(opt).to(self.device)
        self.model_names = ["G"]
        self.h2 = band_px(opt.img_size)
        self.precision = resolve_precision(opt.precision, self.device)
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.precision)
        # The one reading of --num_inference_steps: the default of infer(steps=...).
        self.default_steps: int | None = opt.num_inference_steps
        if self.default_steps is not None and self.default_steps < 1:
            raise ValueError(f"--num_inference_steps must be >= 1, got {self.default_steps}")
        decay = gen_cls.default_ema_decay if opt.ema_decay is None else opt.ema_decay
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"--ema_decay must be in [0, 1), got {decay}")
        self.ema_decay = decay
        self.ema: AveragedModel | None = None
        if decay > 0:
            self.ema = AveragedModel(
                self.netG, multi_avg_fn=warmup_ema_multi_avg_fn(decay), use_buffers=True
            )
        self.use_ema = self.ema is not None and not getattr(opt, "no_ema", False)

        self.visual_names = ["real_A", "fake_B", "real_B", "mask", "fine_seg", "vert_mask", "cam"]
        if self.isTrain:
            self.weights = LossWeights.from_opt(opt)
            self.aux_weights = {
                k: float(getattr(opt, f"lambda_{k}", 1.0)) for k in gen_cls.aux_loss_names
            }
            self.loss_names = (
                ["G_GAN", "G_L1", "G_dice_coarse", "G_dice_fine", "G_edge", "G_height"]
                + [f"G_{k}" for k in gen_cls.aux_loss_names]
                + ["D_1", "D_2", "D_3"]
            )
            self.netD = HealthiVertDiscriminators(
                img_size=opt.img_size,
                ndf=opt.ndf,
                n_layers=opt.n_layers_D,
                d3_region=opt.d3_region,
                seg_range=opt.d2_seg_range,
            )
            init_weights(self.netD, opt.init_type, opt.init_gain).to(self.device)
            self.model_names.append("D")
            self.criterionGAN = GANLoss(opt.gan_mode).to(self.device)
            self.optimizer_G = torch.optim.Adam(
                self.netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999)
            )
            self.optimizer_D = torch.optim.Adam(
                self.netD.parameters(), lr=opt.lr_D or opt.lr, betas=(opt.beta1, 0.999)
            )
            self.optimizers = [self.optimizer_G, self.optimizer_D]
            # fp16 gradients underflow without loss scaling; disabled, a scaler is a no-op
            fp16 = self.precision == "fp16"
            self.scalers = {
                name: torch.amp.GradScaler(self.device.type, enabled=fp16) for name in "DG"
            }
        if getattr(opt, "compile", None):
            # the generator runs through training_forward / sample: compile its parts
            nets = [*self.netG.children(), *(self.ema.module.children() if self.ema else [])]
            compile_modules([*nets, *([self.netD] if self.isTrain else [])], opt.compile)

    # ------------------------------------------------------------------ data
    def set_input(self, batch: dict[str, Any]) -> None:
        """Move a training batch of ``VertebraDataset`` samples to the device (keys: see
        docs/ARCHITECTURE.md)."""
        dev = self.device
        self.inp, self.height = batch_input(batch, dev)
        self.real_A, self.mask = self.inp.masked_ct, self.inp.band_mask
        self.cam = to_device(batch["CAM"], dev)  # the CAM as a visual; the generator sees 1 - CAM
        self.real_B = to_device(batch["B"], dev)
        self.vert_mask = to_device(batch["vert_mask"], dev)
        self.normal_vert = to_device(batch["normal_vert"], dev)
        context = batch.get("normal_vert_context")
        self.normal_vert_context = None if context is None else to_device(context, dev)
        self.ids = list(batch.get("id", []))

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ forward
    def forward(self) -> None:
        """Training pass: the generator's training forward on the batch of :meth:`set_input`,
        composed with SHRM (the inputs of the losses and discriminators)."""
        target = self.mask * self.real_B + (1 - self.mask) * self.real_A
        with self._autocast():
            result = self.netG.training_forward(self.inp, target)
        self.aux_losses = {k: v.float() for k, v in result.aux_losses.items()}
        self.x0_weight = result.x0_weight.float().detach()
        self.outputs = _as_float(result.outputs)
        composed, self.rows1, self.rows2 = self._shrm(self.outputs, self.height)
        self.fake_B1, self.fake_B = composed.x_stage1, composed.x_stage2
        self.coarse_seg, self.fine_seg = composed.coarse_seg, composed.fine_seg

    @torch.no_grad()
    def infer(
        self,
        batch: dict[str, Any],
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> InferenceOutput:
        """The inference pipeline: sample the band of every slice of ``batch``, then restore
        the height with SHRM (:func:`models.shrm.shrm_outputs`, as in training).

        Uses the EMA weights when present (unless ``--no_ema``) and ``--precision``; the
        model's state is not changed. Put the model in eval mode first (:meth:`eval`).

        Args:
            batch: a collated batch of ``VertebraDataset`` samples; reads ``A``, ``mask``,
                ``CAM``, ``slice_ratio`` and ``height`` (docs/ARCHITECTURE.md).
            steps: sampling steps for this call; ``None`` = ``--num_inference_steps``, or the
                generator's own default when that is unset. One-pass generators ignore it.
            generator: seeds the sampling noise (``None``: torch's global RNG).
        """
        inp, height = batch_input(batch, self.device)
        net = self.ema.module if self.use_ema else self.netG
        with self._autocast():
            out = net.sample(
                inp, steps=self.default_steps if steps is None else steps, generator=generator
            )
        raw = _as_float(out.outputs)
        shrm = self._shrm(raw, height)
        return InferenceOutput(
            fake_B=shrm.composed.x_stage2,
            fake_B1=shrm.composed.x_stage1,
            fine_seg=shrm.composed.fine_seg,
            coarse_seg=shrm.composed.coarse_seg,
            rows1=shrm.rows1,
            rows2=shrm.rows2,
            raw=raw,
            std=None if out.std is None else out.std.float(),
            height_std=None if out.height_std is None else out.height_std.float(),
            steps=out.steps,
        )

    def _shrm(self, outputs: GeneratorOutput, height: Tensor) -> ShrmOutput:
        """SHRM as ``--shrm`` asks (training and inference alike)."""
        return shrm_outputs(outputs, height, self.h2, restore=self.opt.shrm == "on")

    # ------------------------------------------------------------------ losses
    def loss_views(self) -> LossViews:
        """The composed images the losses and discriminators see (``--shrm_context``,
        ``--seg_losses``): by default :meth:`compose`'s, as at inference."""
        o = self.outputs
        if self.opt.shrm_context == "truth":
            ct1 = shrm_compose_on_truth(o.x_stage1, self.real_B, self.rows1, self.height)
            ct2 = shrm_compose_on_truth(o.x_stage2, self.real_B, self.rows2, self.height)
        else:
            ct1, ct2 = self.fake_B1, self.fake_B
        fine = o.fine_seg if self.opt.seg_losses == "raw" else self.fine_seg
        return LossViews(ct1, ct2, fine)

    def backward_D(self) -> None:
        views = self.loss_views()
        with self._autocast():
            losses = discriminator_losses(
                self.netD,
                self.criterionGAN,
                real_ct=self.real_B,
                real_seg=self.vert_mask,
                fake_ct=views.ct2,
                fake_seg=views.fine_seg,
            )
        for name, value in losses.items():
            setattr(self, f"loss_{name}", value.float())
        self._backward(sum(v.float() for v in losses.values()), "D")

    def _coarse_dice(self, smooth: float) -> Tensor:
        """(B,) Dice loss of the coarse segmentation (``--coarse_dice_target``)."""
        if self.opt.coarse_dice_target == "neighbours":
            if self.normal_vert_context is None:
                raise ValueError("--coarse_dice_target neighbours needs 'normal_vert_context'")
            target = self.normal_vert_context
            return dice_loss(self.outputs.coarse_seg, target, smooth=smooth, reduction="none")
        # Rows the generator does not predict (outside its crop) do not count against it.
        r0, r1 = self.netG.crop_bounds(self.real_A.shape[-2])
        normal_vert = torch.zeros_like(self.normal_vert)
        normal_vert[..., r0:r1, :] = self.normal_vert[..., r0:r1, :]
        return dice_loss(self.coarse_seg, normal_vert, smooth=smooth, reduction="none")

    def backward_G(self) -> None:
        w, lw, opt = self.x0_weight, self.weights, self.opt
        o, views = self.outputs, self.loss_views()

        def weighted(per_sample: Tensor) -> Tensor:
            # x0-space losses count each sample by its weight (SNR for diffusion, 1 for GAN).
            return (per_sample.float() * w).sum() / w.sum().clamp_min(1e-8)

        with self._autocast():
            gan = generator_gan_loss(
                self.netD, self.criterionGAN, views.ct2, views.fine_seg, reduction="none"
            )
        h = self.height / self.h2  # heights as fractions of the band, like the heads
        self.loss_G_GAN = weighted(gan.reshape(-1))
        self.loss_G_L1 = weighted(
            two_stage_l1_loss(views.ct1, views.ct2, self.real_B, self.mask, reduction="none")
        )
        if opt.l1_batch_norm:  # the original's bug, on request
            self.loss_G_L1 = self.loss_G_L1 / self.real_B.shape[0]
        smooth = opt.dice_smooth
        self.loss_G_dice_coarse = weighted(self._coarse_dice(smooth))
        self.loss_G_dice_fine = weighted(
            dice_loss(views.fine_seg, self.vert_mask, smooth=smooth, reduction="none")
        )
        edge = hard_sobel_edge_loss if opt.edge_loss == "original" else sobel_edge_loss
        self.loss_G_edge = weighted(edge(views.fine_seg, self.vert_mask, reduction="none"))
        self.loss_G_height = weighted(
            relative_height_loss(o.pred1_h, h, reduction="none")
            + relative_height_loss(o.pred2_h, h, reduction="none")
        )
        total = (
            lw.lambda_GAN * self.loss_G_GAN
            + lw.lambda_L1 * self.loss_G_L1
            + lw.lambda_dice_coarse * self.loss_G_dice_coarse
            + lw.lambda_dice_fine * self.loss_G_dice_fine
            + lw.lambda_edge * self.loss_G_edge
            + lw.lambda_height * self.loss_G_height
        )
        for name, value in self.aux_losses.items():
            setattr(self, f"loss_G_{name}", value)
            total = total + self.aux_weights[name] * value
        self.loss_G = total
        self._backward(total, "G")

    def _backward(self, loss: Tensor, net: str) -> None:
        """Backpropagate the loss of ``net`` ("D" or "G"), scaled under fp16, refusing a
        NaN/inf loss before it can corrupt the weights (on every rank when one has it)."""
        value = float(loss.detach())
        bad = not math.isfinite(value)
        if any_rank(bad):
            what = {"D": "discriminator", "G": "generator"}[net]
            where = "" if bad else " on another process"
            raise FloatingPointError(f"the {what} loss is {value if bad else 'not finite'}{where}")
        self.scalers[net].scale(loss).backward()

    def _step(self, net: str) -> None:
        """Average ``net``'s gradients over the processes, then its optimiser step."""
        self.sync_gradients(getattr(self, f"net{net}"))
        scaler = self.scalers[net]
        scaler.step(getattr(self, f"optimizer_{net}"))
        scaler.update()

    def optimize_parameters(self) -> None:
        self.forward()
        self.netD.requires_grad_(True)
        self.optimizer_D.zero_grad(set_to_none=True)
        self.backward_D()
        self._step("D")
        self.netD.requires_grad_(False)
        self.optimizer_G.zero_grad(set_to_none=True)
        self.backward_G()
        self._step("G")
        if self.ema is not None:
            self.ema.update_parameters(self.netG)

    # ------------------------------------------------------------------ state
    def compute_visuals(self) -> None:
        self.fake_B = self.fake_B.detach()

    def get_current_visuals(self) -> OrderedDict[str, torch.Tensor]:
        """Visuals in the CT range [-1, 1]: masks, segmentations and the CAM (in [0, 1]) are
        mapped to it, so that their background is black in the report like the CT's air."""
        return OrderedDict(
            (name, v * 2 - 1 if name in UNIT_RANGE_VISUALS else v)
            for name, v in super().get_current_visuals().items()
        )

    def eval(self) -> None:
        super().eval()
        if self.ema is not None:
            self.ema.eval()

    def extra_modules(self) -> list[torch.nn.Module]:
        return [] if self.ema is None else [self.ema]

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {} if self.ema is None else {"ema": self.ema.state_dict()}
        if self.isTrain and self.precision == "fp16":
            state["scalers"] = {k: s.state_dict() for k, s in self.scalers.items()}
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.isTrain and "scalers" in state and self.precision == "fp16":
            for k, scaler in self.scalers.items():
                scaler.load_state_dict(state["scalers"][k])
        if self.ema is None:
            return
        if "ema" not in state:
            print("warning: checkpoint has no EMA weights; using the raw generator weights")
            self.use_ema = False
            return
        self.ema.load_state_dict(state["ema"])


def warmup_ema_multi_avg_fn(decay: float):
    """EMA update for ``AveragedModel`` whose decay warms up: ``min(decay, (1 + n) / (10 + n))``
    after ``n`` updates. A fixed 0.999 would leave the average at about 0.999**n of the
    initial weights, i.e. an untrained network for the first thousands of steps."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # integer buffers (counters) are copied
                a.copy_(c)

    return update


def batch_input(batch: dict[str, Any], device: torch.device) -> tuple[GeneratorInput, Tensor]:
    """The generator's input and the measured heights (B,) in rows of a collated batch, on
    ``device``. HGAM: the generator sees the inverted CAM, as the original."""
    inp = GeneratorInput(
        masked_ct=to_device(batch["A"], device),
        band_mask=to_device(batch["mask"], device),
        cam=1.0 - to_device(batch["CAM"], device),
        slice_ratio=to_device(batch["slice_ratio"], device).float().reshape(-1),
    )
    return inp, to_device(batch["height"], device).float().reshape(-1)


def _as_float(o: GeneratorOutput) -> GeneratorOutput:
    return GeneratorOutput(*(t.float() for t in o))
