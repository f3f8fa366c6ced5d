"""Span masking of encoder frames for SpidR pretraining.

The rule is the reference's (fairseq's ``compute_mask_indices`` with a padding mask and
``require_same_masks``, as the SpidR collator calls it), written here with torch:

1. For a row with ``n`` valid frames, the number of spans is
   ``int(mask_prob * n / mask_length + u)``, ``u ~ U[0, 1)`` drawn for every row (random
   rounding), then at least ``min_masks``.
2. Span starts are distinct (sampled without replacement) and uniform among the first
   ``n - mask_length`` positions; a span covers ``mask_length`` frames, cut at the row's end.
   A row too short for its spans (``n - mask_length <= spans``) draws them among the first
   ``spans + 1`` positions instead. Spans may overlap, so the masked fraction is below
   ``mask_prob``.
3. Rows are equalised: each row keeps a uniformly random subset of its masked frames of size
   ``m``, the smallest masked count over the rows that have valid frames (the frames dropped
   are unmasked one by one, which can split spans, exactly as fairseq does). A batch then has
   the same number of masked frames in every row, so masked frames gather into a
   rectangular ``(batch, m)`` tensor.

Padded frames (``attention_mask`` False) are never masked; spans are laid over the valid
frames in order, so with right padding they are ordinary contiguous spans.
"""

from __future__ import annotations

import torch

__all__ = ["compute_span_mask"]


def _validate(mask_prob: float, mask_length: int, min_masks: int) -> None:
    """Reject parameters outside the rule's domain."""
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}.")
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}.")
    if min_masks < 0:
        raise ValueError(f"min_masks must be >= 0, got {min_masks}.")


def _rank_in_row(keys: torch.Tensor) -> torch.Tensor:
    """Rank (0 = smallest) of every entry of ``keys`` within its row."""
    return keys.argsort(dim=1).argsort(dim=1)


def _draw_span_starts(
    num_starts: torch.Tensor, num_spans: torch.Tensor, width: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Boolean ``(B, width)``: ``num_spans[b]`` distinct starts drawn uniformly from ``[0, num_starts[b])``."""
    positions = torch.arange(width)
    keys = torch.rand((num_starts.numel(), width), generator=generator)
    keys = keys.masked_fill(positions >= num_starts[:, None], 2.0)  # impossible starts rank last
    return _rank_in_row(keys) < num_spans[:, None]


def _expand_spans(starts: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """Frames covered by spans of ``span[b]`` frames beginning at each True of ``starts``."""
    batch, frames = starts.shape
    # frame t is covered when a start lies in (t - span, t]: a difference of prefix sums
    prefix = torch.cat([starts.new_zeros((batch, 1), dtype=torch.long), starts.long().cumsum(dim=1)], dim=1)
    end = torch.arange(1, frames + 1).expand(batch, frames)
    begin = (end - span[:, None]).clamp(min=0)
    return (prefix.gather(1, end) - prefix.gather(1, begin)) > 0


def _equalise_rows(
    mask: torch.Tensor, has_frames: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Keep a random subset of each row's masked frames, of the smallest count over rows with frames."""
    if not bool(has_frames.any()):
        return mask
    target = int(mask.sum(dim=1)[has_frames].min())
    keys = torch.rand(mask.shape, generator=generator).masked_fill(~mask, 2.0)  # unmasked frames rank last
    return mask & (_rank_in_row(keys) < target)


def compute_span_mask(
    shape: tuple[int, int],
    mask_prob: float = 0.8,
    mask_length: int = 10,
    min_masks: int = 2,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random span mask over encoder frames, with the same number of masked frames in every row.

    Args:
        shape: ``(batch, frames)``.
        mask_prob: expected fraction of frames that span *starts* would cover without overlap;
            the number of spans in a row of ``n`` valid frames is ``int(mask_prob * n / mask_length + u)``.
        mask_length: span length in frames (a span is cut at the end of its row).
        min_masks: minimum number of spans per row.
        attention_mask: optional ``(batch, frames)`` bool/int, True/1 on valid frames; padded
            frames are never masked. A row with no valid frame stays unmasked and does not take
            part in the equalisation.
        generator: a CPU ``torch.Generator`` for reproducible masks (the global RNG if ``None``).

    Returns:
        A ``(batch, frames)`` bool tensor (on ``attention_mask``'s device if given, else CPU),
        True on masked frames. See the module docstring for the exact rule.
    """
    _validate(mask_prob, mask_length, min_masks)
    batch, frames = shape
    if attention_mask is not None and tuple(attention_mask.shape) != (batch, frames):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch, frames)}."
        )
    valid = (
        torch.ones((batch, frames), dtype=torch.bool)
        if attention_mask is None
        else attention_mask.bool().cpu()
    )
    if batch == 0 or frames == 0:
        return torch.zeros((batch, frames), dtype=torch.bool, device=valid.device)

    lengths = valid.sum(dim=1)
    rounding = torch.rand((batch,), generator=generator, dtype=torch.float64)  # random rounding, per row
    num_spans = torch.floor(mask_prob * lengths.double() / mask_length + rounding).long().clamp(min=min_masks)
    # starts among the first n - mask_length positions, a reference quirk kept on purpose: the last frame is never masked
    num_starts = torch.where(lengths - mask_length > num_spans, lengths - mask_length, num_spans + 1)
    num_spans = torch.where(lengths > 0, num_spans, 0)
    width = max(frames, int(num_starts.max()))  # a short row's starts may lie past the tensor's end
    span = torch.full((batch,), mask_length)

    # spans are drawn in "valid-frame" coordinates, then scattered onto the valid positions
    in_valid = _expand_spans(_draw_span_starts(num_starts, num_spans, width, generator), span)[:, :frames]
    in_valid &= torch.arange(frames) < lengths[:, None]
    # a stable sort puts each row's valid frames first, in their order
    valid_positions = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)
    mask = torch.zeros_like(valid).scatter_(1, valid_positions, in_valid)

    mask = _equalise_rows(mask, lengths > 0, generator)
    return mask if attention_mask is None else mask.to(attention_mask.device)
