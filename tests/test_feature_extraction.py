"""SpidRFeatureExtractor: input kinds, standardisation, padding, resampling and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from spidr_hf import SpidRFeatureExtractor


@pytest.fixture
def extractor() -> SpidRFeatureExtractor:
    return SpidRFeatureExtractor()


def _sine(n: int, rate: int = 16000, freq: float = 220.0, amplitude: float = 0.3) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate) + 0.05).astype(np.float32)


def test_standardises_each_utterance_over_its_valid_samples(extractor):
    a, b = _sine(8000), 3 * _sine(5000, freq=330)
    out = extractor([a, b], sampling_rate=16000, return_tensors="pt")
    values, mask = out["input_values"], out["attention_mask"]
    assert values.shape == (2, 8000) and values.dtype == torch.float32
    assert mask.sum(-1).tolist() == [8000, 5000]
    for row, n in zip(values, (8000, 5000), strict=True):
        assert abs(row[:n].mean().item()) < 1e-5 and abs(row[:n].std(unbiased=False).item() - 1) < 1e-3
    assert torch.count_nonzero(values[1, 5000:]) == 0


@pytest.mark.parametrize("pad_to_multiple_of", [None, 3000])
def test_truncated_utterances_are_standardised_after_truncation(extractor, pad_to_multiple_of):
    """Truncation used to cut an already standardised utterance: its kept part was not zero-mean."""
    rising = [_sine(n) + np.linspace(0, 2, n, dtype=np.float32) for n in (20_000, 9_000, 5_000)]
    out = extractor(rising, sampling_rate=16000, truncation=True, max_length=8000, padding="max_length",
                    pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")  # fmt: skip
    kept = 8000 if pad_to_multiple_of is None else 9000  # max_length rounded up, as SequenceFeatureExtractor does
    values, mask = out["input_values"], out["attention_mask"]
    assert values.shape == (3, kept) and mask.sum(-1).tolist() == [kept, kept, 5000]
    for row, n in zip(values, (kept, kept, 5000), strict=True):
        assert abs(row[:n].mean().item()) < 1e-5 and abs(row[:n].std(unbiased=False).item() - 1) < 1e-3
    with pytest.raises(ValueError, match="truncation=True needs max_length"):
        extractor(rising, sampling_rate=16000, truncation=True)


def test_loud_audio_is_standardised_not_zeroed(extractor):
    """1e30-amplitude samples overflowed the float32 variance, giving the zeros of silence."""
    wave = _sine(8000)
    loud = extractor(wave.astype(np.float64) * 1e30, sampling_rate=16000, return_tensors="np")["input_values"]
    normal = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(loud, normal, atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda w: w,
        lambda w: torch.from_numpy(w),
        lambda w: w.astype(np.float64),
        lambda w: w.tolist(),
        lambda w: (w * 32767).astype(np.int16),
        lambda w: (w * 2147483647).astype(np.int32),
    ],
    ids=["float32", "tensor", "float64", "list", "int16", "int32"],
)
def test_accepts_common_input_kinds(extractor, make):
    wave = _sine(4000)
    want = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"]
    got = extractor(make(wave), sampling_rate=16000, return_tensors="np")["input_values"]
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_two_dimensional_array_is_a_batch(extractor):
    batch = np.stack([_sine(4000), _sine(4000, freq=440)])
    out = extractor(batch, sampling_rate=16000, return_tensors="pt")
    assert out["input_values"].shape == (2, 4000)


def test_resamples_other_rates(extractor):
    wave = _sine(44100, rate=44100)
    out = extractor(wave, sampling_rate=44100, return_tensors="np")["input_values"]
    assert out.shape == (1, 16000)
    want = extractor(_sine(16000), sampling_rate=16000, return_tensors="np")["input_values"]
    # a resampled 220 Hz sine is still the same 220 Hz sine
    np.testing.assert_allclose(out[0, 100:-100], want[0, 100:-100], atol=2e-2)


def test_missing_sampling_rate_warns_once(extractor, caplog):
    from transformers.utils import logging as hf_logging

    logging.Logger.warning_once.cache_clear()  # transformers' warning_once is a process-wide lru_cache
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            extractor(_sine(4000))
            extractor(_sine(4000))
    finally:
        hf_logging.disable_propagation()
    warnings = [r for r in caplog.records if "sampling_rate" in r.getMessage()]
    assert len(warnings) == 1
    assert "assuming 16000 Hz" in warnings[0].getMessage()


@pytest.mark.parametrize(
    "audio, message",
    [
        (np.zeros((16000, 2), np.float32), "multi-channel.*mean"),
        ([np.zeros((2, 16000), np.float32)], "multi-channel"),
        (np.zeros((1, 2, 16000), np.float32), "multi-channel"),
        (np.zeros(0, np.float32), "empty"),
        (np.zeros(399, np.float32), "fewer than the 400 samples"),
        (np.array([0.1] * 500 + [np.nan], np.float32), "NaN or infinite"),
        (np.array([0.1] * 500 + [np.inf], np.float32), "NaN or infinite"),
        ([], "empty batch"),
    ],
)
def test_bad_input_is_rejected_clearly(extractor, audio, message):
    with pytest.raises(ValueError, match=message):
        extractor(audio, sampling_rate=16000)


def test_bad_types_are_rejected_clearly(extractor):
    with pytest.raises(TypeError, match="Unsupported audio input"):
        extractor("hello.wav", sampling_rate=16000)
    with pytest.raises(TypeError, match="sample type"):
        extractor(np.zeros(1000, dtype=np.uint8), sampling_rate=16000)


def test_short_audio_after_resampling_is_rejected(extractor):
    with pytest.raises(ValueError, match="fewer than"):
        extractor(_sine(600, rate=48000), sampling_rate=48000)


def test_save_and_load_round_trip(tmp_path, extractor):
    extractor.save_pretrained(tmp_path)
    loaded = SpidRFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
