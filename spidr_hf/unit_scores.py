"""Unit quality on a phone-aligned corpus, side by side: a model's head units, its layers' features
with k-means, and the classical baselines (:mod:`spidr_hf.baselines`).

Everything that is fitted (k-means) is fitted on one corpus and scored on another, so that a
number says how units do on speech the model and the clusters have not seen:

    fit, held_out = AlignedCorpus.load("corpus", max_minutes=3), AlignedCorpus.load("heldout")
    scores = score_model(model, fit, held_out, k=64)        # {"head": {3: {...}}, "kmeans": {1: {...}, ...}}
    logmel = score_baseline("logmel", fit, held_out, k=64)  # {"pnmi": ..., "phone_purity": ..., ...}

:class:`UnitQualityCallback` scores a model this way every few hundred pretraining steps: the
learning curve of its units.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from .audio import load_audio, standardize
from .baselines import BaselineQuantizer
from .evaluation import (
    FrameCounts,
    abx_error_rates,
    count_frames,
    infer_frames_per_unit,
    metrics_from_counts,
    pair_frames,
    read_alignments,
    read_phone_inventory,
)
from .modeling import SAMPLING_RATE, num_frames
from .sources import AudioInputs
from .units import fit_kmeans


# --------------------------------------------------------------------------- corpus
@dataclass
class AlignedCorpus:
    """Waveforms and frame-level phone labels of a corpus in the layout `spidr-hf synth-corpus` writes
    (`manifest.jsonl` with `id` and `path`, `alignments.jsonl`, `phones.txt`)."""

    root: Path
    ids: list[str]
    waves: list[np.ndarray] = field(repr=False)  # mono float32 at 16 kHz, as decoded
    phones: list[list[str]] = field(repr=False)  # one label per frame
    phone_order: list[str] = field(repr=False)
    frames_per_unit: int = 1  # phone frames per 20 ms frame (2: 10 ms alignments, paired the paper's way)

    @classmethod
    def load(cls, root: str | Path, max_minutes: float | None = None) -> AlignedCorpus:
        """The corpus in `root`, or its first utterances up to `max_minutes` of audio.

        Raises:
            FileNotFoundError: `root` lacks `manifest.jsonl` or `alignments.jsonl`.
            ValueError: an utterance has no alignment.
        """
        root = Path(root)
        for name in ("manifest.jsonl", "alignments.jsonl"):
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root} is not an aligned corpus: it has no {name} (see spidr-hf synth-corpus).")
        alignments = read_alignments(root / "alignments.jsonl")
        order = read_phone_inventory(root / "phones.txt") if (root / "phones.txt").is_file() else sorted(
            {p for labels in alignments.values() for p in labels}
        )
        ids, waves, phones, samples = [], [], [], 0
        for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
            if max_minutes is not None and samples >= max_minutes * 60 * SAMPLING_RATE:
                break
            record = json.loads(line)
            if record["id"] not in alignments:
                raise ValueError(f"{root}: utterance {record['id']!r} has no alignment in alignments.jsonl.")
            wave = load_audio(root / record["path"])
            ids.append(record["id"])
            waves.append(wave)
            phones.append(alignments[record["id"]])
            samples += wave.size
        return cls(root, ids, waves, phones, order)

    @classmethod
    def from_inputs(
        cls,
        inputs: AudioInputs,
        alignments: Mapping[str, Sequence[str]] | None = None,
        phone_order: Sequence[str] | None = None,
        frames_per_unit: int | None = 1,
    ) -> AlignedCorpus:
        """The utterances of `inputs` (`spidr_hf.sources.collect_inputs`), decoded, with their `alignments`
        (any format `spidr_hf.evaluation.read_alignments` reads, keyed by the same ids).

        Without `alignments` the corpus has no labels: it can only fit k-means. `frames_per_unit` None
        infers it from the lengths (`spidr_hf.evaluation.infer_frames_per_unit`, against the frames of
        the default convolution stack).

        Raises:
            ValueError: an utterance has no alignment, or its lengths do not pair (naming it).
        """
        ids = [item.id for item in inputs.items]
        if alignments is not None:
            missing = [i for i in ids if i not in alignments]
            if missing:
                raise ValueError(
                    f"{len(missing)} audio files have no alignment: {', '.join(map(repr, missing[:5]))} "
                    "(ids are audio paths relative to the folder, without extension: name the alignments so)."
                )
        waves = [inputs.decode(item) for item in inputs.items]
        phones = [list(alignments[i]) for i in ids] if alignments is not None else [[] for _ in ids]
        order = list(phone_order) if phone_order else sorted({p for labels in phones for p in labels})
        corpus = cls(Path("."), ids, waves, phones, order)
        if alignments is not None:
            frames = {i: range(num_frames(w.size)) for i, w in zip(ids, waves, strict=True)}
            labels = dict(zip(ids, phones, strict=True))
            corpus.frames_per_unit = frames_per_unit or infer_frames_per_unit(labels, frames)
            pair_frames(labels, frames, frames_per_unit=corpus.frames_per_unit)  # lengths checked before encoding
        return corpus

    @property
    def minutes(self) -> float:
        return sum(w.size for w in self.waves) / SAMPLING_RATE / 60

    @property
    def num_frames(self) -> int:
        return sum(len(p) for p in self.phones)


def score_units(units: Sequence[Sequence[int]], corpus: AlignedCorpus, codebook_size: int) -> tuple[dict, FrameCounts]:
    """Metrics (`spidr_hf.evaluation.metrics_from_counts`) of one unit sequence per utterance of `corpus`."""
    pairs = pair_frames(
        dict(zip(corpus.ids, corpus.phones, strict=True)),
        {i: np.asarray(u).tolist() for i, u in zip(corpus.ids, units, strict=True)},
        frames_per_unit=corpus.frames_per_unit,
    )
    frames = count_frames(
        pairs, codebook_size=codebook_size, phones=corpus.phone_order, frames_per_unit=corpus.frames_per_unit
    )
    return metrics_from_counts(frames), frames


# --------------------------------------------------------------------------- model frames
@dataclass
class ModelFrames:
    """Per utterance: each layer's before-residual features and, for a pretraining model, each head's units."""

    features: dict[int, list[torch.Tensor]]  # 1-based layer -> [(frames, hidden)] float32
    head_units: dict[int, list[np.ndarray]]  # codebook layer -> [(frames,)] int64


@torch.no_grad()
def encode(model: Any, corpus: AlignedCorpus, layers: Iterable[int] | None = None) -> ModelFrames:
    """Run `model` (a `SpidRForPreTraining` or `SpidRModel`) in eval mode on every utterance of `corpus`, one at a time.

    `layers`: the 1-based layers whose features are kept (default: all).
    """
    encoder = getattr(model, "spidr", model)
    config = encoder.config
    layers = list(range(1, config.num_hidden_layers + 1) if layers is None else layers)
    heads = hasattr(model, "head_units")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    frames = ModelFrames({layer: [] for layer in layers}, {layer: [] for layer in config.codebook_layers} if heads else {})
    try:
        for wave in corpus.waves:
            values = torch.from_numpy(standardize(wave))[None].to(device)
            output = encoder(values, output_hidden_states=True)
            for layer in layers:
                frames.features[layer].append(output.before_residual_states[layer - 1][0].float().cpu())
            for layer in frames.head_units:
                feature_layer, representation = config.head_input_of(layer)
                source = (
                    output.before_residual_states[feature_layer - 1]
                    if representation == "before_residual"
                    else output.last_hidden_state
                )
                frames.head_units[layer].append(model.head_units(source[0], layer).cpu().numpy())
    finally:
        model.train(was_training)
    return frames


def kmeans_units(
    fit: Sequence[torch.Tensor], evaluate: Sequence[torch.Tensor], k: int, seed: int = 0
) -> list[np.ndarray]:
    """Fit k-means with `k` clusters on the frames of `fit` and give the units of each sequence of `evaluate`.

    Raises:
        ValueError: `fit` holds fewer frames than `k` (naming both numbers).
    """
    total = sum(f.shape[0] for f in fit)
    if not 0 < k <= total:
        raise ValueError(f"cannot fit {k} clusters on {total} frames: give more audio or fewer clusters.")
    centroids = fit_kmeans(torch.cat(list(fit)), k, seed=seed, backend="torch").centroids
    return [torch.cdist(f, centroids).argmin(-1).numpy() for f in evaluate]


# --------------------------------------------------------------------------- side by side
def model_units(
    model: Any,
    fit: AlignedCorpus,
    evaluate: AlignedCorpus,
    k: int,
    kmeans_layers: Iterable[int] | None = None,
    seed: int = 0,
) -> dict[str, dict[int, list[np.ndarray]]]:
    """`{"head": {layer: units}, "kmeans": {layer: units}}` of `model` on `evaluate`, one array per utterance.

    Head units: the argmax of each codebook layer's head. K-means units: `k` clusters of a layer's
    before-residual features, fitted on `fit`, for each layer of `kmeans_layers` (default: all).
    """
    kmeans_layers = list(kmeans_layers) if kmeans_layers is not None else None
    evaluated = encode(model, evaluate, kmeans_layers)
    fitted = encode(model, fit, kmeans_layers) if evaluated.features and fit is not evaluate else evaluated
    return _units_of_frames(evaluated, fitted, k, seed)


def _units_of_frames(
    evaluated: ModelFrames, fitted: ModelFrames, k: int, seed: int
) -> dict[str, dict[int, list[np.ndarray]]]:
    """:func:`model_units` of frames already encoded (k-means fitted on `fitted`'s features)."""
    return {
        "head": evaluated.head_units,
        "kmeans": {
            layer: kmeans_units(fitted.features[layer], features, k, seed)
            for layer, features in evaluated.features.items()
        },
    }


def score_model(
    model: Any,
    fit: AlignedCorpus,
    evaluate: AlignedCorpus,
    k: int,
    kmeans_layers: Iterable[int] | None = None,
    seed: int = 0,
) -> dict[str, dict[int, dict]]:
    """`{"head": {layer: metrics}, "kmeans": {layer: metrics}}` of :func:`model_units` on `evaluate`."""
    return _score_layer_units(model_units(model, fit, evaluate, k, kmeans_layers, seed), model, evaluate, k)


def _score_layer_units(
    units: dict[str, dict[int, list[np.ndarray]]], model: Any, evaluate: AlignedCorpus, k: int
) -> dict[str, dict[int, dict]]:
    """:func:`score_model` of :func:`model_units`' output (head units against the model's codebook size)."""
    codebook_size = getattr(model, "spidr", model).config.codebook_size
    return {
        "head": {layer: score_units(u, evaluate, codebook_size)[0] for layer, u in units["head"].items()},
        "kmeans": {layer: score_units(u, evaluate, k)[0] for layer, u in units["kmeans"].items()},
    }


def features_abx(
    item: str | Path, ids: Sequence[str], features: Sequence[torch.Tensor], **options: Any
) -> dict[str, float]:
    """`spidr_hf.evaluation.abx_error_rates` of one layer's features (one tensor per id; the item file's
    `#file` column names the ids), written to a temporary folder for fastabx to read."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="spidr-abx-") as folder:
        for utt_id, tensor in zip(ids, features, strict=True):
            path = Path(folder) / f"{utt_id}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"features": tensor.contiguous()}, path)
        return abx_error_rates(item, folder, extension=".safetensors", **options)


def layer_sweep(
    model: Any,
    fit: AlignedCorpus,
    evaluate: AlignedCorpus,
    k: int,
    layers: Sequence[int],
    seed: int = 0,
    abx_item: str | Path | None = None,
    abx_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per layer of `layers` (1-based), each layer encoded once: the metrics of its features +
    k-means units (`k` clusters fitted on `fit`) under `"kmeans"`, of its codebook head's units under
    `"head"` (None for a layer without a head, or a model without heads), and with `abx_item`, ABX error
    rates of its features (:func:`features_abx`; `abx_options` go to `abx_error_rates`)."""
    evaluated = encode(model, evaluate, layers)
    fitted = evaluated if fit is evaluate else encode(model, fit, layers)
    scores = _score_layer_units(_units_of_frames(evaluated, fitted, k, seed), model, evaluate, k)
    rows = []
    for layer in layers:
        row = {"layer": layer, "kmeans": scores["kmeans"][layer], "head": scores["head"].get(layer)}
        if abx_item is not None:
            row.update(features_abx(abx_item, evaluate.ids, evaluated.features[layer], **(abx_options or {})))
        rows.append(row)
    return rows


def baseline_units(kind: str, fit: AlignedCorpus, evaluate: AlignedCorpus, k: int, seed: int = 0) -> list[np.ndarray]:
    """`kind` (`"logmel"` / `"mfcc"`) k-means units fitted on `fit`, of each utterance of `evaluate`."""
    quantizer = BaselineQuantizer.fit(fit.waves, kind, k, seed=seed)
    return [quantizer(wave).numpy() for wave in evaluate.waves]


def score_baseline(
    kind: str, fit: AlignedCorpus, evaluate: AlignedCorpus, k: int, seed: int = 0
) -> tuple[dict, FrameCounts]:
    """Metrics (and counts) of :func:`baseline_units` on `evaluate`."""
    return score_units(baseline_units(kind, fit, evaluate, k, seed), evaluate, k)


def best_layer(scores: dict[int, dict], metric: str = "pnmi") -> int:
    """The layer with the highest `metric` (the first one on ties)."""
    return max(scores, key=lambda layer: (scores[layer][metric], -layer))


# --------------------------------------------------------------------------- learning curve
class UnitQualityCallback(TrainerCallback):
    """Score the model's units on held-out audio every `every` optimizer steps (and after the last one).

    Each entry of `history` holds the step, the PNMI of each codebook layer's head units
    (`head`) and of k-means units of the layers in `kmeans_layers` (`kmeans`), and the seconds
    the scoring took (not counted as training time by the caller).
    """

    def __init__(
        self,
        fit: AlignedCorpus,
        evaluate: AlignedCorpus,
        k: int,
        every: int,
        kmeans_layers: Iterable[int] = (),
        seed: int = 0,
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be a positive number of steps, got {every}.")
        self.fit, self.evaluate, self.k, self.every = fit, evaluate, k, every
        self.kmeans_layers, self.seed = list(kmeans_layers), seed
        self.history: list[dict[str, Any]] = []

    def score(self, model: Any, step: int) -> dict[str, Any]:
        started = time.perf_counter()
        scores = score_model(model, self.fit, self.evaluate, self.k, self.kmeans_layers, self.seed)
        entry = {
            "step": step,
            "head": {layer: m["pnmi"] for layer, m in scores["head"].items()},
            "kmeans": {layer: m["pnmi"] for layer, m in scores["kmeans"].items()},
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.history.append(entry)
        return entry

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every == 0 or step == state.max_steps:
            self.score(getattr(model, "module", model), step)


__all__ = [
    "AlignedCorpus",
    "ModelFrames",
    "UnitQualityCallback",
    "baseline_units",
    "best_layer",
    "encode",
    "features_abx",
    "kmeans_units",
    "layer_sweep",
    "model_units",
    "score_baseline",
    "score_model",
    "score_units",
]
