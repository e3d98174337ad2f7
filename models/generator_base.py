"""The interface every generator type implements, and their registry (``--netG_type``).

The pix2pix model holds one :class:`Generator` chosen by name; nothing outside the generator
modules branches on the type. A new type is one file, ``models/<name>_generator.py``, whose
class is decorated with ``@GENERATORS.register("<name>")`` (or a registration in any module).
All images are in "A geometry" (see ``data/base_dataset.py``): the band of ``h2`` rows centred
on the slice is unknown, the context around it is known. SHRM composition, losses and
discriminators live in the pix2pix model and are the same for every generator.
"""

from __future__ import annotations

import abc
import argparse
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from util.registry import Registry


class GeneratorOutput(NamedTuple):
    """The seven outputs, in the order of the original HealthiVert-GAN.

    Shapes for a batch of ``B`` slices of ``H x W`` pixels:

    * ``coarse_seg``  (B, 1, H, W) in [0, 1]: stage-1 segmentation of the normal vertebrae.
    * ``fine_seg``    (B, 1, H, W) in [0, 1]: stage-2 segmentation of the target vertebra.
    * ``x_stage1``    (B, 1, H, W) in [-1, 1]: stage-1 CT, band generated, context as input.
    * ``x_stage2``    (B, 1, H, W) in [-1, 1]: stage-2 (final) CT, same composition.
    * ``offset_flow`` (B, 2, H, W): (dy, dx) offset in pixels from each band pixel to the
      context patch it attends to most; zeros where a generator has no attention.
    * ``pred1_h``     (B, 1) in [0, 1]: stage-1 vertebra height as a fraction of ``h2``.
    * ``pred2_h``     (B, 1) in [0, 1]: stage-2 vertebra height as a fraction of ``h2``.
    """

    coarse_seg: Tensor
    fine_seg: Tensor
    x_stage1: Tensor
    x_stage2: Tensor
    offset_flow: Tensor
    pred1_h: Tensor
    pred2_h: Tensor


class GeneratorInput(NamedTuple):
    """What every generator is conditioned on (all in A geometry).

    * ``masked_ct``   (B, 1, H, W) in [-1, 1], band filled with 0.
    * ``band_mask``   (B, 1, H, W) in {0, 1}, 1 = band to synthesise.
    * ``cam``         (B, 1, H, W) in [0, 1], HGAM attention, already inverted (1 - CAM).
    * ``slice_ratio`` (B,) in [0, 1], distance of the slice from the vertebra's mid-sagittal
      plane as a fraction of half its central L-R range.
    """

    masked_ct: Tensor
    band_mask: Tensor
    cam: Tensor
    slice_ratio: Tensor


class TrainingOutput(NamedTuple):
    """Result of one training forward pass.

    * ``outputs``: the seven tensors.
    * ``aux_losses``: losses that only this generator type has (e.g. ``{"diff": ...}``),
      already reduced to scalars and *not* yet weighted by their lambda.
    * ``x0_weight``: (B,) weight of each sample in the losses computed on images (L1, Dice,
      edge, height, GAN). All ones for a GAN; a function of the signal-to-noise ratio for
      diffusion, where an x0 estimate at a very noisy timestep carries little information.
    """

    outputs: GeneratorOutput
    aux_losses: dict[str, Tensor]
    x0_weight: Tensor


class SampleOutput(NamedTuple):
    """Result of inference.

    * ``outputs``: the seven tensors (the mean over samples where several were drawn).
    * ``std``: (B, 1, H, W) per-pixel standard deviation of ``x_stage2`` over samples, or
      ``None`` for a single deterministic sample.
    * ``height_std``: (B, 1) standard deviation of ``pred2_h`` over samples, or ``None``.
    * ``steps``: sampling steps run per slice, ``None`` for a one-pass generator.
    """

    outputs: GeneratorOutput
    std: Tensor | None = None
    height_std: Tensor | None = None
    steps: int | None = None


class Generator(nn.Module, abc.ABC):
    """A generator type selectable with ``--netG_type``."""

    #: Keys of ``TrainingOutput.aux_losses`` (each gets a ``--lambda_<key>`` weight).
    aux_loss_names: ClassVar[tuple[str, ...]] = ()
    #: Default EMA decay of the weights for this type (0 = no EMA).
    default_ema_decay: ClassVar[float] = 0.0

    @staticmethod
    def modify_commandline_options(
        parser: argparse.ArgumentParser, is_train: bool
    ) -> argparse.ArgumentParser:
        """Add the flags this generator type owns; return the parser."""
        return parser

    @classmethod
    @abc.abstractmethod
    def from_opt(cls, opt: argparse.Namespace) -> Generator:
        """Build the generator from parsed options (the only place it reads ``opt``)."""

    @abc.abstractmethod
    def training_forward(self, inp: GeneratorInput, target: Tensor) -> TrainingOutput:
        """One training pass. ``target`` (B, 1, H, W) in [-1, 1] is the ground truth in A
        geometry: the true band inside the mask, the input context outside it."""

    def crop_bounds(self, img_size: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` the network predicts; outside them the segmentations are 0
        and the model's segmentation losses ignore those rows. Default: the whole slice."""
        return 0, img_size

    @abc.abstractmethod
    def sample(
        self,
        inp: GeneratorInput,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> SampleOutput:
        """Inference (no gradients needed); outputs in A geometry, like training's.

        ``steps``: sampling steps for this call (``None`` = the generator's own default); a
        one-pass generator ignores it. ``generator`` seeds any randomness. Precision is the
        caller's (the model runs this under its ``--precision`` autocast)."""


#: ``--netG_type``: generator types by name. Built-in ones live in ``models/*_generator.py``
#: (imported on the first lookup); any module can add one with ``@GENERATORS.register(name)``.
GENERATORS: Registry[Generator] = Registry(
    "--netG_type", Generator, package="models", suffix="generator"
)


def generator_types() -> list[str]:
    """Names accepted by ``--netG_type`` (the built-in ones and any registered so far)."""
    return GENERATORS.names()


def find_generator(name: str) -> type[Generator]:
    """Look a generator type up by name; ``ValueError`` lists the choices."""
    return GENERATORS.get(name)
