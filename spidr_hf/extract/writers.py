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
  the same folder is refused, because it would mix incompatible files; so is one whose files would
  sit beside outputs of another layout (``units.jsonl`` beside ``units.<i>-of-<n>.jsonl``, units
  beside features, other ``.layer<L>.npy`` files), even without ``extraction.json``.
* ``OUT/failures.jsonl`` (per shard likewise): the files that could not be processed, and why.

Resuming: files whose outputs exist (features) or whose id is in the JSONL (units) are skipped;
a JSONL line that is not a complete record (cut short by a crash, not JSON, not an object with an
``id``) is reported with its line number and dropped before appending, so that only its file is redone.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..runs import atomic_write, atomic_write_text, refuse_other_layout, save_safetensors, write_failure
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
        return all(os.path.isfile(path) for path in self.paths(item))  # False for a name too long, as for none

    def write(self, item: AudioItem, frames: dict[FrameKey, torch.Tensor]) -> None:
        tensors = [
            frames[(layer, self.representation)].to("cpu", self.dtype).contiguous() for layer in self.layers
        ]
        paths = self.paths(item)
        try:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_failure(paths[0].parent, error) from error
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


class JsonlWriter:
    """Appends one JSON line per file (``id``, ``path`` and its fields); knows which ids a previous run
    already wrote (:func:`read_done_ids`), so a rerun skips them."""

    def __init__(self, path: Path):
        self.path = path
        self.done = read_done_ids(path)
        try:
            self.file = path.open("a", encoding="utf-8")
        except OSError as error:
            raise write_failure(path, error) from error

    def is_done(self, item: AudioItem) -> bool:
        return item.id in self.done

    def write_record(self, item: AudioItem, fields: dict) -> None:
        line = {"id": item.id, "path": item.path, **fields}
        try:
            self.file.write(json.dumps(line, ensure_ascii=False) + "\n")
        except OSError as error:
            raise write_failure(self.path, error) from error
        self.done.add(item.id)

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as error:  # a line cut by a full disk is dropped by the next run's reader
            raise write_failure(self.path, error) from error

    def close(self) -> None:
        try:
            self.file.close()
        except OSError as error:
            raise write_failure(self.path, error) from error


class UnitWriter(JsonlWriter):
    """One line of units per file: ``{"id", "path", "units", "num_frames"}``."""

    def write(self, item: AudioItem, units: torch.Tensor) -> None:
        values = units.tolist()
        self.write_record(item, {"units": values, "num_frames": len(values)})


def record_problem(raw: bytes) -> str | None:
    """Why one line of a JSONL output is not a complete record (``None`` when it is one): cut short, not
    JSON, not an object, or without a string ``id``."""
    if not raw.endswith(b"\n"):
        return "cut short (no newline: a run was interrupted)"
    try:
        record = json.loads(raw)
    except ValueError:
        return "not JSON"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("id"), str):
        return "an object without a string 'id'"
    return None


def read_done_ids(path: Path) -> set[str]:
    """Ids of the complete records of a JSONL output; every other line is reported with its number and
    dropped from the file (a cut last line is truncated away, a bad line elsewhere rewritten out), so that
    its file is redone and the records after it are kept."""
    if not path.is_file():
        return set()
    done, kept, bad = set(), [], []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            problem = record_problem(raw)
            if problem is None:
                done.add(json.loads(raw)["id"])
                kept.append(raw)
            else:
                bad.append(number)
                logger.warning("%s line %d is not a complete record (%s): dropped, its file is redone", path, number, problem)
    if not bad:
        return done
    if bad == [number]:  # only the last line: cut it off in place
        with path.open("r+b") as f:
            f.truncate(sum(map(len, kept)))
    else:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"".join(kept)))
    return done


def shard_suffix(shard: tuple[int, int]) -> str:
    """``""`` for a whole run, ``.<i>-of-<n>`` for shard ``i`` of ``n``."""
    return "" if shard[1] == 1 else f".{shard[0]}-of-{shard[1]}"


_SHARD_UNITS = re.compile(r"^units\.(\d+)-of-(\d+)\.jsonl$")
_LAYER_NPY = re.compile(r"\.layer(\d+)\.npy$")
# k-means files (kmeans_layer<L>_k<K>.safetensors, kmeans_<kind>_k<K>.safetensors) may share a folder with units


def check_layout(out: Path, options: ExtractionOptions) -> None:
    """Refuse an output folder holding outputs this run would not see (``ValueError`` naming them): unit
    files of another sharding (``units.jsonl`` vs ``units.<i>-of-<n>.jsonl``: resuming from one file would
    write every id again), units beside features, npy files of other layers. Reads names only."""
    if not out.is_dir():
        return
    count = options.shard[1]
    mine = f"units{shard_suffix(options.shard)}.jsonl"
    units = [p for p in out.glob("units*.jsonl") if p.is_file() and p.stat().st_size > 0]
    features = [p for p in out.rglob("*") if p.suffix in (".safetensors", ".npy") and not p.name.startswith((".", "kmeans_"))]
    if options.units:
        this = f"{mine} ({f'shard {options.shard[0]} of {count}' if count > 1 else 'a whole run'})"
        others = [p for p in units if p.name != mine and not _same_sharding(p.name, count)] + features
    else:
        this = f"{options.output_format} features"
        others = units + [p for p in features if not _same_feature_layout(p, options)]
    refuse_other_layout(out, others, this, "Use another --output-dir, or the same --shard count / options as the "
                        "earlier run, or remove the old outputs.")  # fmt: skip


def _same_sharding(name: str, count: int) -> bool:
    """Whether a unit file is another shard of the same ``count``."""
    found = _SHARD_UNITS.match(name)
    return count > 1 and found is not None and int(found.group(2)) == count


def _same_feature_layout(path: Path, options: ExtractionOptions) -> bool:
    """Whether a feature file has the name this run would give it (format, and npy layers)."""
    if path.suffix != f".{options.output_format}":
        return False
    if options.output_format == "safetensors":
        return True
    layer = _LAYER_NPY.search(path.name)
    layers = options.layers or []
    if len(set(layers)) > 1:
        return layer is not None and int(layer.group(1)) in layers
    return layer is None


def read_signature(out: Path) -> dict | None:
    """The options recorded in ``out/extraction.json`` (``None`` without one); a ``ValueError`` naming the file
    when it is not an extraction record, rather than replacing a file this package may not have written."""
    path = out / "extraction.json"
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        previous = error
    if not isinstance(previous, dict) or "model" not in previous:
        raise ValueError(
            f"{path} is not the record of an extraction (a JSON object of its options, as spidr-hf extract writes): "
            "use another --output-dir, or remove that file if nothing in the folder needs it."
        )
    return previous


def check_signature(out: Path, options: ExtractionOptions, model_dir: str, write: bool = True) -> None:
    """Refuse to resume into a folder made with other output-shaping options; with ``write``, record them."""
    signature = {"model": str(Path(model_dir).resolve()), **options.output_signature()}
    previous = read_signature(out)
    if previous is not None:
        if previous == json.loads(json.dumps(signature)):
            return
        if _holds_outputs(out):
            raise ValueError(
                f"{out} holds outputs of another extraction ({previous}); this one is {signature}. "
                "Use another --output-dir, or remove the old outputs."
            )
        if write:
            logger.info("%s holds no outputs yet: replacing the options of an extraction that wrote none", out)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "extraction.json", json.dumps(signature, indent=1) + "\n")


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
    atomic_write_text(path, lines)
