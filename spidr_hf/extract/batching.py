"""How files become batches: sorted by length under a budget of padded samples, decoded in DataLoader workers.

Files are sorted by length (longest first, from their headers) and grouped so that ``batch size x
longest length <= max_batch_samples``; padding is masked and does not change any real frame (the
model's padding invariance, tested). The default budget is 3.2M samples (200 s) on a GPU and one
file per batch on a CPU, where large conv activations fall out of cache and padding is pure waste
(README, Performance). Files longer than ``max_whole_seconds`` (and files whose header cannot be
read) go alone, to be windowed (:mod:`spidr_hf.extract.windows`) or to fail on their own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..audio import AudioDecodeError
from ..modeling import SAMPLING_RATE
from ..runs import die_with_parent
from ..sources import AudioInputs, AudioItem

GPU_BATCH_SAMPLES = 3_200_000

T = TypeVar("T")


def default_batch_samples(device: torch.device) -> int:
    """Samples per batch when none is given: batches pay off on GPUs only."""
    return GPU_BATCH_SAMPLES if device.type == "cuda" else 1


def default_num_workers(device: torch.device) -> int:
    """Decoding processes when none are given: the cores torch's compute threads leave free (at most 4).

    On a CPU the model uses every core, and decoding in worker processes would only take cores
    from it (and start them); decoding in the main process costs little next to the model. A GPU
    leaves the CPU to decoding.
    """
    spare = (os.cpu_count() or 1) - (1 if device.type == "cuda" else torch.get_num_threads())
    return max(0, min(4, spare))


def length_batches(lengths: Sequence[int], max_batch_samples: int) -> list[list[int]]:
    """Indices grouped longest first so that ``len(batch) * longest <= max_batch_samples`` (one item at least)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_samples:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def plan_batches(items: list[AudioItem], max_whole_seconds: float, budget: int) -> list[list[AudioItem]]:
    """Whole-file batches of short items (length-sorted, under the budget), then one batch per long item."""
    long_limit = max_whole_seconds * SAMPLING_RATE
    short = [i for i in items if i.num_samples is not None and i.num_samples <= long_limit]
    # long files, and files whose header could not be read (they will most likely fail to decode), go alone
    alone = [[i] for i in items if i.num_samples is None or i.num_samples > long_limit]
    lengths = [i.num_samples for i in short]
    return [[short[j] for j in batch] for batch in length_batches(lengths, budget)] + alone


def select_shard(items: list[T], shard: tuple[int, int]) -> list[T]:
    """Every ``n``-th item starting at ``i``, for ``shard=(i, n)``."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}.")
    return items[index::count]


def pad_batch(waves: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with zeros: ``(batch, samples)`` input values and the 0/1 attention mask."""
    longest = max(len(w) for w in waves)
    values = torch.zeros(len(waves), longest)
    mask = torch.zeros(len(waves), longest, dtype=torch.long)
    for row, wave in enumerate(waves):
        values[row, : len(wave)] = torch.as_tensor(wave)
        mask[row, : len(wave)] = 1
    return values, mask


class DecodedBatches(Dataset):
    """Decodes whole batches of items in DataLoader workers; a failure is returned, not raised."""

    def __init__(self, inputs: AudioInputs, batches: list[list[AudioItem]], min_samples: int):
        self.inputs, self.batches, self.min_samples = inputs, batches, min_samples

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[tuple[AudioItem, np.ndarray | Exception]]:
        decoded = []
        for item in self.batches[index]:
            try:
                wave = self.inputs.decode(item)
                if len(wave) < self.min_samples:
                    raise AudioDecodeError(
                        f"{len(wave)} samples, fewer than the {self.min_samples} one frame needs"
                    )
                decoded.append((item, wave))
            except Exception as err:  # any bad file is reported and skipped, never fatal
                decoded.append((item, err))
        return decoded


def decoding_loader(dataset: DecodedBatches, num_workers: int) -> DataLoader:
    """Batches of ``(item, waveform or error)`` decoded ahead of the model in ``num_workers`` processes."""
    return DataLoader(
        dataset,
        batch_size=None,  # each dataset element already is a batch
        collate_fn=_as_is,  # keep numpy waves and exceptions as they are
        num_workers=num_workers,
        prefetch_factor=2 if num_workers > 0 else None,
        worker_init_fn=die_with_parent if num_workers > 0 else None,  # not left behind by a killed run
    )


def _as_is(batch: Any) -> Any:
    return batch
