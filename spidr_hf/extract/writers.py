"""Outputs of an extraction and resuming: feature files, unit lines, the options record, the failures.

In ``OUT``:

* features: ``OUT/<id>.safetensors`` with one ``(frames, hidden)`` tensor per layer named
  ``layer<L>`` (metadata: representation, frame rate, source path), or ``--format npy``:
  ``OUT/<id>.npy`` for one layer, ``OUT/<id>.layer<L>.npy`` for several. Written to a temporary
  name then renamed, so an existing file is always complete.
* units: one JSON line per file, ``{"id", "path", "units", "num_frames"}``, appended to
  ``OUT/units.jsonl`` (``OUT/units.<i>-of-<n>.jsonl`` for shard ``i`` of ``n``: concatenate them
  afterwards). ``num_frames == len(units)``; units are not deduplicated.
* ``OUT/extraction.json``: the options that shape the outputs. A rerun with other options into
  the same folder is refused, because it would mix incompatible files.
* ``OUT/failures.jsonl`` (per shard likewise): the files that could not be processed, and why.

Resuming: files whose outputs exist (features) or whose id is in the JSONL (units) are skipped;
a JSONL line cut short by a crash is dropped before appending.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..runs import atomic_write, save_safetensors
from ..sources import AudioItem
from .encoder import FrameKey
from .options import ExtractionOptions

logger = logging.getLogger(__name__)


class FeatureWriter:
    """Per-file feature files (safetensors or npy), written atomically."""

    def __init__(
        self, out: Path, layers: Sequence[int], representation: str, fmt: str, dtype: torch.dtype,
        frame_rate: float,
    ):  # fmt: skip
        if fmt not in ("safetensors", "npy"):
            raise ValueError(f"format must be 'safetensors' or 'npy', got {fmt!r}.")
        self.out, self.layers, self.representation, self.fmt, self.dtype = out, list(layers), representation, fmt, dtype
        self.frame_rate = frame_rate

    def paths(self, item: AudioItem) -> list[Path]:
        if self.fmt == "safetensors":
            return [self.out / f"{item.id}.safetensors"]
        if len(self.layers) == 1:
            return [self.out / f"{item.id}.npy"]
        return [self.out / f"{item.id}.layer{layer}.npy" for layer in self.layers]

    def is_done(self, item: AudioItem) -> bool:
        return all(path.is_file() for path in self.paths(item))

    def write(self, item: AudioItem, frames: dict[FrameKey, torch.Tensor]) -> None:
        tensors = [
            frames[(layer, self.representation)].to("cpu", self.dtype).contiguous() for layer in self.layers
        ]
        paths = self.paths(item)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        if self.fmt == "safetensors":
            metadata = {"representation": self.representation, "frame_rate": str(self.frame_rate), "path": item.path}
            named = {f"layer{layer}": t for layer, t in zip(self.layers, tensors, strict=True)}
            atomic_write(paths[0], lambda tmp: save_safetensors(named, tmp, metadata))
        else:
            for path, tensor in zip(paths, tensors, strict=True):
                array = tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor.float().numpy()
                atomic_write(path, lambda tmp, a=array: np.save(tmp, a, allow_pickle=False))

    def flush(self) -> None:
        pass  # each file is complete once renamed

    def close(self) -> None:
        pass


class UnitWriter:
    """Appends one JSON line per file; knows which ids a previous run already wrote."""

    def __init__(self, path: Path):
        self.path = path
        self.done = _read_done_ids(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8")

    def is_done(self, item: AudioItem) -> bool:
        return item.id in self.done

    def write(self, item: AudioItem, units: torch.Tensor) -> None:
        values = units.tolist()
        line = {"id": item.id, "path": item.path, "units": values, "num_frames": len(values)}
        self.file.write(json.dumps(line) + "\n")
        self.done.add(item.id)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _read_done_ids(path: Path) -> set[str]:
    """Ids of complete lines; a last line cut short by a crash is truncated away."""
    if not path.is_file():
        return set()
    done, keep = set(), 0
    with path.open("rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            if not raw.endswith(b"\n"):
                break
            done.add(record["id"])
            keep += len(raw)
    if keep < path.stat().st_size:
        logger.warning("dropping an incomplete last line of %s (a run was interrupted)", path)
        with path.open("r+b") as f:
            f.truncate(keep)
    return done


def shard_suffix(shard: tuple[int, int]) -> str:
    """``""`` for a whole run, ``.<i>-of-<n>`` for shard ``i`` of ``n``."""
    return "" if shard[1] == 1 else f".{shard[0]}-of-{shard[1]}"


def check_signature(out: Path, options: ExtractionOptions, model_dir: str) -> None:
    """Record the output-shaping options; refuse to resume into a folder made with others."""
    signature = {"model": str(Path(model_dir).resolve()), **options.output_signature()}
    path = out / "extraction.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:  # not ours, or cut short by hand: compare it as a different extraction
            previous = None
        if previous == json.loads(json.dumps(signature)):
            return
        if _holds_outputs(out):
            raise ValueError(
                f"{out} holds outputs of another extraction ({previous}); this one is {signature}. "
                "Use another --output-dir, or remove the old outputs."
            )
        logger.info("%s holds no outputs yet: replacing the options of an extraction that wrote none", out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(signature, indent=1) + "\n"))


def _holds_outputs(out: Path) -> bool:
    """Whether ``out`` holds a feature file or a unit line (what a mismatched rerun would mix with)."""
    if any(path.stat().st_size > 0 for path in out.glob("units*.jsonl")):
        return True
    return any(path.suffix in (".safetensors", ".npy") and not path.name.startswith(".") for path in out.rglob("*"))


def write_failures(path: Path, failed: list[tuple[str, str]]) -> None:
    """The failures of this run, or no file when there were none (earlier failures were retried)."""
    if not failed:
        path.unlink(missing_ok=True)
        return
    lines = "".join(json.dumps({"path": p, "error": e}) + "\n" for p, e in failed)
    atomic_write(path, lambda tmp: Path(tmp).write_text(lines))
