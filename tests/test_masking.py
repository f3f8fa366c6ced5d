"""Tests of spidr_hf.training.masking: frame counts and span masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import FIXTURE_DIR
from spidr_hf.modeling import num_frames
from spidr_hf.training.masking import compute_span_mask

TRAJECTORY_DIR = FIXTURE_DIR.parent / "upstream-spidr-trajectory"


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


def test_rows_shorter_than_the_span_are_masked_whole():
    mask = compute_span_mask((3, 6), mask_length=10, generator=generator())
    assert bool(mask.all())  # 2 spans start among the first 3 frames and run past the row's end
    assert compute_span_mask((2, 0), generator=generator()).shape == (2, 0)


def test_a_row_too_short_for_its_spans_draws_starts_among_the_first_spans_plus_one():
    """12 frames, 2 spans of 10: 12 - 10 <= 2, so the 2 starts are 2 of frames {0, 1, 2} (the reference's rule)."""
    masks = torch.stack([compute_span_mask((1, 12), generator=generator(s))[0] for s in range(300)])
    assert bool(masks[:, 1:11].all())  # every pair of starts among {0, 1, 2} covers frames 1-10
    # frame 0 is masked unless the starts are {1, 2}, the last frame unless they are {0, 1}: 2 times in 3
    for frame in (0, 11):
        assert masks[:, frame].float().mean().item() == pytest.approx(2 / 3, abs=5 * (2 / 9 / 300) ** 0.5)


def test_the_random_rounding_is_drawn_per_row():
    """0.1 x 50 / 10 = 0.5 spans: each row rounds to 0 or 1 span, half the time each. Rows share the
    smallest count, so a batch of 4 is masked only when all its rows draw 1 span: 1/16 of the time
    (1/2 were the rounding drawn once per batch). The fixture's draws cannot resolve this difference at
    5 sigma (it moves 49 x 8 batches by 0.005 masked), hence this test."""
    draws = 400
    masked = [bool(compute_span_mask((4, 50), 0.1, 10, 0, generator=generator(s)).any()) for s in range(draws)]
    assert sum(masked) / draws == pytest.approx(1 / 16, abs=5 * math.sqrt(1 / 16 * 15 / 16 / draws))


def test_the_last_frame_is_never_masked():
    for frames, batch in ((25, 2), (49, 8), (200, 4)):
        masks = torch.stack([compute_span_mask((batch, frames), generator=generator(s)) for s in range(50)])
        assert not bool(masks[..., -1].any()) and bool(masks[..., -2].any())


@pytest.fixture(scope="module")
def mask_statistics() -> dict:
    if not (TRAJECTORY_DIR / "mask-statistics.json").is_file():
        pytest.skip(f"reference mask statistics not found at {TRAJECTORY_DIR} (they live in ../shared, next to the repo)")
    return json.loads((TRAJECTORY_DIR / "mask-statistics.json").read_text())


def _differ(p_ref: np.ndarray, n_ref: int, p_ours: np.ndarray, n_ours: int) -> np.ndarray:
    """|difference| in standard errors of two binomial frequency estimates (pooled variance)."""
    pooled = (p_ref * n_ref + p_ours * n_ours) / (n_ref + n_ours)
    sigma = np.sqrt(pooled * (1 - pooled) * (1 / n_ref + 1 / n_ours))
    return np.abs(p_ref - p_ours) / np.maximum(sigma, 1e-12)


OUR_DRAWS = 2_000


@pytest.mark.slow
def test_masks_follow_the_reference_distribution(mask_statistics):
    """Per-position mask frequency and the masked-count histogram against the reference collator's.

    Both sides are samples: a frequency measured on N draws has a binomial standard error
    sqrt(p (1 - p) / N) (rows of a draw share its masked count, so the histogram counts draws; positions
    count rows). Each value must agree within 5 standard errors of the difference of the two
    estimates: over the ~1,500 values compared, a correct sampler fails with probability ~1e-3.
    """
    assert mask_statistics["masking"] == {"mask_length": 10, "mask_prob": 0.8, "min_masks": 2}
    gen = generator(2026)
    for case in mask_statistics["cases"]:
        frames, batch, draws = case["frames"], case["batch"], case["draws"]
        masks = torch.stack(
            [compute_span_mask((batch, frames), 0.8, 10, 2, generator=gen) for _ in range(OUR_DRAWS)]
        )  # (draws, batch, frames)
        where = f"{frames} frames x {batch} rows"
        counts = masks.sum(-1)
        assert bool((counts == counts[:, :1]).all()), where

        ours = masks.flatten(0, 1).double().mean(0).numpy()
        reference = np.asarray(case["position_frequency"])
        assert reference[-1] == 0 and ours[-1] == 0, where
        sigmas = _differ(reference, draws * batch, ours, OUR_DRAWS * batch)
        assert sigmas.max() < 5, f"{where}: frame {sigmas.argmax()} masked {ours[sigmas.argmax()]:.4f} vs {reference[sigmas.argmax()]:.4f}"

        sizes = sorted({*map(int, case["masked_per_row"]), *counts[:, 0].tolist()})
        reference_rows = draws * batch
        reference_hist = np.array([case["masked_per_row"].get(str(k), 0) / reference_rows for k in sizes])
        our_hist = np.array([(counts[:, 0] == k).double().mean().item() for k in sizes])
        sigmas = _differ(reference_hist, draws, our_hist, OUR_DRAWS)
        worst = sizes[int(sigmas.argmax())]
        assert sigmas.max() < 5, f"{where}: {worst} masked frames in {our_hist[sigmas.argmax()]:.4f} vs {reference_hist[sigmas.argmax()]:.4f}"
        mean_sigma = math.sqrt(reference_hist @ (np.array(sizes) / frames) ** 2 - case["mean_masked_fraction"] ** 2)
        assert ours.mean() == pytest.approx(case["mean_masked_fraction"], abs=5 * mean_sigma * math.sqrt(1 / draws + 1 / OUR_DRAWS))


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
