"""What the speed benchmark runs: sections, sizes and counts, and the reference figures it
is compared against (the original HealthiVert-GAN, a generic diffusers U-Net)."""

from __future__ import annotations

from dataclasses import dataclass, replace

SECTIONS = ("dataset", "gan", "diffusion")
SCHEMA_VERSION = 1
#: Figures of the original HealthiVert-GAN and of a generic diffusers U-Net (2-core CPU).
REFERENCE = {
    "gan_forward_ms_b1_fp32": 217.0,
    "gan_train_step_s_b4_fp32": 3.7,
    "gan_calls_per_vertebra": 130,
    "gan_pipeline_s_per_vertebra": 130 * 0.217,
    "diffusers_unet_step_ms_256": 259.0,
    "diffusers_s_per_slice_25_steps": 6.4,
    # a whole vertebra with the default sampler and steps: no slower than the original GAN
    "vertebra_target_s": 130 * 0.217,
}


@dataclass(frozen=True)
class Config:
    """Sizes and counts of one benchmark run (the full one, or ``--quick``)."""

    img_size: int = 256
    repeats: int = 3  # timed runs of the expensive figures (train steps, sampling, epochs)
    cheap_repeats: int = 10  # timed runs of single batch-1 network calls
    warmup: int = 1
    phantom_patients: int = 5
    loader_workers: int = 2
    loader_batch: int = 4
    warm_items: int = 160  # items per warm-cache epoch (the data set repeated to reach it)
    skip_batches: int = 4  # batches not timed at the start of a warm epoch (prefetch)
    train_batch: int = 4
    sample_steps: tuple[int, ...] = (10, 25, 50)
    sample_batches: tuple[int, ...] = (1, 8, 64)
    probe_steps: int = 3  # DDIM steps of the short runs that give the per-step time
    direct_budget_s: float = 10.0  # measure directly when repeats would take less than this
    vertebra_steps: int | None = None  # None: the generator's default sampler steps
    # chunks of 8 slices: larger batches fall out of cache on this CPU (per-slice cost at
    # batch 64 is ~1.5x that at batch 8; see the sampling table)
    vertebra_max_batch: int = 8


QUICK = Config(
    img_size=64,
    repeats=1,
    cheap_repeats=2,
    phantom_patients=3,
    sample_batches=(1, 8),
    warm_items=16,
    skip_batches=1,
    probe_steps=2,
    direct_budget_s=2.0,
    vertebra_max_batch=64,
)


def parse_sections(text: str) -> list[str]:
    """``"gan,diffusion"`` -> ``["gan", "diffusion"]`` (in run order); ValueError otherwise."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise ValueError(f"--only {text!r}: choose among {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]


def make_config(
    quick: bool = False, repeats: int | None = None, direct_budget_s: float | None = None
) -> Config:
    """The full :class:`Config` or :data:`QUICK`, with ``repeats`` and ``direct_budget_s``
    replaced when given (``ValueError`` below 1 repeat)."""
    cfg = QUICK if quick else Config()
    if repeats is not None:
        if repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {repeats}")
        cfg = replace(cfg, repeats=repeats)
    if direct_budget_s is not None:
        cfg = replace(cfg, direct_budget_s=direct_budget_s)
    return cfg
