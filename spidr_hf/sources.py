"""Audio sources: the utterances of a run, where they come from, how long they are, how they decode.

Training (``spidr_hf.training.data``), extraction (``spidr_hf.extract``) and the pipeline read
audio through this module; waveform-level decoding is :mod:`spidr_hf.audio`. Sources:

* an audio file (``.wav``, ``.flac``, ``.mp3``, ``.ogg``: what soundfile reads);
* a folder: every audio file below it (recursive, sorted by path);
* a manifest: ``.csv`` (a header with a ``path`` column, optional ``num_samples`` and
  ``sampling_rate``) or ``.jsonl``/``.json`` (one object per line, the same fields), with paths
  relative to the manifest's folder; ``num_samples`` counts samples at 16 kHz unless a
  ``sampling_rate`` gives the file's rate. Or a fairseq ``.tsv``: a root folder line (relative
  to the manifest's folder), then ``relative/path<TAB>num_samples`` at 16 kHz;
* a map-style ``datasets.Dataset`` with an audio column, in memory or saved with
  ``save_to_disk`` (a ``DatasetDict``: every split). An ``Audio`` column is read undecoded
  (``{"bytes", "path"}``) and decoded here with soundfile (``datasets`` >= 4 would need
  ``torchcodec``); a column of ``{"array", "sampling_rate"}`` dicts is used as is (2-D arrays
  are ``(channels, frames)``).

Each utterance is an :class:`AudioItem`. Its ``id`` names its outputs: the path relative to its
folder (folders), to the manifest's root (fairseq) or folder (csv/jsonl), without extension; a
lone file's name without extension; a dataset row's ``id`` column, else its audio path without
extension, else its row number (prefixed by ``split/`` in a ``DatasetDict``). Lengths are
counted at 16 kHz: from the manifest, else from file headers or arrays (:meth:`AudioInputs.probe_lengths`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .audio import (
    AudioDecodeError,
    AudioSource,
    audio_length,
    load_audio,
    resample,
    resampled_length,
    to_mono,
    walk_audio_files,
)
from .modeling import SAMPLING_RATE
from .runs import missing_reason

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".tsv")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioItem:
    """One utterance: where to read it and, when known, its length at 16 kHz."""

    source: str | int
    """An audio file path, or a row number of the ``datasets.Dataset`` that ``dataset`` names."""
    num_samples: int | None = None
    """Length in samples once resampled to 16 kHz (None until probed)."""
    id: str = field(default="", compare=False)
    """The name of the utterance's outputs (extraction); a name, not part of what the audio is."""
    dataset: str = ""
    """Which dataset of its :class:`AudioInputs` a row belongs to (``""`` for files and lone datasets)."""

    @property
    def path(self) -> str:
        """Where the audio is, for reports: the file, ``DATASET_DIR#row`` or ``DATASET_DIR#split/row``."""
        if isinstance(self.source, str):
            return self.source
        return f"{self.dataset}{self.source}" if self.dataset else f"row {self.source}"


# --------------------------------------------------------------------------- datasets cells
def encoded_source(cell: Mapping[str, Any], name: str = "audio") -> AudioSource:
    """The file object or path holding the encoded audio of a ``{"bytes", "path"}`` cell."""
    source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell.get("path")
    if source is None:
        raise AudioDecodeError(f"{name}: the audio cell has neither bytes nor a path.")
    return source


def decode_cell(
    cell: Mapping[str, Any],
    sampling_rate: int = SAMPLING_RATE,
    mono: Literal["mean", "error"] = "mean",
    name: str = "audio",
) -> np.ndarray:
    """Mono float32 waveform at ``sampling_rate`` of an audio cell: ``{"array", "sampling_rate"}`` or ``{"bytes", "path"}``."""
    if "array" not in cell:
        return load_audio(encoded_source(cell, name), sampling_rate, mono)
    array = np.asarray(cell["array"], dtype=np.float32)
    wave = to_mono(array.T if array.ndim == 2 else array, mono, name=name)  # datasets stores (channels, frames)
    return resample(wave, int(cell["sampling_rate"]), sampling_rate, name)


def cell_length(cell: Mapping[str, Any], sampling_rate: int = SAMPLING_RATE, name: str = "audio") -> int:
    """Length at ``sampling_rate`` of an audio cell, from its array or its encoded header."""
    if "array" in cell:
        return resampled_length(np.asarray(cell["array"]).shape[-1], int(cell["sampling_rate"]), sampling_rate)
    return audio_length(encoded_source(cell, name), sampling_rate)


def is_hf_dataset(source: Any) -> bool:
    """Whether ``source`` is a ``datasets`` object (checked without importing ``datasets``)."""
    return type(source).__module__.split(".")[0] == "datasets"


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk`` (a folder that cannot be read is not)."""
    try:
        return path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json"))
    except PermissionError:  # the folder walk reports it
        return False


def prepare_hf_dataset(dataset: Any, audio_column: str = "audio") -> Any:
    """Check a ``datasets.Dataset`` and make its ``Audio`` column yield undecoded ``{"bytes", "path"}``."""
    import datasets  # optional dependency: only needed for this source

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"expected a map-style datasets.Dataset (streaming is not supported), got {type(dataset).__name__}."
        )
    if audio_column not in dataset.column_names:
        raise ValueError(
            f"the dataset has no column {audio_column!r}; its columns are {dataset.column_names}."
        )
    feature = dataset.features[audio_column]
    if isinstance(feature, datasets.Audio) and feature.decode:
        # datasets >= 4 decodes Audio with torchcodec; soundfile decodes the raw bytes instead
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    return dataset


def _audio_paths(dataset: Any, audio_column: str) -> list[str | None]:
    """The ``path`` field of every audio cell, read from Arrow without touching the audio bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")[audio_column]
    if not pa.types.is_struct(column.type) or column.type.get_field_index("path") < 0:
        return [None] * len(dataset)
    return pc.struct_field(column, "path").to_pylist()


def dataset_items(dataset: Any, audio_column: str = "audio", key: str = "", split: str = "") -> list[AudioItem]:
    """Items for the rows of a prepared ``datasets.Dataset`` (lengths unknown), named as the module says."""
    ids = dataset["id"] if "id" in dataset.column_names else None
    items = []
    for row, source in enumerate(_audio_paths(dataset, audio_column)):
        name = str(ids[row]) if ids is not None else _strip_extension(source) if source else f"{row:08d}"
        items.append(AudioItem(row, id=f"{split}/{name}" if split else name, dataset=key))
    return items


# --------------------------------------------------------------------------- manifests
@dataclass
class ManifestRow:
    """One manifest line: a path, and a length (with the rate it is counted at) when given."""

    path: str
    num_samples: int | None = None
    sampling_rate: int | None = None


def _optional_int(value: Any, where: str, name: str) -> int | None:
    """``None`` for a missing/empty manifest field, else the positive integer it holds."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or isinstance(value, bool):
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}.")
    return number


def _resolve(path: str, base: Path) -> str:
    """``path`` as is when absolute, else relative to ``base``."""
    return str(Path(path) if os.path.isabs(path) else base / path)


def _row_from_mapping(record: Mapping[str, Any], base: Path, where: str) -> ManifestRow:
    """A manifest row from a CSV/JSONL record with a ``path`` and optional length fields."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object with a 'path', got {type(record).__name__} {record!r:.60}.")
    if not record.get("path"):
        raise ValueError(f"{where}: missing 'path'.")
    return ManifestRow(
        _resolve(str(record["path"]), base),
        _optional_int(record.get("num_samples"), where, "num_samples"),
        _optional_int(record.get("sampling_rate"), where, "sampling_rate"),
    )


def _read_csv(path: Path) -> list[ManifestRow]:
    """Rows of a CSV manifest with a header holding at least ``path``."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(
                f"CSV manifest {path} needs a header with a 'path' column, got {reader.fieldnames}."
            )
        return [_row_from_mapping(r, path.parent, f"{path}:{i + 2}") for i, r in enumerate(reader)]


def _read_jsonl(path: Path) -> list[ManifestRow]:
    """Rows of a JSONL manifest: one JSON object per non-empty line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err.msg}).") from err
                rows.append(_row_from_mapping(record, path.parent, f"{path}:{number}"))
    return rows


def _fairseq_root(path: Path) -> Path:
    """The root folder on the first line of a fairseq manifest (relative roots: from the manifest's folder)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"fairseq manifest {path} is empty (its first line must be the root folder).")
    return Path(_resolve(lines[0].strip(), path.parent))


def _read_fairseq_tsv(path: Path) -> list[ManifestRow]:
    """Rows of a fairseq manifest: a root folder line, then ``relpath<TAB>num_samples`` lines."""
    root = _fairseq_root(path)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        if line.strip():
            fields = line.rstrip("\n").split("\t")
            length = _optional_int(fields[1], f"{path}:{number}", "num_samples") if len(fields) > 1 else None
            rows.append(ManifestRow(str(root / fields[0]), length, SAMPLING_RATE if length is not None else None))
    return rows


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Parse a ``.csv``, ``.jsonl``/``.json`` (JSON lines) or fairseq ``.tsv`` manifest."""
    path = Path(path)
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_jsonl, ".tsv": _read_fairseq_tsv}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise ValueError(
            f"unknown manifest type {path.suffix!r} for {path}: use .csv, .jsonl or a fairseq .tsv."
        )
    try:
        return reader(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"manifest {path} is not UTF-8 text ({err.reason} at byte {err.start}).") from err


def manifest_items(path: str | os.PathLike) -> list[AudioItem]:
    """Items of a manifest, in its order; lengths at 16 kHz where the manifest gives them."""
    path = Path(path)
    base = _fairseq_root(path) if path.suffix.lower() == ".tsv" else path.parent
    items = []
    for row in read_manifest(path):
        length = row.num_samples
        if length is not None:  # without a sampling_rate column, lengths are counted at 16 kHz
            length = resampled_length(length, row.sampling_rate or SAMPLING_RATE, SAMPLING_RATE)
        items.append(AudioItem(row.path, length, id=_relative_id(row.path, base)))
    return items


def write_manifest(items: Sequence[AudioItem], path: str | os.PathLike) -> None:
    """Save file items as a CSV manifest (``path,num_samples`` at 16 kHz).

    Indexing a large folder reads every header; saving the index lets later runs skip that.
    """
    if any(not isinstance(item.source, str) for item in items):
        raise ValueError("only utterances read from files can be written to a manifest.")
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "num_samples"])
        writer.writerows((os.path.abspath(item.source), item.num_samples) for item in items)


# --------------------------------------------------------------------------- folders and ids
def folder_inputs(folder: str | os.PathLike) -> AudioInputs:
    """Items of every audio file below ``folder`` (recursive, sorted by path), and the paths it could not read."""
    files, unreadable = walk_audio_files(folder)
    return AudioInputs([AudioItem(str(f), id=_relative_id(str(f), Path(folder))) for f in files], unreadable=unreadable)


def _strip_extension(relative: str) -> str:
    root, _ = os.path.splitext(relative)
    return root.replace(os.sep, "/")


def _relative_id(path: str, base: Path) -> str:
    """``path`` relative to ``base`` without extension; outside ``base``, the path without its root."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, os.path.abspath(base))
    if relative.startswith(os.pardir):  # keep the output inside the output folder
        relative = os.path.relpath(absolute, Path(absolute).anchor)
    return _strip_extension(relative)


# --------------------------------------------------------------------------- a run's inputs
@dataclass
class AudioInputs:
    """The items of one run and the datasets their rows belong to (decoding needs them)."""

    items: list[AudioItem]
    datasets: dict[str, Any] = field(default_factory=dict)  # key: AudioItem.dataset
    audio_column: str = "audio"
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of what a folder walk found but could not read (loops, dangling links, locked folders)."""

    def warn_unreadable(self) -> None:
        """Log a warning for each path in ``unreadable``, for runs that go on without them (never silently)."""
        for path, reason in self.unreadable:
            logger.warning("skipping %s: %s", path, reason)

    def with_items(self, items: list[AudioItem]) -> AudioInputs:
        """The same datasets with other items (a shard, the files left to do)."""
        return AudioInputs(items, self.datasets, self.audio_column, self.unreadable)

    def cell(self, item: AudioItem) -> Mapping[str, Any]:
        """The audio cell of a dataset row."""
        return self.datasets[item.dataset][item.source][self.audio_column]

    def decode(
        self,
        item: AudioItem,
        sampling_rate: int = SAMPLING_RATE,
        mono: Literal["mean", "error"] = "mean",
        *,
        start: int = 0,
        stop: int | None = None,
    ) -> np.ndarray:
        """Mono float32 samples ``[start, stop)`` at ``sampling_rate`` (raises AudioDecodeError or ValueError).

        A file at ``sampling_rate`` is read only in that window; a dataset row is decoded whole.
        """
        if isinstance(item.source, str):
            return load_audio(item.source, sampling_rate, mono, start=start, stop=stop)
        wave = decode_cell(self.cell(item), sampling_rate, mono, name=item.path)
        return wave if (start, stop) == (0, None) else wave[start:stop]

    def probe_lengths(self, num_threads: int = 8) -> tuple[AudioInputs, list[tuple[AudioItem, AudioDecodeError]]]:
        """Fill in unknown lengths from file headers (dataset rows: from their cells).

        Returns the inputs, unreadable items left with ``num_samples=None``, and the errors of those.
        """

        def probe(item: AudioItem) -> tuple[AudioItem, AudioDecodeError | None]:
            if item.num_samples is not None:
                return item, None
            try:
                if isinstance(item.source, str):
                    length = audio_length(item.source)
                else:
                    length = cell_length(self.cell(item), name=item.path)
            except Exception as err:  # any unreadable header; decoding will report it again
                if isinstance(item.source, int) or not isinstance(err, AudioDecodeError):
                    err = AudioDecodeError(f"{item.path}: {err}")  # file errors name their file already
                return item, err
            return replace(item, num_samples=length), None

        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:  # header reads are I/O bound
            results = list(pool.map(probe, self.items))
        errors = [(item, error) for item, error in results if error is not None]
        return self.with_items([item for item, _ in results]), errors


def _dataset_inputs(path: Path, audio_column: str) -> AudioInputs:
    """The rows of a dataset saved with ``save_to_disk`` (every split of a ``DatasetDict``)."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    items, prepared = [], {}
    for split, dataset in splits.items():
        key = f"{path}#{split}/" if split else f"{path}#"
        prepared[key] = prepare_hf_dataset(dataset, audio_column)
        items += dataset_items(prepared[key], audio_column, key=key, split=split)
    return AudioInputs(items, prepared, audio_column)


def collect_inputs(inputs: Sequence[str | os.PathLike], audio_column: str = "audio") -> AudioInputs:
    """Expand files, folders, manifests and saved datasets into items sorted by id (ids must be unique)."""
    collected = AudioInputs([], {}, audio_column)
    for entry in inputs:
        path = Path(entry)
        if is_saved_dataset(path):
            found = _dataset_inputs(path, audio_column)
            collected.items += found.items
            collected.datasets.update(found.datasets)
        elif path.is_dir():
            found = folder_inputs(path)
            collected.items += found.items
            collected.unreadable += found.unreadable
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            collected.items += manifest_items(path)
        elif path.is_file():
            collected.items.append(AudioItem(str(path), id=_strip_extension(path.name)))
        elif not path.exists():
            raise FileNotFoundError(f"input {path} {missing_reason(path)}.")
        else:
            raise FileNotFoundError(
                f"input {path} is neither an audio file, a folder, a manifest nor a saved dataset."
            )
    _check_unique_ids(collected.items)
    return collected.with_items(sorted(collected.items, key=lambda item: item.id))


def _check_unique_ids(items: Sequence[AudioItem]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(
                f"two inputs map to the output id {item.id!r}: {seen[item.id]} and {item.path}; "
                "give them distinct relative paths (or extract them in separate runs)."
            )
        seen[item.id] = item.path


__all__ = [
    "MANIFEST_SUFFIXES",
    "AudioInputs",
    "AudioItem",
    "ManifestRow",
    "cell_length",
    "collect_inputs",
    "dataset_items",
    "decode_cell",
    "encoded_source",
    "folder_inputs",
    "is_hf_dataset",
    "manifest_items",
    "prepare_hf_dataset",
    "read_manifest",
    "write_manifest",
]
