"""Features or discrete units of many audio files, from disk to disk (the engine of ``spidr-hf extract``).

Inputs (:func:`collect_inputs`): audio files; folders (every ``.wav/.flac/.mp3/.ogg`` below,
recursively); manifests (``.csv`` / ``.jsonl`` with a ``path`` column, fairseq ``.tsv``, read
by ``spidr_hf.training.data.read_manifest``); and ``datasets`` datasets saved with
``save_to_disk`` (an ``Audio`` column read undecoded and decoded with soundfile). An input's
id is its path relative to its folder (folders), to the manifest's root (fairseq) or folder
(csv/jsonl), without extension; a lone file's id is its name without extension; a dataset
row's id is its ``id`` column, else its audio path without extension, else its row number,
and its ``path`` in outputs and reports is ``DATASET_DIR#row`` (``#split/row`` for a
``DatasetDict``).

Outputs, in ``OUT``:

* features: ``OUT/<id>.safetensors`` with one ``(frames, hidden)`` tensor per layer named
  ``layer<L>`` (metadata: representation, frame rate, source path), or ``--format npy``:
  ``OUT/<id>.npy`` for one layer, ``OUT/<id>.layer<L>.npy`` for several. Written to a
  temporary name then renamed, so an existing file is always complete.
* units: one JSON line per file, ``{"id", "path", "units", "num_frames"}``, appended to
  ``OUT/units.jsonl`` (``OUT/units.<i>-of-<n>.jsonl`` for shard ``i`` of ``n``: concatenate
  them afterwards). ``num_frames == len(units)``; units are not deduplicated.
* ``OUT/extraction.json``: the options that shape the outputs. A rerun with other options
  into the same folder is refused, because it would mix incompatible files.
* ``OUT/failures.jsonl`` (per shard likewise): the files that could not be processed, why.

Resuming: files whose outputs exist (features) or whose id is in the JSONL (units) are
skipped; a JSONL line cut short by a crash is dropped before appending.

Batching: files are sorted by length (longest first, from their headers) and grouped so that
``batch size x longest length <= max_batch_samples``; padding is masked and does not change
any real frame (the model's padding invariance, tested). Decoding runs in DataLoader workers.
The default budget is 3.2M samples (200 s) on a GPU and one file per batch on a CPU: measured
on a 2-core CPU, batches of 12 files ran 2.2x slower than one file at a time (the large conv
activations fall out of cache and padding is pure waste there), while GPUs need batches.

Long files (longer than ``max_whole_seconds``) are processed in overlapping windows, so that
memory does not grow with the square of the file's length (attention) but only linearly
(the waveform, 230 MB per hour, and the outputs). **Stitching rule**: frame ``t`` of a file
covers samples ``[320 t, 320 t + 400)`` (the conv formula), so a slice of the waveform that
starts at sample ``320 s`` yields exactly the frames ``s, s+1, ...`` of the whole file. The
file's ``T`` frames are cut into *core* blocks of ``W = 50 window_seconds`` frames; block
``[a, a+W)`` is computed from the slice covering frames ``[a-C, a+W+C)`` (``C = 50
context_seconds``, clipped to ``[0, T)``), i.e. samples ``[320 (a-C), 320 (a+W+C-1) + 400)``,
and only its core frames are kept. The waveform is standardised once over the whole file
(as whole-file processing does) before slicing, and codeword units are instance-normalised
over the whole stitched file. So windowing differs from whole-file processing only through
what attention can see: each kept frame sees at least ``C`` frames of context on each side
(fewer only at the file's edges, exactly as in whole-file processing).

Measured difference, windowed (20 s core + 5 s context on each side, the defaults) vs whole,
on a 60 s file (a gliding harmonic tone, gated at 2.5 Hz, plus noise; ``python
benchmarks/bench_extract.py --compare-windowing [--windowing-model DIR]``), as the relative
Frobenius error ``||windowed - whole|| / ||whole||`` over all frames:

* the converted reference fixture (4 layers x 64): 0.93 % at the last layer (0.93 % at the
  worst layer); head units agree on 100 % (layer 3) and 98.7 % (layer 4) of frames;
* a base-size model with random weights (12 x 768): 1.34 % at the last layer (1.42 % at the
  worst); head units agree on 96.1 to 98.7 % of frames, depending on the layer;
* the tests' tiny random model (3 x 32): 0.29 % at layer 3.

Without context the error is 3.5 to 8 %; with 10 s of context 0.6 to 1.0 %. No trained
base-size checkpoint was at hand to measure; trained wav2vec2-style encoders attend mostly
locally, so we expect them to do no worse than random weights, whose attention spreads over
the whole input. ``WINDOWED_RELATIVE_TOLERANCE`` (3 %) is what the tests accept. Whole-file
processing (the default up to 60 s) equals the model's output on the whole file.

Sharding: ``shard=(i, n)`` keeps every ``n``-th file of the sorted input list, starting at
``i``. Under ``accelerate launch`` / ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
set) the CLI shards by rank and uses ``cuda:LOCAL_RANK``::

    accelerate launch --num_processes 8 -m spidr_hf.cli extract MODEL data/ --output-dir out
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .audio import (
    SAMPLING_RATE,
    AudioDecodeError,
    find_audio_files,
    load_audio,
    num_frames,
    resample,
    resampled_length,
    standardize,
    to_mono,
)
from .modeling import SpidRForPreTraining, SpidRModel
from .units import (
    KMeansQuantizer,
    codeword_units_from_features,
    encoder_of,
    frame_mask_of,
    head_units_from_features,
    resolve_layer,
    select_layer,
)

logger = logging.getLogger(__name__)

FRAME_HOP = 320  # samples between frames (product of the conv strides)
FRAME_FIELD = 400  # samples seen by one frame (the conv receptive field)
FRAME_RATE = SAMPLING_RATE // FRAME_HOP
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".tsv")
UNIT_KINDS = ("head", "codeword", "kmeans")
GPU_BATCH_SAMPLES = 3_200_000
WINDOWED_RELATIVE_TOLERANCE = 0.03
"""Relative Frobenius difference, windowed vs whole file, that the tests accept (measured: 0.9 to 1.4 %)."""

FrameKey = tuple[int, str]  # (1-based layer, representation)


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class AudioItem:
    """One input: its output id, where to read it, and its length at 16 kHz when known."""

    id: str
    path: str
    num_samples: int | None = None
    row: int | None = None  # row of `AudioInputs.dataset` (datasets inputs)
    split: str | None = None


@dataclass
class AudioInputs:
    """The inputs of one run and the datasets they refer to (decoding needs them)."""

    items: list[AudioItem]
    datasets: dict[str, Any] = field(default_factory=dict)  # key: AudioItem.split
    audio_column: str = "audio"

    def decode(self, item: AudioItem) -> np.ndarray:
        """Mono float32 waveform at 16 kHz (raises AudioDecodeError or ValueError)."""
        if item.row is None:
            return load_audio(item.path, SAMPLING_RATE)
        return _decode_cell(self.datasets[item.split][item.row][self.audio_column], item.path)


def _decode_cell(value: dict[str, Any], name: str) -> np.ndarray:
    if "array" in value:
        array = np.asarray(value["array"], dtype=np.float32)
        wave = to_mono(array.T if array.ndim == 2 else array, name=name)  # datasets stores (channels, frames)
        return resample(wave, int(value["sampling_rate"]), SAMPLING_RATE)
    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if source is None:
        raise AudioDecodeError(f"{name}: the audio cell has neither bytes nor a path.")
    return load_audio(source, SAMPLING_RATE)


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


def _manifest_base(path: Path) -> Path:
    """Where manifest paths are relative to: a fairseq manifest's root line, else its folder."""
    if path.suffix.lower() == ".tsv":
        root = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
        return Path(root) if os.path.isabs(root) else path.parent / root
    return path.parent


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json"))


def _manifest_items(path: Path) -> list[AudioItem]:
    from .training.data import read_manifest  # one manifest parser for training and extraction

    base = _manifest_base(path)
    items = []
    for row in read_manifest(path):
        length = row.num_samples
        if length is not None:
            length = resampled_length(length, row.sampling_rate or SAMPLING_RATE, SAMPLING_RATE)
        items.append(AudioItem(_relative_id(row.path, base), row.path, length))
    return items


def _dataset_items(path: Path, audio_column: str) -> tuple[list[AudioItem], dict[str, Any]]:
    import datasets

    from .training.data import prepare_hf_dataset

    loaded = datasets.load_from_disk(str(path))
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"": loaded}
    items, prepared = [], {}
    for split, dataset in splits.items():
        key = f"{path}:{split}"
        prepared[key] = dataset = prepare_hf_dataset(dataset, audio_column)
        ids = dataset["id"] if "id" in dataset.column_names else None
        for row, source in enumerate(_audio_paths(dataset, audio_column)):
            name = str(ids[row]) if ids is not None else _strip_extension(source) if source else f"{row:08d}"
            items.append(
                AudioItem(f"{split}/{name}" if split else name, f"{path}#{split}{row}", row=row, split=key)
            )
    return items, prepared


def _audio_paths(dataset: Any, audio_column: str) -> list[str | None]:
    """The ``path`` field of every audio cell, read from Arrow without touching the audio bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = dataset.with_format("arrow")[audio_column]
    if not pa.types.is_struct(column.type) or column.type.get_field_index("path") < 0:
        return [None] * len(dataset)
    return pc.struct_field(column, "path").to_pylist()


def collect_inputs(inputs: Sequence[str | os.PathLike], audio_column: str = "audio") -> AudioInputs:
    """Expand files, folders, manifests and saved datasets into a list of items sorted by id."""
    items: list[AudioItem] = []
    datasets: dict[str, Any] = {}
    for entry in inputs:
        path = Path(entry)
        if _is_saved_dataset(path):
            found, prepared = _dataset_items(path, audio_column)
            items += found
            datasets.update(prepared)
        elif path.is_dir():
            items += [AudioItem(_relative_id(str(f), path), str(f)) for f in find_audio_files(path)]
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            items += _manifest_items(path)
        elif path.is_file():
            items.append(AudioItem(_strip_extension(path.name), str(path)))
        else:
            raise FileNotFoundError(
                f"input {path} is neither an audio file, a folder, a manifest nor a saved dataset."
            )
    _check_unique_ids(items)
    return AudioInputs(sorted(items, key=lambda item: item.id), datasets, audio_column)


def _check_unique_ids(items: Sequence[AudioItem]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(
                f"two inputs map to the output id {item.id!r}: {seen[item.id]} and {item.path}; "
                "give them distinct relative paths (or extract them in separate runs)."
            )
        seen[item.id] = item.path


def probe_lengths(inputs: AudioInputs, num_threads: int = 8) -> AudioInputs:
    """Fill in unknown lengths from file headers (datasets: from the cells); unreadable ones stay None."""

    def probe(item: AudioItem) -> AudioItem:
        if item.num_samples is not None:
            return item
        try:
            if item.row is None:
                info = sf.info(item.path)
            else:
                cell = inputs.datasets[item.split][item.row][inputs.audio_column]
                if "array" in cell:
                    length = np.asarray(cell["array"]).shape[-1]
                    return _with_length(
                        item, resampled_length(length, int(cell["sampling_rate"]), SAMPLING_RATE)
                    )
                info = sf.info(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"])
        except Exception:  # reported when decoding fails; here it only loses its place in the sort
            return item
        return _with_length(item, resampled_length(info.frames, info.samplerate, SAMPLING_RATE))

    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:  # header reads are I/O bound
        items = list(pool.map(probe, inputs.items))
    return AudioInputs(items, inputs.datasets, inputs.audio_column)


def _with_length(item: AudioItem, num_samples: int) -> AudioItem:
    return AudioItem(item.id, item.path, num_samples, item.row, item.split)


# --------------------------------------------------------------------------- batching
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


def pad_batch(waves: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad with zeros: ``(batch, samples)`` input values and the 0/1 attention mask."""
    longest = max(len(w) for w in waves)
    values = torch.zeros(len(waves), longest)
    mask = torch.zeros(len(waves), longest, dtype=torch.long)
    for row, wave in enumerate(waves):
        values[row, : len(wave)] = torch.as_tensor(wave)
        mask[row, : len(wave)] = 1
    return values, mask


@dataclass(frozen=True)
class Window:
    """Frames ``[first, last)`` computed from input frames ``[start, stop)`` (see the stitching rule)."""

    first: int
    last: int
    start: int
    stop: int

    @property
    def samples(self) -> tuple[int, int]:
        return FRAME_HOP * self.start, FRAME_HOP * (self.stop - 1) + FRAME_FIELD


def plan_windows(total_frames: int, window_frames: int, context_frames: int) -> list[Window]:
    """Core blocks of ``window_frames`` frames, each with up to ``context_frames`` frames on both sides."""
    if window_frames <= 0 or context_frames < 0:
        raise ValueError("window_frames must be positive and context_frames non-negative.")
    return [
        Window(
            first,
            min(first + window_frames, total_frames),
            max(0, first - context_frames),
            min(total_frames, first + window_frames + context_frames),
        )  # fmt: skip
        for first in range(0, total_frames, window_frames)
    ]


# --------------------------------------------------------------------------- model side
class FrameEncoder:
    """Runs a SpidR model on standardised waveforms and returns the requested frame representations.

    ``keys`` are ``(layer, representation)`` pairs; every result is a dict ``key -> (frames, hidden)``
    tensor on the model's device, trimmed to the input's own frames.
    """

    def __init__(self, model: torch.nn.Module, keys: Sequence[FrameKey], max_batch_samples: int):
        self.model = model
        self.encoder = encoder_of(model)
        self.keys = list(dict.fromkeys(keys))
        num_layers = self.encoder.config.num_hidden_layers
        for layer, representation in self.keys:
            resolve_layer(num_layers, layer, representation)
        # the last layer's post-LN output is last_hidden_state: no need to keep every layer's output
        self.keep_all = any(key != (num_layers, "hidden_state") for key in self.keys)
        self.max_batch_samples = max_batch_samples

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @torch.no_grad()
    def encode(self, waves: Sequence[np.ndarray | torch.Tensor]) -> list[dict[FrameKey, torch.Tensor]]:
        """One padded forward pass over standardised ``waves``; per wave its frames, unpadded."""
        values, mask = pad_batch(waves)
        values = values.to(self.device, self.encoder.dtype)
        # without padding the mask changes nothing but costs masking work (and sdpa's masked path)
        mask = None if bool(mask.all()) else mask.to(self.device)
        output = self.encoder(values, attention_mask=mask, output_hidden_states=self.keep_all)
        selected = {key: select_layer(output, *key) for key in self.keys}
        lengths = frame_mask_of(output, selected[self.keys[0]]).sum(-1).tolist()
        return [
            {key: tensor[row, :length] for key, tensor in selected.items()}
            for row, length in enumerate(lengths)
        ]

    def encode_windowed(
        self,
        wave: np.ndarray | torch.Tensor,
        window_frames: int,
        context_frames: int,
        store_dtype: torch.dtype,
    ) -> dict[FrameKey, torch.Tensor]:
        """Frames of one long standardised wave, computed window by window (module docstring) on CPU."""
        total = num_frames(len(wave))
        stitched = {key: None for key in self.keys}
        windows = plan_windows(total, window_frames, context_frames)
        span = windows[0].samples[1] - windows[0].samples[0]
        per_batch = max(1, self.max_batch_samples // span)
        for start in range(0, len(windows), per_batch):
            group = windows[start : start + per_batch]
            outputs = self.encode([wave[w.samples[0] : w.samples[1]] for w in group])
            for window, frames in zip(group, outputs, strict=True):
                offset = window.first - window.start
                for key, tensor in frames.items():
                    if stitched[key] is None:  # allocated once the hidden size is known
                        stitched[key] = torch.empty(total, tensor.shape[-1], dtype=store_dtype)
                    stitched[key][window.first : window.last] = tensor[
                        offset : offset + window.last - window.first
                    ].cpu()
        return stitched


class UnitComputer:
    """Turns a file's frames into units: head argmax, nearest codeword, or nearest k-means centroid."""

    def __init__(
        self, kind: str, model: torch.nn.Module, layer: int | None, quantizer: KMeansQuantizer | None
    ):
        if kind not in UNIT_KINDS:
            raise ValueError(f"units must be one of {UNIT_KINDS}, got {kind!r}.")
        self.kind, self.model, self.quantizer = kind, model, quantizer
        config = model.config
        if kind == "kmeans":
            if quantizer is None:
                raise ValueError("k-means units need a KMeansQuantizer.")
            if layer is not None and layer != quantizer.layer:
                raise ValueError(
                    f"the k-means quantizer was fitted on layer {quantizer.layer}, not layer {layer}."
                )
            self.layer = quantizer.layer
            self.key: FrameKey = (quantizer.layer, quantizer.representation)
            return
        if layer is None:
            raise ValueError(
                f"{kind} units need a layer; this model's codebook layers are {config.codebook_layers}."
            )
        config.codebook_index(layer)
        self.layer = layer
        # codeword units read the layer's before-residual output; heads read config.head_input_of(layer)
        self.key = (layer, "before_residual") if kind == "codeword" else config.head_input_of(layer)

    @torch.no_grad()
    def __call__(self, frames: dict[FrameKey, torch.Tensor]) -> torch.Tensor:
        features = frames[self.key].to(self.model.device)
        if self.kind == "head":
            return head_units_from_features(self.model, features, self.layer)
        if self.kind == "codeword":
            return codeword_units_from_features(self.model, features[None], self.layer)[0]
        return self.quantizer(features)


# --------------------------------------------------------------------------- outputs
class FeatureWriter:
    """Per-file feature files (safetensors or npy), written atomically."""

    def __init__(self, out: Path, layers: Sequence[int], representation: str, fmt: str, dtype: torch.dtype):
        if fmt not in ("safetensors", "npy"):
            raise ValueError(f"format must be 'safetensors' or 'npy', got {fmt!r}.")
        self.out, self.layers, self.representation, self.fmt, self.dtype = (
            out,
            list(layers),
            representation,
            fmt,
            dtype,
        )

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
            metadata = {
                "representation": self.representation,
                "frame_rate": str(FRAME_RATE),
                "path": item.path,
            }
            named = {f"layer{layer}": t for layer, t in zip(self.layers, tensors, strict=True)}
            _atomic(paths[0], lambda tmp: save_file(named, tmp, metadata=metadata))
        else:
            for path, tensor in zip(paths, tensors, strict=True):
                array = tensor.numpy() if tensor.dtype != torch.bfloat16 else tensor.float().numpy()
                _atomic(path, lambda tmp, a=array: np.save(tmp, a, allow_pickle=False))

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


def _atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the run
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
    fp16: bool = False
    device: str | None = None
    dtype: str = "fp32"
    max_batch_samples: int | None = None  # None: 3.2M samples on a GPU, one file per batch on a CPU
    max_whole_seconds: float = 60.0
    window_seconds: float = 20.0
    context_seconds: float = 5.0
    num_workers: int | None = None  # None: default_num_workers(device)
    shard: tuple[int, int] = (0, 1)
    strict: bool = False
    progress: bool = True
    audio_column: str = "audio"

    def output_signature(self) -> dict[str, Any]:
        """The options that change what the outputs contain (a resumed run must keep them)."""
        keys = ("layers", "representation", "units", "unit_layer", "kmeans", "output_format", "fp16", "dtype",
                "window_seconds", "context_seconds", "max_whole_seconds")  # fmt: skip
        signature = {key: getattr(self, key) for key in keys}
        if self.units:  # features-only settings do not matter for units, and conversely
            for key in ("layers", "representation", "output_format", "fp16"):
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


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Compute dtypes by their command-line names."""


def load_model(
    model_dir: str | os.PathLike, device: str | None = None, dtype: str = "fp32", pretraining: bool = False
) -> torch.nn.Module:
    """The encoder, or with ``pretraining`` the pretraining model (heads, codebooks), in eval mode.

    ``device`` defaults to CUDA when available; only the encoder runs in ``dtype``: heads and
    codebooks are tiny, and bf16 codewords would move units.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cls = SpidRForPreTraining if pretraining else SpidRModel
    model = cls.from_pretrained(model_dir, dtype=torch.float32)
    encoder_of(model).to(DTYPES[dtype])
    return model.to(device).eval()


def _frame_keys(options: ExtractionOptions, units: UnitComputer | None, num_layers: int) -> list[FrameKey]:
    if units is not None:
        return [units.key]
    layers = dict.fromkeys(options.layers or [num_layers])  # ordered, without repeats
    return [(layer, options.representation) for layer in layers]


class _DecodeDataset(Dataset):
    """Decodes whole batches of items in DataLoader workers; a failure is returned, not raised."""

    def __init__(self, inputs: AudioInputs, batches: list[list[AudioItem]]):
        self.inputs, self.batches = inputs, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[tuple[AudioItem, np.ndarray | Exception]]:
        decoded = []
        for item in self.batches[index]:
            try:
                wave = self.inputs.decode(item)
                if len(wave) < FRAME_FIELD:
                    raise AudioDecodeError(
                        f"{len(wave)} samples, fewer than the {FRAME_FIELD} one frame needs"
                    )
                decoded.append((item, wave))
            except Exception as err:  # any bad file is reported and skipped, never fatal
                decoded.append((item, err))
        return decoded


def default_num_workers(device: torch.device) -> int:
    """Decoding processes when none are given: the cores torch's compute threads leave free (at most 4).

    On a CPU the model uses every core, and decoding in worker processes would only take cores
    from it (and start them: about 0.3 s); decoding in the main process costs about 1 % of the
    model's time. A GPU leaves the CPU to decoding.
    """
    spare = (os.cpu_count() or 1) - (1 if device.type == "cuda" else torch.get_num_threads())
    return max(0, min(4, spare))


def default_batch_samples(device: torch.device) -> int:
    """Samples per batch when none is given: batches pay off on GPUs only (see the module docstring)."""
    return GPU_BATCH_SAMPLES if device.type == "cuda" else 1


def _plan(items: list[AudioItem], options: ExtractionOptions, budget: int) -> list[list[AudioItem]]:
    """Whole-file batches of short items (length-sorted, under the budget), then one batch per long item."""
    long_limit = options.max_whole_seconds * SAMPLING_RATE
    short = [i for i in items if i.num_samples is not None and i.num_samples <= long_limit]
    # long files, and files whose header could not be read (they will most likely fail to decode), go alone
    alone = [[i] for i in items if i.num_samples is None or i.num_samples > long_limit]
    lengths = [i.num_samples for i in short]
    return [[short[j] for j in batch] for batch in length_batches(lengths, budget)] + alone


def _select_shard(items: list[AudioItem], shard: tuple[int, int]) -> list[AudioItem]:
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}.")
    return items[index::count]


def _check_signature(out: Path, options: ExtractionOptions, model_dir: str) -> None:
    """Record the output-shaping options; refuse to resume into a folder made with others."""
    signature = {"model": str(Path(model_dir).resolve()), **options.output_signature()}
    path = out / "extraction.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(signature)):
            raise ValueError(
                f"{out} holds outputs of another extraction ({previous}); this one is {signature}. "
                "Use another --output-dir, or remove the old outputs."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(signature, indent=1) + "\n"))


def _shard_suffix(shard: tuple[int, int]) -> str:
    return "" if shard[1] == 1 else f".{shard[0]}-of-{shard[1]}"


def extract(
    model_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] | AudioInputs,
    options: ExtractionOptions,
    model: torch.nn.Module | None = None,
) -> ExtractionReport:
    """Extract features or units of ``inputs`` into ``options.output_dir`` (module docstring)."""
    started = time.perf_counter()
    out = Path(options.output_dir)
    if model is None:  # head and codeword units need the pretraining model's heads and codebooks
        model = load_model(model_dir, options.device, options.dtype, options.units in ("head", "codeword"))
    units = None
    if options.units:
        quantizer = None
        if options.units == "kmeans":
            quantizer = (KMeansQuantizer.load(options.kmeans) if options.kmeans
                         else KMeansQuantizer.from_pretrained(model_dir, layer=options.unit_layer))  # fmt: skip
        units = UnitComputer(options.units, model, options.unit_layer, quantizer)
    num_layers = encoder_of(model).config.num_hidden_layers
    keys = _frame_keys(options, units, num_layers)
    budget = options.max_batch_samples or default_batch_samples(encoder_of(model).device)
    encoder = FrameEncoder(model, keys, budget)
    _check_signature(out, options, str(model_dir))  # options are valid: record them
    suffix = _shard_suffix(options.shard)
    if units is not None:
        writer: FeatureWriter | UnitWriter = UnitWriter(out / f"units{suffix}.jsonl")
    else:
        store = torch.float16 if options.fp16 else torch.float32
        writer = FeatureWriter(
            out, [k[0] for k in keys], options.representation, options.output_format, store
        )

    collected = inputs if isinstance(inputs, AudioInputs) else collect_inputs(inputs, options.audio_column)
    shard_items = _select_shard(collected.items, options.shard)
    todo = [item for item in shard_items if not writer.is_done(item)]
    report = ExtractionReport(skipped=len(shard_items) - len(todo))
    if report.skipped:
        logger.info("skipping %d file(s) already extracted in %s", report.skipped, out)
    pending = probe_lengths(AudioInputs(todo, collected.datasets, collected.audio_column))
    try:
        _run(pending, options, encoder, units, writer, report)
    finally:
        writer.close()
    _write_failures(out / f"failures{suffix}.jsonl", report.failed)
    report.elapsed_seconds = time.perf_counter() - started
    return report


def _run(
    inputs: AudioInputs,
    options: ExtractionOptions,
    encoder: FrameEncoder,
    units: UnitComputer | None,
    writer: FeatureWriter | UnitWriter,
    report: ExtractionReport,
) -> None:
    batches = _plan(inputs.items, options, encoder.max_batch_samples)
    workers = options.num_workers if options.num_workers is not None else default_num_workers(encoder.device)
    loader = DataLoader(
        _DecodeDataset(inputs, batches),
        batch_size=None,  # each dataset element already is a batch
        collate_fn=_as_is,  # keep numpy waves and exceptions as they are
        num_workers=workers,
        prefetch_factor=2 if workers > 0 else None,
    )
    total_seconds = sum(item.num_samples or 0 for item in inputs.items) / SAMPLING_RATE
    store = torch.float16 if options.fp16 else torch.float32
    # progress in audio seconds: the rate is the real-time factor and the ETA follows audio, not file counts
    bar_format = "{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    with tqdm(
        total=total_seconds, unit="s", desc="extract", bar_format=bar_format, disable=not options.progress
    ) as bar:
        for decoded in loader:
            good = [(item, wave) for item, wave in decoded if not isinstance(wave, Exception)]
            for item, error in decoded:
                if isinstance(error, Exception):
                    _fail(report, item, error, options.strict)
            for item, frames, seconds in _encode(good, encoder, options, store):
                if isinstance(frames, Exception):
                    _fail(report, item, frames, options.strict)
                    continue
                writer.write(item, units(frames) if units is not None else frames)
                report.written += 1
                report.audio_seconds += seconds
                bar.update(seconds)
            if isinstance(writer, UnitWriter):
                writer.flush()  # a crash loses at most the batch in flight
            hours = f"{report.audio_seconds / 3600:.2f}/{total_seconds / 3600:.2f} h"
            bar.set_postfix(
                files=f"{report.written}/{len(inputs.items)}", audio=hours, failed=len(report.failed)
            )


def _as_is(batch: Any) -> Any:
    return batch


def _encode(
    good: list[tuple[AudioItem, np.ndarray]],
    encoder: FrameEncoder,
    options: ExtractionOptions,
    store: torch.dtype,
) -> Iterator[tuple[AudioItem, dict[FrameKey, torch.Tensor] | Exception, float]]:
    """Frames of a decoded batch: one padded pass, or windows for a long file (the header may have lied)."""
    if not good:
        return
    waves = [standardize(wave) for _, wave in good]
    long_limit = options.max_whole_seconds * SAMPLING_RATE
    if len(good) == 1 and len(waves[0]) > long_limit:
        item, wave = good[0][0], waves[0]
        window, context = (
            round(options.window_seconds * FRAME_RATE),
            round(options.context_seconds * FRAME_RATE),
        )
        yield item, encoder.encode_windowed(wave, window, context, store), len(wave) / SAMPLING_RATE
        return
    try:
        outputs = encoder.encode(waves)
    except torch.OutOfMemoryError as err:
        for item, _ in good:
            yield item, err, 0.0
        return
    for (item, wave), frames in zip(good, outputs, strict=True):
        yield item, frames, len(wave) / SAMPLING_RATE


@torch.no_grad()
def sample_frames(
    model: torch.nn.Module,
    inputs: Sequence[str | os.PathLike] | AudioInputs,
    layer: int,
    representation: str = "before_residual",
    max_frames: int = 200_000,
    seed: int = 0,
    max_whole_seconds: float = 60.0,
    window_seconds: float = 20.0,
    context_seconds: float = 5.0,
) -> torch.Tensor:
    """Frames ``(N, hidden)`` of one layer from files in a seeded random order, to fit k-means on.

    Whole files are taken until ``max_frames`` is reached (the last one truncated), computed
    as :func:`extract` computes them (files over ``max_whole_seconds`` in windows); files
    that cannot be decoded are skipped with a warning. Example::

        frames = sample_frames(model, ["train/"], layer=6)
        KMeansQuantizer.fit(frames, k=500, layer=6).save_pretrained(model_dir)
    """
    collected = inputs if isinstance(inputs, AudioInputs) else collect_inputs(inputs)
    encoder = FrameEncoder(model, [(layer, representation)], max_batch_samples=1)
    order = np.random.default_rng(seed).permutation(len(collected.items))
    window, context = round(window_seconds * FRAME_RATE), round(context_seconds * FRAME_RATE)
    chunks, total = [], 0
    for index in order:
        item = collected.items[index]
        try:
            wave = standardize(collected.decode(item))
        except (AudioDecodeError, ValueError) as err:
            logger.warning("skipping %s: %s", item.path, err)
            continue
        if len(wave) > max_whole_seconds * SAMPLING_RATE:
            frames = encoder.encode_windowed(wave, window, context, torch.float32)[(layer, representation)]
        else:
            frames = encoder.encode([wave])[0][(layer, representation)].float().cpu()
        chunks.append(frames[: max_frames - total])
        total += chunks[-1].shape[0]
        if total >= max_frames:
            break
    if not chunks:
        raise ValueError("no input could be decoded: no frames to sample.")
    return torch.cat(chunks)


def _fail(report: ExtractionReport, item: AudioItem, error: Exception, strict: bool) -> None:
    logger.error("failed: %s: %s", item.path, error)
    report.failed.append((item.path, f"{type(error).__name__}: {error}"))
    if strict:
        raise RuntimeError(f"--strict: stopping at the first failure ({item.path}: {error})") from error


def _write_failures(path: Path, failed: list[tuple[str, str]]) -> None:
    if not failed:
        path.unlink(missing_ok=True)  # failures of an earlier run were retried: they are not current
        return
    lines = "".join(json.dumps({"path": p, "error": e}) + "\n" for p, e in failed)
    _atomic(path, lambda tmp: Path(tmp).write_text(lines))


__all__ = [
    "DTYPES",
    "AudioInputs",
    "AudioItem",
    "ExtractionOptions",
    "ExtractionReport",
    "FrameEncoder",
    "UnitComputer",
    "WINDOWED_RELATIVE_TOLERANCE",
    "collect_inputs",
    "extract",
    "length_batches",
    "num_frames",
    "plan_windows",
    "sample_frames",
]
