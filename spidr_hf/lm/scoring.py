"""Scores of unit sequences under a unit LM, and the accuracy of a minimal-pair benchmark.

The score of an item is the **summed log-probability** of its deduplicated units and the closing
``</s>``, each given ``<s>`` and the units before it (natural log; the ZeroSpeech 2021 baseline's
aggregation). A longer item has a lower sum, which is what sWUGGY and sBLIMP measure: both members of
a pair say nearly the same phones. The **mean** (the sum over the number of predicted tokens) is
offered too (``aggregation="mean"``), the length-normalised choice of later spoken-LM work.

A pair counts 1 when its correct member scores higher, 1/2 on a tie, 0 otherwise; a benchmark's
accuracy is the mean over its ids of the mean over that id's pairs (its voices), as the ZeroSpeech
2021 evaluation averages sWUGGY over voices per word pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .tokenizer import check_units, encode_units, num_units_of

AGGREGATIONS = ("sum", "mean")


@torch.no_grad()
def sequence_log_probs(model: Any, token_ids: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 32
                       ) -> list[tuple[float, int]]:  # fmt: skip
    """(summed log-probability, number of predicted tokens) of each ``<s> ... </s>`` id sequence.

    Sequences are batched by length and right-padded; the model runs in eval mode on its own device.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(token_ids)
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(token_ids[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : len(token_ids[i])] = torch.as_tensor(token_ids[i])
                mask[row, : len(token_ids[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            predicted = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            predicted = predicted * mask[:, 1:]
            for row, i in enumerate(chunk):
                results[i] = (float(predicted[row].sum()), int(mask[row, 1:].sum()))
    finally:
        model.train(was_training)
    return results


def aggregate(log_prob: tuple[float, int], aggregation: str = "sum") -> float:
    """The item score: the summed log-probability, or its mean per predicted token."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
    total, count = log_prob
    return total if aggregation == "sum" else total / count


def pair_accuracy(pairs: Sequence[Any], scores: Mapping[str, float]) -> dict[str, Any]:
    """Accuracy of ``pairs`` (each with ``id``, ``correct``, ``incorrect`` file names and a ``type``) under ``scores``.

    Returns ``accuracy`` (mean over ids of the mean over their pairs), ``pairs``, ``ids`` and
    ``by_type`` (the same accuracy within each type, for types other than ``""``).
    """
    by_id: dict[str, list[float]] = {}
    type_of: dict[str, str] = {}
    for pair in pairs:
        good, bad = scores[pair.correct], scores[pair.incorrect]
        by_id.setdefault(pair.id, []).append(1.0 if good > bad else 0.5 if good == bad else 0.0)
        type_of[pair.id] = pair.type
    per_id = {i: sum(v) / len(v) for i, v in by_id.items()}
    types: dict[str, list[float]] = {}
    for i, value in per_id.items():
        if type_of[i]:
            types.setdefault(type_of[i], []).append(value)
    return {
        "accuracy": sum(per_id.values()) / len(per_id) if per_id else float("nan"),
        "pairs": len(pairs),
        "ids": len(per_id),
        "by_type": {t: sum(v) / len(v) for t, v in sorted(types.items())},
    }


__all__ = ["AGGREGATIONS", "aggregate", "pair_accuracy", "sequence_log_probs"]


def score_items(model: Any, tokenizer: Any, units: Mapping[str, Sequence[int]], source: str, batch_size: int = 32
                ) -> dict[str, tuple[float, int]]:  # fmt: skip
    """(summed log-probability, predicted tokens) of each deduplicated unit sequence, by name.

    Raises:
        ValueError: an empty sequence or a unit outside the tokenizer's K (naming ``source`` and the item).
    """
    num_units = num_units_of(tokenizer)
    for name, sequence in units.items():
        check_units(sequence, num_units, f"{source}: {name!r}")
    names = list(units)
    log_probs = sequence_log_probs(model, [encode_units(tokenizer, units[n]) for n in names], tokenizer.pad_token_id, batch_size)
    return dict(zip(names, log_probs, strict=True))


def benchmark_accuracy(pairs: Sequence[Any], log_probs: Mapping[str, tuple[float, int]]) -> dict[str, Any]:
    """:func:`pair_accuracy` under each aggregation: ``{"sum": {...}, "mean": {...}}``."""
    return {a: pair_accuracy(pairs, {n: aggregate(lp, a) for n, lp in log_probs.items()}) for a in AGGREGATIONS}


__all__ += ["benchmark_accuracy", "score_items"]
