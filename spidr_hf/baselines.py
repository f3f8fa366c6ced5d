"""Classical frame features and their k-means units: what a user gets without self-supervised learning.

SpidR's units have to beat these on the same audio to show that pretraining learnt something:

* ``"logmel"``: 40 log mel-filterbank energies;
* ``"mfcc"``: 13 MFCCs with their deltas and delta-deltas (39 values).

Both are computed with torchaudio on the model's own frame grid (window = the conv stack's
receptive field, hop = its hop, no centring), so frame ``t`` reads the same samples
``[hop t, hop t + receptive_field)`` as the model's frame ``t`` and the two unit sequences align
with the same phone labels. Each utterance is normalised to zero mean and unit variance per
dimension (CMVN), the usual practice for k-means on such features.

:class:`BaselineQuantizer` fits k-means (:func:`spidr_hf.units.fit_kmeans`) on the frames of some
audio and maps any waveform to one unit per frame.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio

from .modeling import FrameGeometry
from .runs import atomic_write, load_safetensors, save_safetensors
from .units import fit_kmeans

FEATURES = ("logmel", "mfcc")
"""The baseline feature kinds."""

NUM_MEL_BANDS = 40
NUM_CEPSTRA = 13
_CMVN_EPS = 1e-5


def _check_kind(kind: str) -> None:
    if kind not in FEATURES:
        raise ValueError(f"unknown baseline features {kind!r}: choose one of {', '.join(FEATURES)}.")


def _mel_options(geometry: FrameGeometry) -> dict:
    window = geometry.receptive_field
    return {"n_fft": window, "win_length": window, "hop_length": geometry.hop, "n_mels": NUM_MEL_BANDS, "center": False}


def frame_features(wave: np.ndarray | torch.Tensor, kind: str, geometry: FrameGeometry | None = None) -> torch.Tensor:
    """``(frames, dims)`` float32 features of a mono waveform at ``geometry.sampling_rate``.

    ``frames`` equals ``geometry.num_frames(len(wave))``, the model's frame count for the same audio.

    Raises:
        ValueError: an unknown ``kind``, a waveform that is not 1-D, or one shorter than a frame.
    """
    _check_kind(kind)
    geometry = geometry or FrameGeometry()
    samples = torch.as_tensor(np.asarray(wave, dtype=np.float32) if not torch.is_tensor(wave) else wave).float()
    if samples.dim() != 1:
        raise ValueError(f"baseline features need a 1-D (mono) waveform, got shape {tuple(samples.shape)}.")
    if samples.numel() < geometry.receptive_field:
        raise ValueError(
            f"a waveform of {samples.numel()} samples is shorter than one frame ({geometry.receptive_field} samples)."
        )
    if kind == "logmel":
        mel = torchaudio.transforms.MelSpectrogram(geometry.sampling_rate, **_mel_options(geometry))
        features = torch.log(mel(samples) + 1e-6)
    else:
        mfcc = torchaudio.transforms.MFCC(geometry.sampling_rate, n_mfcc=NUM_CEPSTRA, melkwargs=_mel_options(geometry))
        cepstra = mfcc(samples)
        deltas = torchaudio.functional.compute_deltas(cepstra)
        features = torch.cat([cepstra, deltas, torchaudio.functional.compute_deltas(deltas)])
    features = features.T  # (frames, dims)
    return (features - features.mean(0)) / (features.std(0, correction=0) + _CMVN_EPS)


@dataclass
class BaselineQuantizer:
    """K-means centroids of one baseline feature kind: ``quantizer(wave)`` gives one unit per frame."""

    kind: str
    centroids: torch.Tensor  # (k, dims) float32
    geometry: FrameGeometry = field(default_factory=FrameGeometry)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if self.centroids.dim() != 2:
            raise ValueError(f"centroids must be (k, dims), got shape {tuple(self.centroids.shape)}.")

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @classmethod
    def fit(
        cls,
        waves: Iterable[np.ndarray | torch.Tensor],
        kind: str,
        k: int,
        *,
        seed: int = 0,
        geometry: FrameGeometry | None = None,
    ) -> BaselineQuantizer:
        """K-means with ``k`` clusters on every frame of ``waves``.

        Raises:
            ValueError: the waves hold fewer frames than ``k`` (naming both numbers).
        """
        _check_kind(kind)
        geometry = geometry or FrameGeometry()
        frames = [frame_features(wave, kind, geometry) for wave in waves]
        total = sum(f.shape[0] for f in frames)
        if not 0 < k <= total:
            raise ValueError(
                f"cannot fit {k} {kind} clusters on {total} frames: give more audio or fewer clusters."
            )
        centroids = fit_kmeans(torch.cat(frames), k, seed=seed, backend="torch").centroids
        return cls(kind, centroids, geometry)

    def __call__(self, wave: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(frames,)`` int64 units: the nearest centroid of each frame's features."""
        features = frame_features(wave, self.kind, self.geometry)
        return torch.cdist(features, self.centroids).argmin(-1)

    def filename(self) -> str:
        return f"kmeans_{self.kind}_k{self.k}.safetensors"

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/kmeans_<kind>_k<k>.safetensors`` (centroids, with the kind and frame geometry as metadata)."""
        path = Path(folder) / self.filename()
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "kind": self.kind,
            "conv_kernel": json.dumps(list(self.geometry.conv_kernel)),
            "conv_stride": json.dumps(list(self.geometry.conv_stride)),
            "sampling_rate": str(self.geometry.sampling_rate),
        }
        centroids = {"centroids": self.centroids.contiguous()}
        atomic_write(path, lambda tmp: save_safetensors(centroids, tmp, metadata))  # a full disk leaves no half file
        return path

    @classmethod
    def load(cls, path: str | Path) -> BaselineQuantizer:
        tensors, metadata = load_safetensors(path, "kind", "a baseline quantizer")
        geometry = FrameGeometry(
            json.loads(metadata["conv_kernel"]), json.loads(metadata["conv_stride"]), int(metadata["sampling_rate"])
        )
        return cls(metadata["kind"], tensors["centroids"], geometry)


__all__ = ["FEATURES", "BaselineQuantizer", "frame_features"]
