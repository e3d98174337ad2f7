"""SHRM: self-adaptive height restoration (HealthiVert), vectorised over the batch.

A generator works in "A geometry": the band of ``h2`` rows centred on the slice is generated
and the input's context closes on it from above and below (``data/base_dataset.py``). SHRM
turns such an image into one where the vertebra has a chosen height ``Ht <= h2``: it keeps
the central ``Ht`` rows of the generated band and moves the context above and below towards
the centre by the rows that were not kept. With ``Ht = h`` (the true height) the result is
in "B geometry", the geometry of the ground truth, so losses and discriminators can compare
the two directly.

The original composes each sample in a Python loop; here every sample's row map is built
with tensor arithmetic and applied with one ``gather``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from models.generator_base import GeneratorOutput


def restored_height_rows(pred_h: Tensor, measured_h: Tensor, h2: int) -> Tensor:
    """Height, in rows, that SHRM restores for each sample.

    ``Ht = clamp(max(ceil(pred_h * h2), measured_h), 1, h2)``: the predicted healthy height
    never cuts the vertebra shorter than what is measured in the slice.

    Args:
        pred_h: (B,) or (B, 1) predicted height as a fraction of ``h2`` (in [0, 1]).
        measured_h: (B,) or (B, 1) measured height in rows (integer valued; rounded).
        h2: band height in rows (``band_px(img_size)``).

    Returns:
        (B,) int64 rows in [1, h2]. Not differentiable (an integer row count).
    """
    if h2 < 1:
        raise ValueError(f"h2 must be a positive number of rows, got {h2}")
    pred_rows = torch.ceil(pred_h.detach().reshape(-1).float() * h2).long()
    measured_rows = torch.round(measured_h.detach().reshape(-1).float()).long()
    if pred_rows.shape != measured_rows.shape:
        raise ValueError(
            f"pred_h has {pred_rows.numel()} values but measured_h has {measured_rows.numel()}"
        )
    return torch.maximum(pred_rows, measured_rows).clamp(1, h2)


def shrm_row_maps(target_rows: Tensor, h2: int, img_size: int) -> tuple[Tensor, Tensor]:
    """Per-sample source row of every output row, and whether it comes from the band.

    For sample ``b`` with ``Ht = target_rows[b]``, ``start = S//2 - Ht//2``, ``stop = start
    + Ht``, band ``[S//2 - h2//2, S//2 - h2//2 + h2)``:

    1. rows ``[start, stop)`` come from the band source, same row index (the central ``Ht``
       rows of the band);
    2. rows above ``start`` come from the context source ``d_up = h2//2 - Ht//2`` rows
       higher (the context above moves down towards the centre);
    3. rows from ``stop`` on come from the context source ``d_down = (h2 - h2//2) - (Ht -
       Ht//2)`` rows lower (the context below moves up by the matching amount);
    4. source rows outside the image clamp to the first or last row.

    Args:
        target_rows: (B,) integer heights ``Ht`` in [1, h2].
        h2: band height in rows.
        img_size: ``S``, the number of rows.

    Returns:
        ``(rows, from_band)``: (B, S) int64 source rows and (B, S) bool.
    """
    if not 1 <= h2 <= img_size:
        raise ValueError(f"h2 must be in [1, img_size={img_size}], got {h2}")
    ht = target_rows.reshape(-1).long()
    if ht.numel() and (int(ht.min()) < 1 or int(ht.max()) > h2):
        raise ValueError(f"target_rows must be in [1, h2={h2}], got {ht.tolist()}")
    ht = ht[:, None]
    r = torch.arange(img_size, device=ht.device)[None, :]
    start = img_size // 2 - ht // 2
    stop = start + ht
    d_up = h2 // 2 - ht // 2
    d_down = (h2 - h2 // 2) - (ht - ht // 2)
    from_band = (r >= start) & (r < stop)
    rows = torch.where(r < start, r - d_up, torch.where(r >= stop, r + d_down, r))
    return rows.clamp(0, img_size - 1), from_band


def shrm_compose(
    band_source: Tensor, context_source: Tensor, target_rows: Tensor, h2: int
) -> Tensor:
    """Compose a height-restored image (see :func:`shrm_row_maps` for the row map).

    Args:
        band_source: (B, C, S, W) image whose band rows are kept (the generator's output in
            A geometry); any channel count (CT in [-1, 1], segmentations in [0, 1]).
        context_source: (B, C, S, W) image that gives the context (the generator's input, or
            its output composed with it; its band rows are never read).
        target_rows: (B,) integer heights ``Ht`` in [1, h2] (:func:`restored_height_rows`).
        h2: band height in rows.

    Returns:
        (B, C, S, W) composed image, same dtype as ``band_source``. Differentiable with
        respect to both sources (gradients reach the rows that were copied).
    """
    if band_source.dim() != 4 or band_source.shape != context_source.shape:
        raise ValueError(
            "band_source and context_source must both be (B, C, S, W), got "
            f"{tuple(band_source.shape)} and {tuple(context_source.shape)}"
        )
    b, c, s, w = band_source.shape
    if target_rows.numel() != b:
        raise ValueError(f"target_rows has {target_rows.numel()} values for a batch of {b}")
    rows, from_band = shrm_row_maps(target_rows.to(band_source.device), h2, s)
    index = rows[:, None, :, None].expand(b, c, s, w)
    picked_band = torch.gather(band_source, 2, index)
    picked_context = torch.gather(context_source.to(band_source.dtype), 2, index)
    return torch.where(from_band[:, None, :, None], picked_band, picked_context)


class ShrmOutput(NamedTuple):
    """Result of :func:`shrm_outputs`.

    * ``composed``: the seven outputs with the four images height-restored (B geometry when
      the restored height equals the true one); ``offset_flow`` and the heights as given.
    * ``rows1``, ``rows2``: (B,) int64 heights in rows, in [1, h2], that stage 1
      (``x_stage1``, ``coarse_seg``) and stage 2 (``x_stage2``, ``fine_seg``) were restored to.
    """

    composed: GeneratorOutput
    rows1: Tensor
    rows2: Tensor


def shrm_compose_on_truth(
    band_source: Tensor, truth: Tensor, target_rows: Tensor, measured_h: Tensor
) -> Tensor:
    """The original's SHRM during training: the generated rows placed on the measured
    vertebra, the context taken from the ground truth (B geometry).

    For sample ``b`` with measured height ``h``, restored height ``Ht`` and ``d = Ht - h``,
    the vertebra starts at ``x1 = S//2 - h//2`` in B geometry; output rows ``[x1 - d//2,
    x1 - d//2 + Ht)`` come from ``band_source`` (same rows), the rows above from ``truth``
    ``d//2`` rows lower down (moved up), the rows below from ``truth`` ``d - d//2`` rows
    higher up (moved down). With ``Ht = h`` the context is exactly the truth's. Unlike
    :func:`shrm_compose` (which composes from the input context, as at inference) no row is
    clamped at the image edge: the truth has the rows the context moves in from.

    Args:
        band_source: (B, C, S, W) generator output (its rows around the band are used).
        truth: (B, C, S, W) ground truth in B geometry (the vertebra of height ``h`` centred).
        target_rows: (B,) integer ``Ht`` (:func:`restored_height_rows`), ``>= h``.
        measured_h: (B,) measured heights ``h`` in rows.

    Returns:
        (B, C, S, W) in ``band_source``'s dtype, differentiable with respect to both.
    """
    if band_source.dim() != 4 or band_source.shape != truth.shape:
        raise ValueError(
            "band_source and truth must both be (B, C, S, W), got "
            f"{tuple(band_source.shape)} and {tuple(truth.shape)}"
        )
    b, c, s, w = band_source.shape
    ht = target_rows.reshape(-1).long().to(band_source.device)[:, None]
    h = torch.round(measured_h.detach().reshape(-1).float()).long().to(ht.device)[:, None]
    if ht.shape[0] != b or h.shape[0] != b:
        raise ValueError(f"target_rows and measured_h need {b} values each")
    d = ht - h
    start = s // 2 - h // 2 - d // 2
    r = torch.arange(s, device=ht.device)[None, :]
    from_band = (r >= start) & (r < start + ht)
    rows = torch.where(r < start, r + d // 2, torch.where(from_band, r, r - (d - d // 2)))
    index = rows.clamp(0, s - 1)[:, None, :, None].expand(b, c, s, w)
    picked_band = torch.gather(band_source, 2, index)
    picked_truth = torch.gather(truth.to(band_source.dtype), 2, index)
    return torch.where(from_band[:, None, :, None], picked_band, picked_truth)


def shrm_outputs(
    outputs: GeneratorOutput, measured_h: Tensor, h2: int, *, restore: bool = True
) -> ShrmOutput:
    """Apply SHRM to a generator's seven outputs: what the model feeds its losses and
    discriminators in training and returns at inference (one composition for both).

    Stage 1 (``x_stage1``, ``coarse_seg``) is restored to the height predicted by
    ``pred1_h``, stage 2 (``x_stage2``, ``fine_seg``) to ``pred2_h``; each never below
    ``measured_h`` (:func:`restored_height_rows`). Every image is its own context source:
    the stage images carry the input's context outside the band (``GeneratorOutput``'s
    contract, and SHRM reads context rows only outside the band), the segmentations their own.

    Args:
        outputs: the seven outputs in A geometry (``GeneratorOutput``).
        measured_h: (B,) measured vertebra height in rows (the dataset's ``height``).
        h2: band height in rows.

        restore: ``False`` (``--shrm off``, an ablation): no restoration, the outputs as the
            generator drew them; both stages' rows are ``h2`` (the whole band kept).

    Returns:
        :class:`ShrmOutput`: the composed outputs and the restored rows of each stage.
    """
    if not restore:
        whole = torch.full_like(measured_h.reshape(-1), h2, dtype=torch.long)
        return ShrmOutput(outputs, whole, whole.clone())
    rows1 = restored_height_rows(outputs.pred1_h, measured_h, h2)
    rows2 = restored_height_rows(outputs.pred2_h, measured_h, h2)
    composed = outputs._replace(
        coarse_seg=shrm_compose(outputs.coarse_seg, outputs.coarse_seg, rows1, h2),
        fine_seg=shrm_compose(outputs.fine_seg, outputs.fine_seg, rows2, h2),
        x_stage1=shrm_compose(outputs.x_stage1, outputs.x_stage1, rows1, h2),
        x_stage2=shrm_compose(outputs.x_stage2, outputs.x_stage2, rows2, h2),
    )
    return ShrmOutput(composed, rows1, rows2)
