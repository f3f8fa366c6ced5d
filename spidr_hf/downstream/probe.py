"""The SUPERB-style phone-recognition probe: what a frozen encoder offers a linear CTC recogniser.

The encoder stays frozen; a softmax-weighted sum of its layers (the transformer input and every
layer's output, as `SpidRForCTC(use_weighted_layer_sum=True)` reads them) feeds one linear layer
trained with CTC on phone targets; the phone error rate (PER) on held-out speech measures how
linearly the layers expose phones, and the learnt weights show which layers carry them. The same
probe on log-mel features (one "layer") is the reference a user compares with.

Every utterance's frames are computed once and kept in memory: with the encoder frozen, training
the probe on them equals training `SpidRForCTC` with a frozen base, at a fraction of the cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..baselines import frame_features
from ..modeling import SpidRFeatureExtractor, ctc_loss
from ..progress import progress_bar
from ..units import encoder_of
from .ctc_data import TranscribedSpeech, build_tokenizer, encode_targets, pad_labels
from .recognition import error_rate, greedy_ctc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSettings:
    """How the probe trains (the same for every feature kind, so their PERs compare)."""

    steps: int = 600
    batch_size: int = 8
    learning_rate: float = 1e-2
    seed: int = 0


class LayerSumCTCProbe(nn.Module):
    """Softmax-weighted sum of stacked feature layers `(batch, layers, frames, dim)`, then a linear CTC head."""

    def __init__(self, num_layers: int, dim: int, vocab_size: int):
        super().__init__()
        self.layer_weights = nn.Parameter(torch.zeros(num_layers))  # uniform after the softmax
        self.classifier = nn.Linear(dim, vocab_size)

    def forward(self, layers: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.layer_weights, dim=0)
        return self.classifier(torch.einsum("l,blfd->bfd", weights, layers))

    @property
    def normalised_weights(self) -> list[float]:
        return torch.softmax(self.layer_weights.detach(), dim=0).tolist()


@torch.no_grad()
def encoder_layers(model: nn.Module, waves: list[np.ndarray], description: str = "encoding") -> list[torch.Tensor]:
    """Each utterance's `(layers, frames, hidden)` stack: the transformer input and every layer's output."""
    encoder = encoder_of(model).eval()
    extractor = SpidRFeatureExtractor()
    stacks = []
    with progress_bar(len(waves), desc=description, unit="utt") as bar:
        for wave in waves:
            inputs = extractor(wave, sampling_rate=extractor.sampling_rate, return_tensors="pt")
            output = encoder(inputs["input_values"].to(encoder.device), output_hidden_states=True)
            stacks.append(torch.stack(output.hidden_states, dim=0)[:, 0].float().cpu())
            bar.update(1)
    return stacks


def logmel_layers(waves: list[np.ndarray], geometry) -> list[torch.Tensor]:
    """Each utterance's log-mel frames as a one-layer stack `(1, frames, bands)`, on the model's frame grid."""
    return [frame_features(wave, "logmel", geometry)[None] for wave in waves]


def _batch(stacks: list[torch.Tensor], labels: list[list[int]], rows: list[int]) -> tuple[torch.Tensor, ...]:
    lengths = torch.tensor([stacks[r].shape[1] for r in rows])
    layers, _, dim = stacks[rows[0]].shape
    padded = torch.zeros(len(rows), layers, int(lengths.max()), dim)
    for i, r in enumerate(rows):
        padded[i, :, : lengths[i]] = stacks[r]
    return padded, lengths, pad_labels([labels[r] for r in rows])


def train_probe(
    stacks: list[torch.Tensor], labels: list[list[int]], vocab_size: int, settings: ProbeSettings, description: str
) -> tuple[LayerSumCTCProbe, float]:
    """A probe trained on `stacks` (one `(layers, frames, dim)` per utterance) and its last loss."""
    torch.manual_seed(settings.seed)
    layers, _, dim = stacks[0].shape
    probe = LayerSumCTCProbe(layers, dim, vocab_size)
    optimizer = torch.optim.Adam(probe.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    loss = torch.tensor(float("nan"))
    with progress_bar(settings.steps, desc=description, unit="step") as bar:
        for _ in range(settings.steps):
            rows = torch.randperm(len(stacks), generator=generator)[: settings.batch_size].tolist()
            features, lengths, batch_labels = _batch(stacks, labels, rows)
            loss = ctc_loss(probe(features), batch_labels, lengths, blank=0, reduction="mean")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return probe, float(loss.detach())


@torch.no_grad()
def transcribe(probe: LayerSumCTCProbe, stacks: list[torch.Tensor]) -> list[list[int]]:
    """Greedy CTC token ids of each utterance."""
    return [greedy_ctc(probe(stack[None])[0], stack.shape[1]) for stack in stacks]


@dataclass
class ProbeResult:
    """One feature kind's probe: its PER on the test speech and what it learnt."""

    features: str
    per: float
    final_loss: float
    layer_weights: list[float]


def probe_features(
    name: str,
    features_of: Callable[[list[np.ndarray]], list[torch.Tensor]],
    train: TranscribedSpeech,
    test: TranscribedSpeech,
    tokenizer: PreTrainedTokenizerBase,
    settings: ProbeSettings,
) -> ProbeResult:
    """Train the probe on `features_of(train.waves)`, score its PER on `test`."""
    train_labels = encode_targets(tokenizer, train.transcripts)
    probe, loss = train_probe(features_of(train.waves), train_labels, len(tokenizer), settings, f"probe {name}")
    hypotheses = transcribe(probe, features_of(test.waves))
    per = error_rate(hypotheses, encode_targets(tokenizer, test.transcripts))
    logger.info("%s probe: PER %.3f on %d held-out utterances", name, per, len(test))
    return ProbeResult(name, per, loss, probe.normalised_weights)


def phone_probe(
    model: nn.Module, train: TranscribedSpeech, test: TranscribedSpeech, settings: ProbeSettings = ProbeSettings()
) -> dict:
    """The probe on the model's layers and on log-mel features, side by side (the content of results.json).

    Raises `ValueError` for an utterance whose phones need more CTC frames than its audio has.
    """
    tokenizer = build_tokenizer(train.transcripts, "phones")
    geometry = model.config.frame_geometry
    for speech in (train, test):
        speech.check_ctc_fits(encode_targets(tokenizer, speech.transcripts), geometry)
    rows = [
        probe_features("spidr", lambda waves: encoder_layers(model, waves), train, test, tokenizer, settings),
        probe_features("logmel", lambda waves: logmel_layers(waves, geometry), train, test, tokenizer, settings),
    ]
    spidr, logmel = rows
    return {
        "rows": [asdict(row) for row in rows],
        "layer_weights": {str(layer): weight for layer, weight in enumerate(spidr.layer_weights)},
        "best_layer": int(np.argmax(spidr.layer_weights)),
        "per_reduction_over_logmel": 1 - spidr.per / logmel.per if logmel.per else None,
        "phones": len(tokenizer) - 2,
        "settings": asdict(settings),
        "train": {"corpus": train.source, "utterances": len(train), "minutes": round(train.minutes, 2)},
        "test": {"corpus": test.source, "utterances": len(test), "minutes": round(test.minutes, 2)},
    }


__all__ = ["LayerSumCTCProbe", "ProbeResult", "ProbeSettings", "encoder_layers", "phone_probe", "train_probe"]
