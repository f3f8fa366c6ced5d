"""Frame representations of a SpidR model and the discrete units computed from them.

Three kinds of units, all ``int64`` with ``-1`` on padded frames of a batch:

* **head units** (:func:`predict_units`): the argmax of the student prediction head that
  reads 1-based layer ``L`` (the paper's "codebook" units; layer 6 is best for the base
  SpidR). Only layers that feed a codebook have a head (``config.codebook_layers``).
* **codeword units** (:func:`codeword_units`): the nearest codeword of codebook ``L`` to the
  student's before-residual output of layer ``L``, instance-normalised over the utterance's
  valid frames exactly like the teacher targets in pretraining (``SPIDR.md``, "Targets").
  It is the student's version of the teacher's labelling (no teacher pass needed), assigned
  with :func:`spidr_hf.kernels.codebook_assign` (Triton on CUDA, PyTorch elsewhere).
* **k-means units** (:class:`KMeansQuantizer`): nearest centroid of a k-means fitted on one
  layer's features, for the encoder alone (any SpidR or DinoSR checkpoint, heads or not).

K-means is implemented in PyTorch rather than with scikit-learn's ``MiniBatchKMeans`` (the
usual HuBERT recipe): it runs where the features are (CUDA included, through the same
``codebook_assign`` kernel as pretraining), needs no extra dependency, and full-batch Lloyd
iterations are deterministic for a seed. Initialisation is k-means++ (D^2 sampling, one
candidate per step) on a random subsample of ``init_size`` frames. Memory is the features
plus ``O(k x D)``: assignment is chunked and never builds an ``N x k`` matrix. Use a subsample
of frames (a few hundred thousand) when the features do not fit the device.

:func:`deduplicate` collapses runs of repeated units (1-D), :func:`deduplicate_batch` does it
per row of a ``-1``-padded batch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .modeling import PADDING_UNIT, codebook_assign, masked_instance_norm
from .runs import atomic_write, load_safetensors, save_safetensors

REPRESENTATIONS = ("hidden_state", "before_residual")
"""``hidden_state``: a layer's post-LayerNorm output; ``before_residual``: its FFN output before the residual add."""


# --------------------------------------------------------------------------- representations
def resolve_layer(num_layers: int, layer: int | None, representation: str) -> int:
    """Validate a 1-based layer for ``representation`` (default: the last layer)."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}.")
    if layer is None:
        return num_layers
    lowest = 0 if representation == "hidden_state" else 1
    if not lowest <= int(layer) <= num_layers:
        raise ValueError(
            f"layer must be between {lowest} and {num_layers} for representation={representation!r}, got {layer} "
            "(layers are 1-based; layer 0 is the transformer input and exists only for 'hidden_state')."
        )
    return int(layer)


def select_layer(output: Any, layer: int, representation: str) -> torch.Tensor:
    """The ``(batch, frames, hidden)`` tensor of ``layer`` in a ``SpidRModelOutput``."""
    if representation == "before_residual":
        return output.before_residual_states[layer - 1]
    if output.hidden_states is None:  # computed without output_hidden_states: only the last layer exists
        return output.last_hidden_state
    return output.hidden_states[layer]


def encoder_of(model: nn.Module) -> nn.Module:
    """The ``SpidRModel`` of a ``SpidRForPreTraining`` (its student), or the model itself."""
    return getattr(model, "spidr", model)


def frame_mask_of(output: Any, features: torch.Tensor) -> torch.Tensor:
    """The output's bool ``(batch, frames)`` mask of real frames (all True without an attention mask)."""
    if output.frame_attention_mask is not None:
        return output.frame_attention_mask.bool()
    return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)


@torch.no_grad()
def layer_features(
    model: nn.Module,
    input_values: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    layer: int | None = None,
    representation: str = "hidden_state",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's frame features ``(batch, frames, hidden)`` and the bool mask of real frames."""
    encoder = encoder_of(model)
    layer = resolve_layer(encoder.config.num_hidden_layers, layer, representation)
    keep_all = not (representation == "hidden_state" and layer == encoder.config.num_hidden_layers)
    output = encoder(input_values, attention_mask=attention_mask, output_hidden_states=keep_all)
    features = select_layer(output, layer, representation)
    return features, frame_mask_of(output, features)


def _scatter_units(labels: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Labels of the real frames (row-major) -> ``(batch, frames)`` int64 with -1 on padding."""
    units = torch.full(frame_mask.shape, PADDING_UNIT, dtype=torch.int64, device=frame_mask.device)
    units[frame_mask] = labels.to(units.device)
    return units


# --------------------------------------------------------------------------- head units
def head_units_from_features(model: nn.Module, features: torch.Tensor, layer: int) -> torch.Tensor:
    """Argmax of the head of ``layer`` on features it reads (any leading shape, last axis hidden)."""
    return model.head_units(features, layer)


def predict_units(
    model: nn.Module, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, *, layer: int
) -> torch.Tensor:
    """Head units: ``(batch, frames)`` int64, the argmax of the head of 1-based ``layer``, -1 on padding.

    Args:
        model: a ``SpidRForPreTraining`` (it holds the heads; this is its ``predict_units``).
        input_values: standardised 16 kHz audio ``(batch, samples)`` (``SpidRFeatureExtractor`` output).
        attention_mask: 1 on real samples, 0 on padding.
        layer: a layer in ``model.config.codebook_layers``.
    """
    return model.predict_units(input_values, attention_mask, layer=layer)


# --------------------------------------------------------------------------- codeword units
@torch.no_grad()
def codeword_units_from_features(
    model: nn.Module, features: torch.Tensor, layer: int, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Codeword units of before-residual ``features`` ``(batch, frames, hidden)`` of ``layer``; -1 on padding.

    The features are instance-normalised over each utterance's real frames (as the teacher
    targets are) and assigned to the nearest codeword mean of codebook ``layer``.
    """
    index = model.config.codebook_index(layer)
    if frame_mask is None:
        frame_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    normed = masked_instance_norm(features.float(), frame_mask)
    codewords = model.codewords[index].float().to(features.device)
    labels = codebook_assign(
        normed[frame_mask][None], codewords[None], backend=model.config.codebook_backend
    ).labels
    return _scatter_units(labels[0], frame_mask)


@torch.no_grad()
def codeword_units(
    model: nn.Module, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, *, layer: int
) -> torch.Tensor:
    """Codeword units ``(batch, frames)`` int64 of codebook ``layer`` for a ``SpidRForPreTraining``; -1 on padding."""
    model.config.codebook_index(layer)
    features, frame_mask = layer_features(model, input_values, attention_mask, layer, "before_residual")
    return codeword_units_from_features(model, features, layer, frame_mask)


# --------------------------------------------------------------------------- deduplication
def deduplicate(units: Sequence[int] | np.ndarray | torch.Tensor, return_counts: bool = False) -> Any:
    """Collapse runs of repeated units in a 1-D sequence: ``[3, 3, 5, 5, 5, 3] -> [3, 5, 3]``.

    Returns the same kind as the input (list, numpy array or tensor); with ``return_counts``,
    also the run lengths (durations in frames) as the same kind.
    """
    if isinstance(units, torch.Tensor):
        _check_1d(units.shape)
        return torch.unique_consecutive(units, return_counts=return_counts)
    array = np.asarray(units)
    _check_1d(array.shape)
    if array.size == 0:
        starts = np.zeros(0, dtype=np.int64)
    else:
        starts = np.flatnonzero(np.r_[True, array[1:] != array[:-1]])
    values = array[starts]
    counts = np.diff(np.r_[starts, array.size])
    if not isinstance(units, np.ndarray):
        values, counts = values.tolist(), counts.tolist()
    return (values, counts) if return_counts else values


def _check_1d(shape: tuple[int, ...]) -> None:
    if len(shape) != 1:
        raise ValueError(
            f"deduplicate takes a 1-D sequence, got shape {tuple(shape)}; use deduplicate_batch for (batch, frames)."
        )


def deduplicate_batch(units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deduplicate each row of a ``(batch, frames)`` tensor whose padding is -1.

    Returns the deduplicated rows, left-aligned and padded with -1 to the longest, and their
    lengths. -1 entries are dropped before comparing, so padding never splits or joins runs.
    """
    if units.dim() != 2:
        raise ValueError(f"deduplicate_batch takes (batch, frames), got shape {tuple(units.shape)}.")
    real = units != PADDING_UNIT
    # move each row's real units to its front, in order (a stable sort on "is padding")
    packed = units.gather(1, torch.argsort((~real).to(torch.int8), dim=1, stable=True))
    previous = torch.cat([torch.full_like(packed[:, :1], PADDING_UNIT), packed[:, :-1]], dim=1)
    keep = (packed != PADDING_UNIT) & (packed != previous)
    lengths = keep.sum(1)
    width = int(lengths.max()) if lengths.numel() else 0
    out = torch.full((units.shape[0], width), PADDING_UNIT, dtype=units.dtype, device=units.device)
    out[torch.arange(width, device=units.device)[None] < lengths[:, None]] = packed[keep]
    return out, lengths


# --------------------------------------------------------------------------- k-means
class KMeansResult(NamedTuple):
    """``centroids`` (k, D) float32; ``inertia``: sum of squared distances at the last assignment; ``num_iterations``."""

    centroids: torch.Tensor
    inertia: float
    num_iterations: int


@torch.no_grad()
def fit_kmeans(
    features: torch.Tensor,
    k: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    init_size: int | None = None,
    backend: str = "auto",
) -> KMeansResult:
    """K-means++ initialisation then Lloyd iterations on ``features`` ``(N, D)``, on their device.

    Args:
        features: the frames to cluster (any float dtype; computed in fp32).
        k: number of clusters (at most N).
        max_iter: most Lloyd iterations.
        tol: stop when the inertia decreases by less than ``tol`` times itself.
        seed: seeds the subsample and the k-means++ draws.
        init_size: frames used by k-means++ (default ``min(N, max(20 k, 10_000))``).
        backend: assignment backend of :func:`spidr_hf.kernels.codebook_assign`.
    """
    x = features.float()
    if x.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(x.shape)}.")
    num_frames = x.shape[0]
    if not 0 < k <= num_frames:
        raise ValueError(f"k must be between 1 and the number of frames ({num_frames}), got {k}.")
    generator = torch.Generator(device=x.device).manual_seed(seed)
    init_size = min(num_frames, init_size or max(20 * k, 10_000))
    subsample = x[torch.randperm(num_frames, generator=generator, device=x.device)[:init_size]]
    centroids = kmeans_plusplus(subsample, k, generator)
    squared_norm_total = torch.linalg.vector_norm(x, dtype=torch.float64).square()
    previous = math.inf
    inertia, num_iterations = math.inf, 0
    while num_iterations < max_iter:
        num_iterations += 1
        assignment = codebook_assign(x[None], centroids[None], backend=backend)
        counts, sums = assignment.counts[0], assignment.sums[0]
        # sum ||x - c||^2 = sum ||x||^2 + sum_k (n_k ||c_k||^2 - 2 c_k . s_k): no per-frame pass needed
        inertia = float(squared_norm_total + (counts.double() * centroids.double().square().sum(-1)).sum()
                        - 2 * (centroids.double() * sums.double()).sum())  # fmt: skip
        centroids = _update_centroids(x, centroids, assignment.labels[0], counts, sums)
        if previous - inertia <= tol * max(inertia, 1e-12):
            break
        previous = inertia
    return KMeansResult(centroids, max(inertia, 0.0), num_iterations)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centroid drawn with probability proportional to D^2 (one candidate per step)."""
    first = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    centroids = [x[first[0]]]
    nearest = (x - centroids[0]).square().sum(-1)
    for _ in range(1, k):
        total = nearest.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            index = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)[0]
        else:
            index = torch.multinomial(nearest / total, 1, generator=generator)[0]
        centroids.append(x[index])
        nearest = torch.minimum(nearest, (x - x[index]).square().sum(-1))
    return torch.stack(centroids)


def _update_centroids(
    x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor
) -> torch.Tensor:
    """Means of the assigned frames; an empty cluster takes the frame farthest from its centroid."""
    updated = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    empty = torch.nonzero(counts == 0).flatten()
    if empty.numel():
        distances = (x - centroids[labels]).square().sum(-1)
        updated[empty] = x[distances.topk(empty.numel()).indices]
    return updated


@dataclass
class KMeansQuantizer:
    """K-means centroids of one layer's features, saved next to the model they were fitted for.

    The file ``MODEL_DIR/kmeans_layer{L}_k{K}.safetensors`` (``..._hidden_state.safetensors``
    for post-layer features) holds the ``centroids`` tensor and, as safetensors metadata,
    ``layer``, ``representation``, ``k`` and any ``info`` (e.g. inertia, frames fitted on).
    """

    centroids: torch.Tensor
    layer: int
    representation: str = "before_residual"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}.")
        if self.centroids.dim() != 2:
            raise ValueError(f"centroids must be (k, hidden), got shape {tuple(self.centroids.shape)}.")

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        k: int,
        layer: int,
        representation: str = "before_residual",
        **kwargs: Any,
    ) -> KMeansQuantizer:
        """Fit on ``(N, hidden)`` features of ``layer`` (keyword arguments go to :func:`fit_kmeans`)."""
        result = fit_kmeans(features, k, **kwargs)
        info = {
            "inertia": result.inertia,
            "num_iterations": result.num_iterations,
            "num_frames": features.shape[0],
        }
        return cls(result.centroids.cpu(), layer, representation, info)

    @staticmethod
    def filename(layer: int, k: int, representation: str = "before_residual") -> str:
        suffix = "" if representation == "before_residual" else f"_{representation}"
        return f"kmeans_layer{layer}_k{k}{suffix}.safetensors"

    def save_pretrained(self, model_dir: str | Path) -> Path:
        """Write the quantizer into ``model_dir`` (created if needed); returns the file path."""
        path = Path(model_dir) / self.filename(self.layer, self.k, self.representation)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"layer": str(self.layer), "representation": self.representation, "k": str(self.k),
                    "info": json.dumps(self.info)}  # fmt: skip
        centroids = {"centroids": self.centroids.detach().float().cpu().contiguous()}
        atomic_write(path, lambda tmp: save_safetensors(centroids, tmp, metadata))  # a full disk leaves no half file
        return path

    @classmethod
    def load(cls, path: str | Path) -> KMeansQuantizer:
        tensors, metadata = load_safetensors(path, "layer", "a KMeansQuantizer file")
        return cls(tensors["centroids"], int(metadata["layer"]), metadata.get("representation", "before_residual"),
                   json.loads(metadata.get("info", "{}")))  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        layer: int | None = None,
        k: int | None = None,
        representation: str | None = None,
    ) -> KMeansQuantizer:
        """The quantizer saved in ``model_dir`` for ``layer`` / ``k`` / ``representation`` (each optional if unique)."""
        candidates = []
        for path in sorted(Path(model_dir).glob("kmeans_layer*_k*.safetensors")):
            match = re.fullmatch(r"kmeans_layer(\d+)_k(\d+)(?:_(\w+))?\.safetensors", path.name)
            if match is None:
                continue
            found = (int(match[1]), int(match[2]), match[3] or "before_residual")
            if all(
                want is None or want == have
                for want, have in zip((layer, k, representation), found, strict=True)
            ):
                candidates.append(path)
        if len(candidates) != 1:
            wanted = f"layer={layer}, k={k}, representation={representation}"
            found = [p.name for p in candidates] or "none"
            raise FileNotFoundError(
                f"need exactly one k-means file in {model_dir} for {wanted}; found {found}."
            )
        return cls.load(candidates[0])

    @torch.no_grad()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid labels (int64) of ``features`` ``(..., hidden)``, shape ``(...)``."""
        centroids = self.centroids.to(features.device, torch.float32)
        flat = features.reshape(-1, features.shape[-1]).float()
        labels = codebook_assign(flat[None], centroids[None]).labels[0]
        return labels.reshape(features.shape[:-1])

    @torch.no_grad()
    def predict_units(
        self, model: nn.Module, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """K-means units ``(batch, frames)`` int64 of a SpidR model's features, -1 on padding."""
        features, frame_mask = layer_features(
            model, input_values, attention_mask, self.layer, self.representation
        )
        return _scatter_units(self(features[frame_mask]), frame_mask)


__all__ = [
    "REPRESENTATIONS",
    "KMeansQuantizer",
    "KMeansResult",
    "codeword_units",
    "codeword_units_from_features",
    "deduplicate",
    "deduplicate_batch",
    "fit_kmeans",
    "head_units_from_features",
    "layer_features",
    "predict_units",
    "resolve_layer",
    "select_layer",
]
