"""What an extraction run is asked for (:class:`ExtractionOptions`) and what it did (:class:`ExtractionReport`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..units import REPRESENTATIONS

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Torch dtypes by their command-line names (compute and storage)."""

UNIT_KINDS = ("head", "codeword", "kmeans")


@dataclass
class ExtractionOptions:
    """What to extract and how (see ``spidr-hf extract --help`` for each option)."""

    output_dir: str
    layers: list[int] | None = None
    representation: str = "hidden_state"
    units: str | None = None
    unit_layer: int | None = None
    kmeans: str | None = None
    output_format: str = "safetensors"
    store_dtype: str = "fp32"  # dtype of the stored features (a DTYPES name): "fp32" or "fp16"
    device: str | None = None
    dtype: str = "fp32"  # dtype the encoder computes in: "fp32", "bf16" or "fp16"
    max_batch_samples: int | None = None  # None: 3.2M samples on a GPU, one file per batch on a CPU
    max_whole_seconds: float = 60.0
    window_seconds: float = 20.0
    context_seconds: float = 5.0
    num_workers: int | None = None  # None: the cores torch leaves free (spidr_hf.extract.batching)
    shard: tuple[int, int] = (0, 1)
    strict: bool = False
    progress: bool = True
    audio_column: str = "audio"

    def __post_init__(self) -> None:
        choices = {
            "representation": REPRESENTATIONS,
            "units": (None, *UNIT_KINDS),
            "output_format": ("safetensors", "npy"),
            "store_dtype": ("fp32", "fp16"),
            "dtype": tuple(DTYPES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        numbers = {
            "max_batch_samples": (self.max_batch_samples is None or self.max_batch_samples > 0, "a positive integer"),
            "max_whole_seconds": (self.max_whole_seconds > 0, "a positive number of seconds"),
            "window_seconds": (self.window_seconds > 0, "a positive number of seconds"),
            "context_seconds": (self.context_seconds >= 0, "a non-negative number of seconds"),
            "num_workers": (self.num_workers is None or self.num_workers >= 0, "a non-negative integer"),
        }
        for name, (valid, kind) in numbers.items():
            value = getattr(self, name)
            if not valid or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{name} must be {kind}, got {value!r}.")
        index, count = self.shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}.")

    def output_signature(self) -> dict[str, Any]:
        """The options that change what the outputs contain (a resumed run must keep them)."""
        keys = ("layers", "representation", "units", "unit_layer", "kmeans", "output_format", "store_dtype",
                "dtype", "window_seconds", "context_seconds", "max_whole_seconds")  # fmt: skip
        signature = {key: getattr(self, key) for key in keys}
        if self.units:  # features-only settings do not matter for units, and conversely
            for key in ("layers", "representation", "output_format", "store_dtype"):
                signature.pop(key)
        else:
            for key in ("unit_layer", "kmeans"):
                signature.pop(key)
        return signature


@dataclass
class ExtractionReport:
    """What a run did: files written, skipped (already done), failed (with reasons), audio and time."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    elapsed_seconds: float = 0.0

    def fail(self, path: str, error: Exception, strict: bool = False) -> None:
        """Log and record that `path` failed with `error`; with `strict`, stop the run (``RuntimeError``)."""
        logger.error("failed: %s: %s", path, error)
        self.failed.append((path, f"{type(error).__name__}: {error}"))
        if strict:
            raise RuntimeError(f"--strict: stopping at the first failure ({path}: {error})") from error

    @property
    def all_failed(self) -> bool:
        """Failures and no output at all (files done by an earlier run count as outputs)."""
        return bool(self.failed) and self.written + self.skipped == 0

    def summary(self) -> str:
        speed = self.audio_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0
        text = (
            f"{self.written} file(s) written ({self.audio_seconds / 3600:.3f} h of audio, {speed:.1f} s of audio per s), "
            f"{self.skipped} already done, {len(self.failed)} failed, in {self.elapsed_seconds:.1f} s"
        )
        if self.failed:
            text += "\nfailed:\n" + "\n".join(f"  {path}: {reason}" for path, reason in self.failed)
        return text
