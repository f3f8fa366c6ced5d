"""Tests of spidr_hf.training.masking: frame counts and span masks."""

from __future__ import annotations

import pytest
import torch
from spidr_hf.modeling import num_frames
from spidr_hf.training.masking import compute_span_mask


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_num_frames_follows_the_conv_stack():
    # 20 ms frames: 320 samples per frame with a 400-sample receptive field
    assert num_frames(320_000) == 999
    assert num_frames(16_000) == 49
    assert num_frames(2_000) == 6
    assert num_frames(400) == 1 and num_frames(399) == 0 and num_frames(0) == 0
    assert num_frames(100, conv_kernel=[10], conv_stride=[5]) == 19


def test_same_masked_count_in_every_row():
    mask = compute_span_mask((16, 500), generator=generator())
    counts = mask.sum(dim=1)
    assert mask.dtype == torch.bool and mask.shape == (16, 500)
    assert bool((counts == counts[0]).all()) and counts[0] > 0


def test_masked_fraction_for_long_rows():
    # 40 spans of 10 over 500 frames would cover 0.8 without overlap; overlaps bring it near 0.57
    fractions = [
        compute_span_mask((1, 500), generator=generator(s)).float().mean().item() for s in range(100)
    ]
    mean = sum(fractions) / len(fractions)
    assert 0.5 < mean < 0.65
    batch_fraction = compute_span_mask((8, 500), generator=generator()).float().mean().item()
    assert 0.4 < batch_fraction < 0.8  # equalising to the sparsest row lowers it a little


def test_at_least_min_masks_spans():
    # 30 frames: int(0.8 * 3 + u) = 2 or 3 spans; with min_masks=5, at least 5 distinct starts
    for seed in range(20):
        mask = compute_span_mask(
            (4, 30), mask_prob=0.1, mask_length=3, min_masks=5, generator=generator(seed)
        )
        assert bool((mask.sum(dim=1) >= 3 + 4).all())  # 5 distinct starts cover >= span + 4 frames
    mask = compute_span_mask((4, 100), mask_prob=0.0, min_masks=2, generator=generator())
    assert bool((mask.sum(dim=1) >= 11).all())  # two distinct 10-frame spans


def test_rows_shorter_than_the_span_are_clamped():
    mask = compute_span_mask((3, 6), mask_length=10, generator=generator())
    assert bool(mask.all())  # one span clamped to the whole 6-frame row
    assert compute_span_mask((2, 0), generator=generator()).shape == (2, 0)


def test_padding_is_never_masked():
    lengths = torch.tensor([500, 300, 120, 7, 0])
    attention_mask = torch.arange(500)[None, :] < lengths[:, None]
    for seed in range(10):
        mask = compute_span_mask((5, 500), attention_mask=attention_mask, generator=generator(seed))
        assert not bool((mask & ~attention_mask).any())
        counts = mask.sum(dim=1)
        assert bool((counts[:4] == counts[0]).all()) and counts[4] == 0  # empty row excluded


def test_non_prefix_attention_mask():
    attention_mask = torch.zeros((2, 40), dtype=torch.bool)
    attention_mask[:, ::2] = True  # every other frame valid
    mask = compute_span_mask((2, 40), mask_length=4, attention_mask=attention_mask, generator=generator())
    assert not bool((mask & ~attention_mask).any())
    assert mask.sum(dim=1)[0] == mask.sum(dim=1)[1] > 0


def test_deterministic_with_a_seeded_generator():
    a = compute_span_mask((4, 200), generator=generator(7))
    b = compute_span_mask((4, 200), generator=generator(7))
    c = compute_span_mask((4, 200), generator=generator(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        compute_span_mask((2, 10), mask_prob=1.5)
    with pytest.raises(ValueError):
        compute_span_mask((2, 10), mask_length=0)
    with pytest.raises(ValueError):
        compute_span_mask((2, 10), attention_mask=torch.ones(2, 11, dtype=torch.bool))
