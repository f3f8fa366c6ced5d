"""Raw audio -> SpidR model inputs (16 kHz mono, standardised per utterance, padded)."""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import logging

from .configuration_spidr import SAMPLING_RATE, FrameGeometry

logger = logging.get_logger(__name__)

# Largest channel count we recognise in a channels-last (samples, channels) array.
_MAX_CHANNELS = 8


class SpidRFeatureExtractor(SequenceFeatureExtractor):
    r"""Prepares raw audio for [`SpidRModel`].

    Each utterance is converted to float32 mono at 16 kHz (resampled with torchaudio when
    `sampling_rate=` differs), standardised to zero mean and unit variance over its own samples
    (the model was trained on standardised audio), and the batch is zero-padded with an
    `attention_mask` (1 = real sample).

    Accepted inputs: a 1-D numpy array or torch tensor (one utterance), a 2-D one (a batch,
    one utterance per row, as in transformers' other audio feature extractors), or a list of
    1-D arrays / tensors / lists of floats. float16/32/64 are taken as is; int16 and int32 PCM
    are scaled to [-1, 1).

    Args:
        sampling_rate (`int`): the model's sampling rate (16000).
        padding_value (`float`): value of padded samples.
        do_normalize (`bool`): standardise each utterance (on by default: the model needs it).
        return_attention_mask (`bool`): return the sample-level attention mask by default.
        min_samples (`int`): shortest accepted utterance: the feature extractor's receptive
            field (400 samples, 25 ms); shorter audio yields no frame.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = SAMPLING_RATE,
        padding_value: float = 0.0,
        do_normalize: bool = True,
        return_attention_mask: bool = True,
        min_samples: int = FrameGeometry().receptive_field,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.do_normalize = do_normalize
        self.return_attention_mask = return_attention_mask
        self.min_samples = min_samples

    def __call__(
        self,
        raw_speech: Any,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Featurise one utterance or a batch; see the class docstring for accepted inputs.

        Args:
            raw_speech: the audio.
            sampling_rate (`int`, *optional*): sampling rate of `raw_speech`. Audio at another
                rate than the model's is resampled; leaving it out assumes the model's rate
                (and warns once).
            padding, max_length, truncation, pad_to_multiple_of, return_attention_mask,
            return_tensors: as in [`SequenceFeatureExtractor.pad`]; padding is on by default.
        """
        if sampling_rate is None:
            logger.warning_once(
                f"SpidRFeatureExtractor: no `sampling_rate` given; assuming {self.sampling_rate} Hz. "
                "Pass `sampling_rate=` so that audio at another rate is resampled instead of silently misread."
            )
            sampling_rate = self.sampling_rate
        waves = [self._validate(w, i) for i, w in enumerate(_as_utterances(raw_speech))]
        if sampling_rate != self.sampling_rate:
            waves = [self._resample(w, sampling_rate) for w in waves]
        if truncation:  # before standardising, so that what the model sees is zero-mean, unit-variance
            waves = [w[: _truncation_length(max_length, pad_to_multiple_of)] for w in waves]
        for i, wave in enumerate(waves):
            if wave.shape[0] < self.min_samples:
                raise ValueError(
                    f"Utterance {i} has {wave.shape[0]} samples at {self.sampling_rate} Hz, fewer than the "
                    f"{self.min_samples} samples ({1000 * self.min_samples / self.sampling_rate:.0f} ms) that one "
                    "output frame needs; pad or drop it."
                )
        if self.do_normalize:
            waves = [standardize(w) for w in waves]
        padded = self.pad(
            BatchFeature({"input_values": waves}),
            padding=padding,
            max_length=max_length,
            truncation=truncation,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=self.return_attention_mask if return_attention_mask is None else return_attention_mask,
            return_tensors=return_tensors,
        )
        return padded

    def _validate(self, wave: np.ndarray, index: int) -> np.ndarray:
        if wave.size == 0:
            raise ValueError(f"Utterance {index} is empty; remove it from the batch.")
        if not np.all(np.isfinite(wave)):
            raise ValueError(
                f"Utterance {index} contains NaN or infinite samples; fix or drop the audio "
                "(e.g. np.nan_to_num) before feature extraction."
            )
        return wave

    def _resample(self, wave: np.ndarray, orig_rate: int) -> np.ndarray:
        import torch
        import torchaudio.functional as AF

        return AF.resample(torch.from_numpy(wave), orig_rate, self.sampling_rate).numpy()


def standardize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (the recipe's per-utterance normalisation, as in Wav2Vec2FeatureExtractor).

    Defined here, not imported, so this file loads with `trust_remote_code` without spidr_hf;
    `spidr_hf.audio.standardize` is this function. Audio so loud that its float32 variance
    overflows (samples beyond about 1e19) is first scaled to a peak of 1: the result is the same
    up to the 1e-7 in the denominator, instead of the zeros of `x / inf`.
    """
    wave = wave.astype(np.float32, copy=False)
    with np.errstate(over="ignore"):  # an overflow is handled below
        mean, var = wave.mean(), wave.var()
    if not (np.isfinite(mean) and np.isfinite(var)):
        wave = wave / np.abs(wave).max()
        mean, var = wave.mean(), wave.var()
    return ((wave - mean) / np.sqrt(var + 1e-7)).astype(np.float32)


def _truncation_length(max_length: int | None, pad_to_multiple_of: int | None) -> int:
    """The length `SequenceFeatureExtractor.pad` truncates to: `max_length`, rounded up to `pad_to_multiple_of`."""
    if max_length is None:
        raise ValueError("truncation=True needs max_length (the longest utterance to keep, in samples).")
    if pad_to_multiple_of and max_length % pad_to_multiple_of:
        max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
    return max_length


def _as_utterances(raw_speech: Any) -> list[np.ndarray]:
    """Split the accepted input kinds into a list of 1-D float32 arrays; reject multi-channel audio."""
    if _is_array(raw_speech):
        array = _to_numpy(raw_speech)
        if array.ndim == 1:
            return [_to_float(array)]
        if array.ndim == 2:
            if array.shape[1] <= _MAX_CHANNELS < array.shape[0]:
                raise _multichannel_error(array.shape)
            return [_to_float(row) for row in array]
        raise _multichannel_error(array.shape)
    if isinstance(raw_speech, (list, tuple)):
        if len(raw_speech) == 0:
            raise ValueError("Got an empty batch; pass at least one utterance.")
        if all(isinstance(x, (int, float, np.number)) for x in raw_speech[:16]):
            return [_to_float(np.asarray(raw_speech))]
        utterances = []
        for item in raw_speech:
            array = _to_numpy(item) if _is_array(item) else np.asarray(item)
            if array.ndim != 1:
                raise _multichannel_error(array.shape)
            utterances.append(_to_float(array))
        return utterances
    raise TypeError(
        f"Unsupported audio input of type {type(raw_speech).__name__}: pass a numpy array, a torch tensor, "
        "a list of floats, or a list of those."
    )


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or type(x).__module__.startswith("torch")


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Unsupported audio input of type {type(x).__name__}.")
    if x.dtype in (torch.bfloat16, torch.float16):
        x = x.float()
    return x.detach().cpu().numpy()


def _to_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if array.dtype == np.int32:
        return (array.astype(np.float64) / 2147483648.0).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"Unsupported audio sample type {array.dtype}: pass float samples in [-1, 1] or int16/int32 PCM."
        )
    return array.astype(np.float32, copy=False)


def _multichannel_error(shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"Expected mono audio (one value per sample) but got an array of shape {tuple(shape)}, which looks "
        "multi-channel. Downmix it first, e.g. `audio.mean(axis=-1)` for (samples, channels) arrays "
        "or `audio.mean(axis=0)` for (channels, samples) ones; a batch must be a list of 1-D arrays "
        "or a 2-D (batch, samples) array."
    )


__all__ = ["SpidRFeatureExtractor"]
