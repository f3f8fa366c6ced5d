"""What the trainer measures and checks while it trains: metrics between two logs, and the health checks
that stop a run (a non-finite loss, gradient or weight; steps without audio)."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from spidr_hf.modeling import SAMPLING_RATE
from torch import nn


class PretrainingMetrics:
    """Accumulates SpidR's metrics between two logs: perplexities, audio throughput, skipped files.

    Values stay on the device until `pop` (called at logging steps), so no step waits on the host.
    """

    def __init__(self) -> None:
        self._perplexities: torch.Tensor | None = None  # target sum, prediction sum, micro-batches (this rank)
        self._counts: torch.Tensor | None = None  # audio samples, skipped files (all ranks) since the last log
        self._totals: torch.Tensor | None = None  # the same since the start of this run
        self._since = time.perf_counter()

    def add_step(self, counts: torch.Tensor) -> None:
        """`[audio samples, skipped files]` of one optimizer step, already summed over ranks."""
        self._counts = counts if self._counts is None else self._counts + counts
        self._totals = counts if self._totals is None else self._totals + counts

    def add_batch(self, target_perplexity: torch.Tensor, prediction_perplexity: torch.Tensor) -> None:
        """Perplexities of one micro-batch."""
        values = torch.stack([target_perplexity.detach(), prediction_perplexity.detach(), torch.ones_like(target_perplexity)])
        values = values.double()
        self._perplexities = values if self._perplexities is None else self._perplexities + values

    @property
    def total_skipped_files(self) -> int:
        """Utterances skipped (unreadable) since the start of this run, over all ranks."""
        return 0 if self._totals is None else int(self._totals[1])

    @property
    def total_audio_seconds(self) -> float:
        """Audio trained on since the start of this run, over all ranks."""
        return 0.0 if self._totals is None else int(self._totals[0]) / SAMPLING_RATE

    def pop(self, accelerator: Any, world_size: int) -> dict[str, float]:
        """The metrics since the last call (perplexities averaged over ranks' micro-batches); then reset."""
        sums = torch.zeros(3, dtype=torch.float64) if self._perplexities is None else self._perplexities
        sums = sums.to(accelerator.device)
        if world_size > 1:  # every rank logs at the same steps, so this collective is matched
            sums = accelerator.reduce(sums, reduction="sum")
        target, prediction, batches = sums.tolist()
        audio_samples, skipped = (0, 0) if self._counts is None else self._counts.tolist()
        elapsed = max(time.perf_counter() - self._since, 1e-9)
        audio_per_second = audio_samples / SAMPLING_RATE / elapsed
        logs = {
            "audio_seconds_per_second": audio_per_second,
            "audio_seconds_per_second_per_device": audio_per_second / world_size,
            "skipped_files": float(skipped),
        }
        if batches:
            logs["target_perplexity"] = target / batches
            logs["prediction_perplexity"] = prediction / batches
        self._perplexities = self._counts = None
        self._since = time.perf_counter()
        return logs


class PretrainingError(RuntimeError):
    """Pretraining cannot go on: its loss or gradients are not finite, or its audio went missing."""


def all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer is finite (one device sync)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class TrainingHealth:
    """What must stop a run, recorded on the device at every step and read only at logs and saves.

    * the first optimizer step whose loss or gradient norm was not finite (the Trainer's own
      `logging_nan_inf_filter` keeps NaN out of the logged loss, which then reads 0);
    * the longest run of consecutive optimizer steps that found no readable audio on any rank
      (files gone missing, a disk unmounted).

    Recording is a few device operations per step, with no host synchronisation.
    """

    NO_STEP = 2**62

    def __init__(self) -> None:
        self._first_non_finite: torch.Tensor | None = None
        self._empty_run: torch.Tensor | None = None
        self._longest_empty_run: torch.Tensor | None = None

    def record_values(self, step: int, value: torch.Tensor) -> None:
        """Note `step` if `value` (a loss or a gradient norm) is not finite."""
        bad_step = torch.where(torch.isfinite(value.detach()).all(), self.NO_STEP, step)
        first = self._first_non_finite
        self._first_non_finite = bad_step if first is None else torch.minimum(first, bad_step.to(first.device))

    def record_audio(self, samples: torch.Tensor) -> None:
        """Audio samples of one optimizer step, summed over ranks (0: a step without audio)."""
        run = torch.zeros((), dtype=torch.long, device=samples.device) if self._empty_run is None else self._empty_run
        self._empty_run = torch.where(samples == 0, run + 1, 0)
        longest = self._longest_empty_run
        self._longest_empty_run = self._empty_run if longest is None else torch.maximum(longest, self._empty_run)

    def problem(self, max_empty_steps: int, world_size: int = 1, device: torch.device | None = None) -> str | None:
        """Why the run must stop, or None (reads the device; with `world_size > 1`, a collective on `device`).

        Audio counts are already summed over ranks; a loss is a rank's own, so the first
        non-finite step is the minimum over ranks (every rank stops at the same call).
        """
        first = torch.tensor(self.NO_STEP) if self._first_non_finite is None else self._first_non_finite
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            first = first.to(device).clone()
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        first_step = int(first)
        empty_steps = 0 if self._longest_empty_run is None else int(self._longest_empty_run)
        if first_step < self.NO_STEP:
            return (
                f"the loss or its gradient is not finite (NaN or inf) from step {first_step} on; lower the learning "
                "rate, or check the model configuration and the audio"
            )
        if empty_steps >= max_empty_steps:
            return (
                f"{empty_steps} consecutive optimizer steps found no readable audio (see the warnings about skipped "
                "utterances): are the training files still there?"
            )
        return None


__all__ = ["PretrainingError", "PretrainingMetrics", "TrainingHealth", "all_finite"]
