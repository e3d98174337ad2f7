"""Command-line options of ``--netG_type diffusion`` (:class:`~models.diffusion_generator.
DiffusionGenerator`): the argparse block, whose defaults are read from the generator's
constructor (the one place they are set), and the crop size rule."""

from __future__ import annotations

import argparse
import math

from models.diffusion_residual import RESIDUAL_MODES
from models.dpm_solver import SAMPLERS
from models.noise_scheduler import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SPACINGS
from util.geometry import band_px, scaled_px

#: ``--diffusion_weighting``: weight of L_diff on the x0-MSE scale.
WEIGHTINGS = ("minsnr", "minsnr1")
#: ``--diffusion_heads``: what gives the segmentations and heights of the fill / none designs.
HEAD_MODES = ("segmenter", "denoiser")


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


def add_diffusion_options(
    parser: argparse.ArgumentParser, d: dict[str, object], is_train: bool
) -> argparse.ArgumentParser:
    """Add the diffusion generator's options to ``parser``; ``d``: the constructor defaults."""
    g = parser.add_argument_group("diffusion generator")
    # fmt: off
    g.add_argument("--diffusion_timesteps", type=int, default=d["num_train_timesteps"],
                   help="T, number of training diffusion steps")
    g.add_argument("--diffusion_beta_schedule", default=d["beta_schedule"],
                   choices=BETA_SCHEDULES, help="linear betas 1e-4 .. 0.02 (DDPM) or cosine")
    g.add_argument("--prediction_type", default=d["prediction_type"], choices=PREDICTION_TYPES,
                   help="what the U-Net predicts: the noise, v, or x0 (epsilon needs "
                        "--no-zero_terminal_snr)")
    g.add_argument("--timestep_spacing", default=d["timestep_spacing"],
                   choices=TIMESTEP_SPACINGS,
                   help="inference timesteps of every sampler: trailing starts at t = T-1")
    g.add_argument("--zero_terminal_snr", action=argparse.BooleanOptionalAction,
                   default=d["zero_terminal_snr"],
                   help="rescale betas to a_bar_{T-1} = 0 (v / x0 prediction only)")
    g.add_argument("--sampler", default=d["sampler"], choices=SAMPLERS,
                   help="sampler of validation, test.py and whole-vertebra synthesis")
    g.add_argument("--eta", type=float, default=d["eta"],
                   help="DDIM stochasticity: 0 deterministic, 1 DDPM-like")
    g.add_argument("--num_samples", type=int, default=d["num_samples"],
                   help="samples per slice at inference; > 1 gives mean and std maps")
    g.add_argument("--lambda_diff", type=float, default=1.0, help="weight of L_diff")
    g.add_argument("--snr_gamma", type=float, default=d["snr_gamma"],
                   help="Min-SNR gamma: weights L_diff (see --diffusion_weighting) and the "
                        "denoiser's x0 in the image losses (min(SNR, gamma) / gamma); "
                        "0 = unweighted")
    g.add_argument("--diffusion_weighting", default=d["weighting"], choices=WEIGHTINGS,
                   help="L_diff weight on the x0 scale: min(SNR, gamma) (Min-SNR), or "
                        "min(SNR, gamma) + 1 (keeps the high-noise, conditional-mean steps)")
    g.add_argument("--diffusion_residual", default=d["residual"], choices=RESIDUAL_MODES,
                   help="diffuse the band (none), its residual to the context fill (fill), "
                        "or to a learned stage-1 mean (stage1: predict-then-refine)")
    g.add_argument("--residual_scale", type=float, default=d["residual_scale"],
                   help="the residual is divided by this (about its std) before diffusion")
    g.add_argument("--stage1_cnum", type=int, default=d["stage1_cnum"],
                   help="base width of the stage-1 U-Net (--diffusion_residual stage1)")
    g.add_argument("--image_grad", default=d["image_grad"], choices=("both", "stage1"),
                   help="which x0 estimates the image losses train: both, or only the "
                        "stage-1 one (the denoiser's x0 is detached)")
    g.add_argument("--head_grad_scale", type=float, default=d["head_grad_scale"],
                   help="gradient the denoiser's auxiliary heads send into its trunk: 1 = "
                        "all, 0 = none (probes); unused with --diffusion_residual stage1")
    g.add_argument("--diffusion_heads", default=d["heads"], choices=HEAD_MODES,
                   help="segmentations and heights from a small segmenter of the image "
                        "estimate, or from the denoiser's own heads (fill / none residual)")
    g.add_argument("--diffusion_crop", type=int, default=96,
                   help="rows (at 256 px, scaled with --img_size) of the central crop the "
                        "U-Nets see: the band plus context; 0 = the whole slice")
    # fmt: on
    if is_train:
        # A light adversarial touch on the image estimates the losses train.
        parser.set_defaults(lambda_GAN=0.1)
    if is_train:
        # A light adversarial touch on the image estimates the losses train.
        parser.set_defaults(lambda_GAN=0.1)
    return parser
