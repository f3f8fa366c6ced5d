"""Pretraining data for SpidR: an index of utterances, a dataset, a batch sampler and a collator.

Pipeline (one utterance = one audio file, or one row of a ``datasets.Dataset``)::

    index = load_training_index(source)              # lengths at 16 kHz, short ones dropped
    dataset = SpidRAudioDataset(index)               # decode, resample, standardise the file, random 20 s crop
    sampler = LengthBudgetBatchSampler(dataset.lengths, 3_800_000, seed=0, num_replicas=W, rank=r)
    collator = PretrainingCollator(seed=0)           # crop to shortest, span masks
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=8)

:func:`load_training_index` takes a folder, a manifest (``.csv``, ``.jsonl``, fairseq ``.tsv``) or
a ``datasets.Dataset``, read as :mod:`spidr_hf.sources` describes. Utterances shorter than
``min_samples`` (2,000 at 16 kHz) are dropped when indexing, with a logged count; files whose
header cannot be read are dropped and logged too (or raise with ``strict=True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from itertools import cycle, islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from spidr_hf.modeling import DEFAULT_CONV_KERNEL, DEFAULT_CONV_STRIDE, FrameGeometry
from torch.utils.data import Dataset, Sampler

from spidr_hf.audio import AudioDecodeError, standardize
from spidr_hf.sources import (
    AudioInputs,
    AudioItem,
    dataset_items,
    folder_inputs,
    is_hf_dataset,
    manifest_items,
    prepare_hf_dataset,
)

from .masking import compute_span_mask

logger = logging.getLogger(__name__)

MIN_SAMPLES = 2_000
"""Utterances shorter than this (at 16 kHz) are dropped, as in the SpidR recipe."""

MAX_SAMPLES = 320_000
"""Longest random crop of one utterance: 20 s at 16 kHz."""

REFERENCE_MAX_BATCH_SAMPLES = 3_800_000
"""The SpidR recipe's budget of audio samples per GPU per step."""


# ---------------------------------------------------------------------------------------------
# Indexing


def _index_source(source: str | os.PathLike | Any, audio_column: str) -> AudioInputs:
    """The items of one training source, in source order (lengths where a manifest gives them)."""
    if is_hf_dataset(source):
        dataset = prepare_hf_dataset(source, audio_column)
        return AudioInputs(dataset_items(dataset, audio_column), {"": dataset}, audio_column)
    path = Path(source)
    if path.is_dir():
        return folder_inputs(path)
    if path.is_file():
        return AudioInputs(manifest_items(path))
    if not path.exists():
        raise FileNotFoundError(f"training data {path} does not exist.")
    raise FileNotFoundError(f"training data {path} is neither a folder nor a manifest file.")


def _describe(source: Any) -> str:
    return "the dataset" if is_hf_dataset(source) else str(source)


def load_training_index(
    source: str | os.PathLike | Any,
    *,
    min_samples: int = MIN_SAMPLES,
    audio_column: str = "audio",
    strict: bool = False,
    num_threads: int = 8,
) -> list[AudioItem]:
    """Index the utterances of a folder, a manifest or a ``datasets.Dataset`` (see the module docs).

    Args:
        source: a folder, a ``.csv``/``.jsonl``/``.tsv`` manifest, or a ``datasets.Dataset``.
        min_samples: shorter utterances are dropped (the count is logged).
        audio_column: the audio column of a ``datasets.Dataset``.
        strict: raise on the first unreadable file instead of dropping it with a warning.
        num_threads: threads reading file headers.

    Returns:
        The kept utterances in source order (folders: sorted paths; datasets: row numbers), with
        their lengths at 16 kHz.
    """
    inputs = _index_source(source, audio_column)
    if strict and inputs.unreadable:  # what a folder walk could not read: loops, dangling links ...
        raise AudioDecodeError("{}: {}".format(*inputs.unreadable[0]))
    inputs.warn_unreadable()
    probed, errors = inputs.probe_lengths(num_threads)
    if errors and strict:
        raise errors[0][1]
    if errors:
        what = "dataset row(s)" if isinstance(errors[0][0].source, int) else "audio file(s)"
        logger.warning("dropped %d unreadable %s while indexing, e.g. %s", len(errors), what, errors[0][1])
    readable = [item for item in probed.items if item.num_samples is not None]
    kept = [item for item in readable if item.num_samples >= min_samples]
    if len(kept) < len(readable):
        logger.info("dropped %d utterance(s) shorter than %d samples", len(readable) - len(kept), min_samples)
    if not kept:
        raise ValueError(
            f"no usable audio in {_describe(source)}: {len(probed.items)} utterance(s) found, {len(errors)} unreadable, "
            f"{len(readable) - len(kept)} shorter than min_samples ({min_samples} samples at 16 kHz)"
            + (f"; e.g. {errors[0][1]}" if errors else "")
            + "."
        )
    return kept


# ---------------------------------------------------------------------------------------------
# Dataset


def random_crop(wave: np.ndarray, max_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A window of ``max_samples`` at a uniform random offset, or ``wave`` itself when not longer."""
    if len(wave) <= max_samples:
        return wave
    offset = int(rng.integers(0, len(wave) - max_samples + 1))
    return wave[offset : offset + max_samples]


class SpidRAudioDataset(Dataset):
    """Utterances decoded at 16 kHz (:mod:`spidr_hf.sources`), standardised whole, then randomly cropped to ``max_samples``.

    As in the reference recipe, the whole file is standardised once and crops are slices of it
    (never standardised again), so every file is decoded whole.

    ``dataset[i]`` returns ``{"input_values": float32 tensor (L,), "index": i, "epoch": e}``, or
    ``None`` when the utterance cannot be decoded (or decodes shorter than ``min_samples``): a
    warning is logged once per source, ``num_failed`` counts failures and ``failed_sources``
    names them (per process: with DataLoader workers, each worker has its own counters, so
    rely on the collator's ``num_skipped``). With ``strict=True`` it raises instead.

    The crop offset comes from a generator seeded with ``(seed, epoch, index)``, so a crop is
    reproducible and changes every epoch. The epoch is ``dataset.epoch`` (``set_epoch``), or
    travels with the key: ``dataset[(index, epoch)]``, which is what
    ``LengthBudgetBatchSampler(..., yield_epoch=True)`` yields, and which stays right with
    ``persistent_workers=True`` (workers keep their own stale copy of ``dataset.epoch``).
    """

    def __init__(
        self,
        utterances: Sequence[AudioItem],
        *,
        hf_dataset: Any = None,
        audio_column: str = "audio",
        min_samples: int = MIN_SAMPLES,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
        strict: bool = False,
        mono: Literal["mean", "error"] = "mean",
    ) -> None:
        if max_samples < min_samples:
            raise ValueError(f"max_samples ({max_samples}) must be >= min_samples ({min_samples}).")
        if hf_dataset is None and any(isinstance(u.source, int) for u in utterances):
            raise ValueError("utterances index rows of a datasets.Dataset: pass it as hf_dataset.")
        self.utterances = list(utterances)
        datasets = {"": prepare_hf_dataset(hf_dataset, audio_column)} if hf_dataset is not None else {}
        self.audio = AudioInputs(self.utterances, datasets, audio_column)
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.seed = seed
        self.strict = strict
        self.mono = mono
        self.epoch = 0
        self.num_failed = 0
        self.failed_sources: set[str | int] = set()

    @classmethod
    def from_source(
        cls,
        source: str | os.PathLike | Any,
        *,
        min_samples: int = MIN_SAMPLES,
        max_samples: int = MAX_SAMPLES,
        seed: int = 0,
        strict: bool = False,
        audio_column: str = "audio",
        num_threads: int = 8,
        mono: Literal["mean", "error"] = "mean",
    ) -> SpidRAudioDataset:
        """Index ``source`` with :func:`load_training_index` and wrap it in a dataset."""
        utterances = load_training_index(
            source,
            min_samples=min_samples,
            audio_column=audio_column,
            strict=strict,
            num_threads=num_threads,
        )
        return cls(
            utterances,
            hf_dataset=source if is_hf_dataset(source) else None,
            audio_column=audio_column,
            min_samples=min_samples,
            max_samples=max_samples,
            seed=seed,
            strict=strict,
            mono=mono,
        )

    @property
    def lengths(self) -> list[int]:
        """Indexed length of every utterance at 16 kHz (for the batch sampler)."""
        return [u.num_samples for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used for crops when keys are plain indices."""
        self.epoch = int(epoch)

    def _decode(self, utterance: AudioItem, rng: np.random.Generator) -> np.ndarray:
        """Decode the whole utterance, standardise it, and take a random ``max_samples`` window of it."""
        wave = self.audio.decode(utterance, mono=self.mono)
        if len(wave) < self.min_samples:
            raise AudioDecodeError(f"{utterance.source} decodes to {len(wave)} samples, fewer than {self.min_samples}.")
        return random_crop(standardize(wave), self.max_samples, rng)

    def check_readable(self) -> None:
        """Raise a ``ValueError`` unless some utterance decodes (to at least ``min_samples`` samples).

        Indexing a manifest that gives lengths opens no file, so a manifest of missing files would
        otherwise train on nothing but empty batches. Utterances are tried in order until one
        decodes: usually the first, and a window of ``min_samples`` samples of it.
        """
        first_error = None
        for utterance in self.utterances:
            try:
                wave = self.audio.decode(utterance, mono=self.mono, start=0, stop=self.min_samples)
            except (AudioDecodeError, ValueError, OSError) as err:
                first_error = first_error or err
                continue
            if len(wave) >= self.min_samples:
                return
            first_error = first_error or AudioDecodeError(
                f"{utterance.path} decodes to {len(wave)} samples, fewer than {self.min_samples}."
            )
        raise ValueError(
            f"none of the {len(self.utterances)} training utterance(s) can be read (e.g. {first_error}): "
            "nothing to train on."
        )

    def _skip(self, utterance: AudioItem, error: Exception) -> None:
        """Record an unusable utterance: raise when strict, else warn once per source."""
        if self.strict:
            raise AudioDecodeError(f"utterance {utterance.source}: {error}") from error
        self.num_failed += 1
        if utterance.source not in self.failed_sources:
            self.failed_sources.add(utterance.source)
            logger.warning("skipping utterance %s: %s", utterance.source, error)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | None:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        utterance = self.utterances[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        try:
            wave = self._decode(utterance, rng)
        except (AudioDecodeError, ValueError, OSError) as err:
            self._skip(utterance, err)
            return None
        return {"input_values": torch.from_numpy(wave), "index": index, "epoch": epoch}


# ---------------------------------------------------------------------------------------------
# Batch sampler


def _bucket_ids(effective: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket of every length: ``num_buckets`` equal-width buckets between the min and max length."""
    boundaries = np.linspace(effective.min(), effective.max(), num_buckets + 1)[1:-1]
    return np.searchsorted(boundaries, effective, side="right")


class LengthBudgetBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances under a budget of audio samples, sharded over ranks.

    Cost of a batch: a batch is cropped to its shortest utterance (no padding), so with
    ``cost="cropped"`` (default) it is ``len(batch) * min(min(length, max_samples) for the batch)``,
    the size of the ``(B, L)`` tensor the model sees. ``cost="sum"`` counts
    ``sum(min(length, max_samples))`` like the SpidR reference sampler (fewer, never more, items).
    Every batch's cost is <= ``max_batch_samples`` (which must hold one ``max_samples`` crop).

    One epoch, from a generator seeded with ``(seed, epoch)``:

    1. lengths are capped at ``max_samples`` and split into ``num_buckets`` equal-width
       buckets between the shortest and the longest (the reference uses 1,000);
    2. utterances are shuffled, then stably ordered by bucket (shuffled inside a bucket);
    3. batches are filled greedily in that order: an utterance joins the current batch unless
       that would exceed the budget (or ``max_batch_size``), else it opens a new batch;
    4. the batch order is shuffled (``shuffle=False`` skips steps 2's shuffle and this one);
    5. ranks: without ``drop_last`` the list is padded by repeating its first batches up to a
       multiple of ``num_replicas``; with it, the surplus batches are dropped. Rank ``r`` takes
       batches ``r, r + num_replicas, ...``, so all ranks get the same number.

    Without ``drop_last`` every utterance is in exactly one batch of the (unpadded) epoch.
    ``len(sampler)`` is this rank's number of batches in the current epoch (it can change a
    little from epoch to epoch, as bucket shuffles change how batches fill).

    Call ``set_epoch(epoch)`` before each epoch, as with ``DistributedSampler``. For exact
    resume, save ``state_dict(consumed_batches)`` with the number of batches the training loop
    has consumed this epoch (a DataLoader prefetches ahead of it), and ``load_state_dict`` it
    into a sampler built with the same arguments: the next iteration continues from there.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_batch_samples: int = REFERENCE_MAX_BATCH_SAMPLES,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        *,
        max_samples: int = MAX_SAMPLES,
        num_buckets: int = 1000,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        cost: Literal["cropped", "sum"] = "cropped",
        yield_epoch: bool = False,
    ) -> None:
        if len(lengths) == 0:
            raise ValueError("no utterances to sample from.")
        if max_batch_samples < max_samples:
            raise ValueError(
                f"max_batch_samples ({max_batch_samples}) must hold one crop of max_samples ({max_samples}): "
                "lower max_samples or raise the budget."
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}.")
        if num_buckets < 1 or (max_batch_size is not None and max_batch_size < 1):
            raise ValueError("num_buckets and max_batch_size must be >= 1.")
        if cost not in ("cropped", "sum"):
            raise ValueError(f"cost must be 'cropped' or 'sum', got {cost!r}.")
        self.effective = np.minimum(np.asarray(lengths, dtype=np.int64), max_samples)
        self.max_batch_samples = int(max_batch_samples)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.cost = cost
        self.yield_epoch = yield_epoch
        self.buckets = _bucket_ids(self.effective, num_buckets)
        self.epoch = 0
        self._start = 0  # where the next iteration of this epoch begins (set by load_state_dict)
        self._position = 0  # batches yielded so far in this epoch
        self._cache: tuple[int, list[list[int]]] | None = None

    def batch_cost(self, batch: Sequence[int]) -> int:
        """Budget cost of a batch of utterance indices under this sampler's ``cost`` rule."""
        lengths = self.effective[list(batch)]
        return int(lengths.sum()) if self.cost == "sum" else len(batch) * int(lengths.min())

    def _fill_batches(self, order: np.ndarray) -> list[list[int]]:
        """Greedily cut ``order`` into consecutive batches within the budget."""
        batches: list[list[int]] = []
        batch: list[int] = []
        shortest = total = 0
        for index in order.tolist():
            length = int(self.effective[index])
            new_shortest = min(shortest, length) if batch else length
            new_cost = total + length if self.cost == "sum" else (len(batch) + 1) * new_shortest
            too_many = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (new_cost > self.max_batch_samples or too_many):
                batches.append(batch)
                batch, new_shortest, total = [], length, 0
            batch.append(index)
            shortest, total = new_shortest, total + length
        if batch:
            batches.append(batch)
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (every rank's), in order, before sharding."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.effective)) if self.shuffle else np.arange(len(self.effective))
        order = order[np.argsort(self.buckets[order], kind="stable")]  # by bucket, shuffled inside
        batches = self._fill_batches(order)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _rank_batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch (cached per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self.epoch_batches(self.epoch)
            if self.drop_last:
                batches = batches[: len(batches) - len(batches) % self.num_replicas]
            else:
                padding = -len(batches) % self.num_replicas
                batches = batches + list(islice(cycle(batches), padding))
            self._cache = (self.epoch, batches[self.rank :: self.num_replicas])
        return self._cache[1]

    def __len__(self) -> int:
        return len(self._rank_batches())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a new epoch starts from its first batch."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._start = self._position = 0

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        batches = self._rank_batches()
        start, self._start = self._start, 0  # a later iteration of this epoch starts over
        for position in range(start, len(batches)):
            self._position = position + 1
            batch = batches[position]
            yield [(i, self.epoch) for i in batch] if self.yield_epoch else list(batch)

    def state_dict(self, consumed_batches: int | None = None) -> dict[str, int]:
        """Resume state: the epoch and how many of this rank's batches of it are done.

        Pass ``consumed_batches`` (batches the training loop has taken this epoch): the sampler
        itself only knows how far the DataLoader has prefetched.
        """
        position = self._position if consumed_batches is None else int(consumed_batches)
        return {
            "epoch": self.epoch,
            "position": position,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a :meth:`state_dict`: the next iteration yields the remaining batches."""
        for key in ("seed", "num_replicas"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"cannot resume exactly: the saved sampler had {key}={state[key]}, this one has {getattr(self, key)}."
                )
        self.epoch = int(state["epoch"])
        self._start = self._position = int(state["position"])


# ---------------------------------------------------------------------------------------------
# Collator


def _batch_generator(seed: int, items: Sequence[Mapping[str, Any]], fallback: int) -> torch.Generator:
    """A generator seeded from ``seed``, the epoch and the indices of the batch's items.

    Seeding from the batch content (not a call counter) keeps crops and masks the same
    whatever the number of DataLoader workers; the batch order is itself fixed by the sampler.
    """
    indices = [int(item.get("index", fallback)) for item in items]
    epoch = int(items[0].get("epoch", 0)) if items else 0
    state = np.random.SeedSequence([seed, epoch, *indices]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class PretrainingCollator:
    """Turn dataset items into a pretraining batch: crop, stack, mask.

    Output: ``{"input_values": (B, L) float32, "mask_time_indices": (B, T) bool, "num_skipped": int}``

    * ``None`` items (unreadable utterances) are dropped and counted in ``num_skipped``;
    * every waveform is cropped to the shortest one, ``L``, at a random offset (no padding);
      items come standardised (the dataset standardises each file whole): crops are not again;
    * ``T = num_frames(L)`` for the given convolutions, and ``mask_time_indices`` follows
      :func:`~spidr_hf.training.masking.compute_span_mask`.

    When every item is ``None`` the batch is *empty*: ``input_values`` is ``(0, 0)``,
    ``mask_time_indices`` ``(0, 0)`` and ``num_skipped`` the batch size; check
    :func:`is_empty_batch` and skip the step.

    Randomness comes from a generator seeded with ``(seed, epoch, item indices)``, so a batch is
    reproducible given the seed and the sampler's order.
    """

    def __init__(
        self,
        *,
        mask_prob: float = 0.8,
        mask_length: int = 10,
        min_masks: int = 2,
        conv_kernel: Sequence[int] = DEFAULT_CONV_KERNEL,
        conv_stride: Sequence[int] = DEFAULT_CONV_STRIDE,
        seed: int = 0,
    ) -> None:
        self.mask_prob = mask_prob
        self.mask_length = mask_length
        self.min_masks = min_masks
        self.conv_kernel = tuple(conv_kernel)
        self.conv_stride = tuple(conv_stride)
        self.seed = seed
        self._calls = 0  # only used for items without an "index"

    @classmethod
    def from_config(cls, config: Any, *, seed: int = 0, **overrides: Any) -> PretrainingCollator:
        """A collator using ``config.conv_kernel``/``conv_stride`` (and ``mask_*`` attributes if any)."""
        kwargs = {"conv_kernel": config.conv_kernel, "conv_stride": config.conv_stride, "seed": seed}
        for name in ("mask_prob", "mask_length", "min_masks"):
            if hasattr(config, name):
                kwargs[name] = getattr(config, name)
        kwargs.update(overrides)
        return cls(**kwargs)

    def _crop(self, wave: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
        """A random window of ``length`` samples of ``wave``."""
        offset = (
            int(torch.randint(0, len(wave) - length + 1, (1,), generator=generator))
            if len(wave) > length
            else 0
        )
        return wave[offset : offset + length]

    def __call__(self, items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        num_skipped = len(items) - len(kept)
        if not kept:
            empty = {
                "input_values": torch.zeros((0, 0)),
                "mask_time_indices": torch.zeros((0, 0), dtype=torch.bool),
            }
            return {**empty, "num_skipped": num_skipped}
        self._calls += 1
        generator = _batch_generator(self.seed, kept, fallback=self._calls)
        length = min(len(item["input_values"]) for item in kept)
        waves = [self._crop(item["input_values"], length, generator) for item in kept]
        frames = FrameGeometry(self.conv_kernel, self.conv_stride).num_frames(length)
        mask = compute_span_mask(
            (len(kept), frames), self.mask_prob, self.mask_length, self.min_masks, generator=generator
        )
        return {"input_values": torch.stack(waves), "mask_time_indices": mask, "num_skipped": num_skipped}


PREPARED_BATCH_KEYS = ("input_values", "mask_time_indices")


class PreparedBatches(Dataset):
    """A fixed sequence of ready-made pretraining batches, replayed in order (one per micro-batch).

    Each batch is a mapping with ``input_values`` (float ``(B, L)``, standardised audio, no
    padding) and ``mask_time_indices`` (bool ``(B, T)``, at least one True). Give it to
    :class:`~spidr_hf.training.SpidRPretrainer` as ``train_dataset`` to train on exactly these
    batches, e.g. to debug one's data or to replay another implementation's inputs: batch ``n``
    (1-based) feeds training step ``n`` (micro-batch ``n`` with gradient accumulation), and the
    sequence starts over when ``max_steps`` asks for more. Under DDP every process trains on the
    batches it was given: give each rank its own. Every batch is checked here; the frame count
    against the model when the trainer is built (:meth:`check_frames`).
    """

    def __init__(self, batches: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self.batches = [self._checked(n, batch) for n, batch in enumerate(batches, start=1)]
        if not self.batches:
            raise ValueError("PreparedBatches got no batch: give at least one dict of input_values and mask_time_indices.")

    @staticmethod
    def _checked(n: int, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of batch ``n`` (1-based), or a ``ValueError`` naming its step and the fix."""
        where = f"prepared batch {n} (step {n})"
        if not isinstance(batch, Mapping):
            raise ValueError(f"{where} is a {type(batch).__name__}: give a dict of {' and '.join(PREPARED_BATCH_KEYS)}.")
        missing = [key for key in PREPARED_BATCH_KEYS if key not in batch]
        unknown = sorted(set(batch) - set(PREPARED_BATCH_KEYS))
        if missing or unknown:
            raise ValueError(
                f"{where} has keys {sorted(batch)}: it needs exactly {list(PREPARED_BATCH_KEYS)} "
                "(uncropped or padded audio is not supported: crop every row to the batch's shortest)."
            )
        values, mask = batch["input_values"], batch["mask_time_indices"]
        if not (isinstance(values, torch.Tensor) and values.ndim == 2 and values.is_floating_point() and values.numel()):
            raise ValueError(f"{where}: input_values must be a non-empty float tensor (batch, samples), got {_describe_value(values)}.")
        if not (isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.dtype == torch.bool):
            raise ValueError(f"{where}: mask_time_indices must be a bool tensor (batch, frames), got {_describe_value(mask)}.")
        if mask.shape[0] != values.shape[0]:
            raise ValueError(
                f"{where}: input_values has {values.shape[0]} rows but mask_time_indices has {mask.shape[0]}: "
                "give one mask row per utterance."
            )
        if not bool(mask.any()):
            raise ValueError(
                f"{where}: mask_time_indices has no masked frame, so there is nothing to predict: "
                "mask at least one frame (spidr_hf.training.compute_span_mask draws the recipe's span masks)."
            )
        return {"input_values": values, "mask_time_indices": mask}

    def check_frames(self, geometry: FrameGeometry) -> None:
        """Raise a ``ValueError`` naming the first batch whose mask does not have the audio's frame count."""
        for n, batch in enumerate(self.batches, start=1):
            samples, frames = batch["input_values"].shape[1], batch["mask_time_indices"].shape[1]
            if geometry.num_frames(samples) != frames:
                raise ValueError(
                    f"prepared batch {n} (step {n}): {samples} samples give {geometry.num_frames(samples)} frames "
                    f"but mask_time_indices has {frames}: draw the mask over the model's frames "
                    "(config.frame_geometry.num_frames(samples))."
                )

    @property
    def lengths(self) -> list[int]:
        """Length in samples of every utterance (row) of every batch."""
        return [batch["input_values"].shape[1] for batch in self.batches for _ in range(batch["input_values"].shape[0])]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.batches[index], "num_skipped": 0}  # a copy: the trainer adds its own keys


def _describe_value(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def is_empty_batch(batch: Mapping[str, Any]) -> bool:
    """Whether a collated batch holds no utterance (all were unreadable): skip the step."""
    return batch["input_values"].shape[0] == 0
