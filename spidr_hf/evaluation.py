"""Quality of discrete speech units against frame-level phone labels, plots, and ABX.

Unit metrics follow HuBERT (Hsu et al., 2021, section IV-C) and SpidR: from the joint
distribution ``p(y, z)`` of phone ``y`` and unit ``z`` over aligned 20 ms frames,

* **phone purity** ``E_z[max_y p(y | z)]``: how well a unit predicts one phone;
* **cluster purity** ``E_y[max_z p(z | y)]``: how concentrated a phone is on one unit;
* **PNMI** ``I(y; z) / H(y)``: the share of phone uncertainty a unit removes (0 to 1);

and, from the units alone, **codebook perplexity** ``2^H(z)``, **active codewords** (units
used at least once) and **bitrate** ``log2(K) x`` deduplicated units per second (consecutive
repeats collapsed within each utterance; 50 frames per second).

Unit-distribution metrics (perplexity, active codewords, bitrate) use every aligned unit frame;
``exclude_silence`` only drops ``SIL`` frames from the phone/unit statistics. Alignments at an
integer multiple k of the units' frame rate (10 ms phones, 20 ms units) count each unit once
against each of the k phone frames it covers, as the SpidR paper does.

Inputs are JSON lines, plain or gzip-compressed, with the id under ``id`` or ``name``: the
synthetic corpus's ``alignments.jsonl`` (``{"id", "phones": [label per frame]}``) and
``spidr-hf extract``'s ``units.jsonl`` (``{"id", "units": [int per frame], ...}``, other keys
ignored); alignments may also be a folder of Praat TextGrids (the Montreal Forced Aligner's
output, read with ``praatio``). ABX goes through the optional ``fastabx`` package
(``pip install spidr-hf[abx]``).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import IO, Any

import numpy as np

from .modeling import FrameGeometry
from .runs import atomic_write_text, load_weights_only
from .units import deduplicate

SILENCE = "SIL"
FRAME_RATE = FrameGeometry().frame_rate  # units of the default conv stack: 50 per second
MAX_LENGTH_MISMATCH = 2  # frames; convolution edge effects, not a misalignment
GZIP_MAGIC = b"\x1f\x8b"
ID_KEYS = ("id", "name")  # "name": the SpidR paper's published files
PHONE_TIER = "phones"  # the Montreal Forced Aligner's phone tier
TEXTGRID_RATE = 100  # frames per second read from a TextGrid: 10 ms, the paper's and aligners' frame shift
ALIGNER_SILENCES = frozenset({"", "sil", "sp"})  # aligners' silence labels (lower case), read as SILENCE
MAX_UNITS = 2**20  # the largest codebook SpidRConfig accepts; k-means codebooks are far smaller


# --------------------------------------------------------------------------- reading


def open_text(path: str | Path) -> IO[str]:
    """``path`` opened as UTF-8 text, decompressed on the fly when it is named ``.gz``.

    The name must say what the content is: a gzip file named without ``.gz`` (or a ``.gz`` file that is
    not gzip) is a ``ValueError`` naming the fix, since other tools trust the name too.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a JSON-lines file.")
    with path.open("rb") as f:
        compressed = f.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    named_gz = path.suffix == ".gz"
    if compressed and not named_gz:
        raise ValueError(f"{path} is gzip-compressed but not named .gz: rename it to {path.name}.gz (or gunzip it).")
    if named_gz and not compressed:
        raise ValueError(f"{path} is named .gz but is not gzip-compressed: remove the .gz from its name (or gzip it).")
    return gzip.open(path, "rt", encoding="utf-8") if compressed else path.open(encoding="utf-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of :func:`open_text`; an unreadable gzip stream or non-UTF-8 text is a ``ValueError``."""
    try:
        with open_text(path) as f:
            yield from enumerate(f, start=1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(
            f"{path}: a damaged gzip file ({err}): download or compress it again (gzip -t {path} checks it)."
        ) from err
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}): "
            "give a JSON-lines file, plain or gzip-compressed."
        ) from err


def read_jsonl_field(path: str | Path, key: str, item_type: type | None = None) -> dict[str, list]:
    """``{id: record[key]}`` from a JSON-lines file of objects, plain or gzip-compressed (:func:`open_text`).

    The id is the record's ``id``, else its ``name`` (the SpidR paper's files). A line that is not a
    JSON object, a missing key, a repeated id, or (with ``item_type``) a value that is not a list of
    ``item_type`` is a ``ValueError`` naming the file and line.
    """
    path = Path(path)
    result: dict[str, list] = {}
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object with 'id' and {key!r}, got {type(record).__name__}")
        id_key = next((k for k in ID_KEYS if k in record), None)
        if id_key is None or key not in record:
            raise ValueError(f"{where}: expected keys 'id' (or 'name') and {key!r}, got {sorted(record)}")
        utt_id = record[id_key]
        if utt_id in result:
            raise ValueError(f"{where}: id {utt_id!r} appears twice")
        value = record[key]
        # exact types, as json.loads makes them: bool (an int subclass) is not a unit
        if item_type is not None and not (isinstance(value, list) and set(map(type, value)) <= {item_type}):
            raise ValueError(f"{where}: {key!r} must be a list of {item_type.__name__}, got {value!r:.60}")
        result[utt_id] = value
    return result


def frame_labels(
    intervals: Sequence[tuple[float, float, str]], num_frames: int, rate: float, silence: str = SILENCE
) -> list[str]:
    """One label per frame at ``rate`` frames per second: the interval holding the frame's centre.

    Frames in no interval, or in one an aligner labels as silence (``ALIGNER_SILENCES``), are ``silence``.
    """
    if not intervals:
        return [silence] * num_frames
    starts = np.array([start for start, _, _ in intervals], dtype=np.float64)
    ends = np.array([end for _, end, _ in intervals], dtype=np.float64)
    labels = [label.strip() for _, _, label in intervals]
    labels = [silence if label.lower() in ALIGNER_SILENCES else label for label in labels]
    centres = (np.arange(num_frames) + 0.5) / rate
    index = np.searchsorted(starts, centres, side="right") - 1
    inside = (index >= 0) & (centres < ends[np.maximum(index, 0)])
    return [labels[i] if ok else silence for i, ok in zip(index.tolist(), inside.tolist(), strict=True)]


def read_textgrid(path: str | Path, tier: str = PHONE_TIER, rate: float = TEXTGRID_RATE) -> list[str]:
    """Frame phone labels (:func:`frame_labels`, ``rate`` per second up to the end of the file) of one
    Praat TextGrid's interval tier named ``tier``.

    Raises ``ValueError`` naming the file when it cannot be parsed or has no interval tier ``tier``.
    """
    from praatio import textgrid

    path = Path(path)
    try:
        grid = textgrid.openTextgrid(str(path), includeEmptyIntervals=False, reportingMode="silence")
    except Exception as err:  # praatio raises many types (IndexError, ValueError, ...) on a malformed file
        raise ValueError(f"{path}: not a readable TextGrid ({type(err).__name__}: {err}).") from err
    if tier not in grid.tierNames:
        shown = ", ".join(repr(name) for name in grid.tierNames) or "none"
        raise ValueError(
            f"{path} has no tier {tier!r} (its tiers: {shown}): choose one with tier= (--phone-tier)."
        )
    phones = grid.getTier(tier)
    if not isinstance(phones, textgrid.IntervalTier):
        raise ValueError(
            f"{path}: tier {tier!r} is a point tier: choose an interval tier of phones (--phone-tier)."
        )
    intervals = [(entry.start, entry.end, entry.label) for entry in phones.entries]
    frames = math.floor(grid.maxTimestamp * rate + 1e-9)  # 0.29 s x 100 is 28.999...: still 29 frames
    return frame_labels(intervals, frames, rate)


def read_textgrids(
    folder: str | Path, tier: str = PHONE_TIER, rate: float = TEXTGRID_RATE
) -> dict[str, list[str]]:
    """:func:`read_textgrid` of every ``*.TextGrid`` under ``folder`` (Montreal Forced Aligner's output),
    keyed by the path relative to ``folder`` without suffix (how ``spidr-hf extract`` names units).
    """
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".textgrid" and p.is_file())
    if not paths:
        raise ValueError(
            f"{folder} holds no .TextGrid files: give a folder of Praat TextGrids or a .jsonl(.gz) file."
        )
    return {p.relative_to(folder).with_suffix("").as_posix(): read_textgrid(p, tier, rate) for p in paths}


def read_alignments(
    path: str | Path, tier: str = PHONE_TIER, rate: float = TEXTGRID_RATE
) -> dict[str, list[str]]:
    """Frame phone labels by utterance id: a JSON-lines file (``{"id" or "name", "phones"}``, plain or
    gzip-compressed) or a folder of TextGrids (:func:`read_textgrids`; ``tier`` and ``rate`` apply to them)."""
    if Path(path).is_dir():
        return read_textgrids(path, tier, rate)
    return read_jsonl_field(path, "phones", str)


def read_units(path: str | Path) -> dict[str, list[int]]:
    """Frame units by utterance id from ``units.jsonl`` (or ``.jsonl.gz``; the id under ``id`` or ``name``)."""
    return read_jsonl_field(path, "units", int)


def write_units(path: str | Path, ids: Sequence[str], units: Sequence[Sequence[int]]) -> Path:
    """Write ``units.jsonl`` (``{"id", "units"}`` per line, what :func:`read_units` reads), atomically."""
    path = Path(path)
    text = "".join(json.dumps({"id": i, "units": np.asarray(u).tolist()}) + "\n" for i, u in zip(ids, units, strict=True))
    atomic_write_text(path, text)
    return path


def read_phone_inventory(path: str | Path) -> list[str]:
    """Phone labels of ``phones.txt``, one per line, in file order."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- pairing


def _name_some(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def check_same_ids(alignments: Mapping[str, Sequence[str]], units: Mapping[str, Sequence[int]]) -> None:
    """Raise ``ValueError`` naming the ids present on one side only."""
    no_units = [i for i in alignments if i not in units]
    no_phones = [i for i in units if i not in alignments]
    if no_units or no_phones:
        problems = []
        if no_units:
            problems.append(f"{len(no_units)} ids have alignments but no units: {_name_some(no_units)}")
        if no_phones:
            problems.append(f"{len(no_phones)} ids have units but no alignments: {_name_some(no_phones)}")
        raise ValueError("; ".join(problems))


def infer_frames_per_unit(alignments: Mapping[str, Sequence[str]], units: Mapping[str, Sequence[int]]) -> int:
    """Alignment frames per unit frame (1, or 2 for 10 ms phones against 20 ms units): the ratio of all
    phone frames to all unit frames, rounded. :func:`pair_frames` checks it utterance by utterance."""
    check_same_ids(alignments, units)
    unit_frames = sum(len(units[i]) for i in alignments)
    if unit_frames == 0:
        raise ValueError("no unit frames to evaluate")
    return max(1, round(sum(len(p) for p in alignments.values()) / unit_frames))


def pair_frames(
    alignments: Mapping[str, Sequence[str]],
    units: Mapping[str, Sequence[int]],
    max_mismatch: int = MAX_LENGTH_MISMATCH,
    frames_per_unit: int = 1,
) -> list[tuple[str, list[str], list[int]]]:
    """``(id, phones, units)`` per utterance, each unit frame covering ``frames_per_unit`` phone frames.

    Both are truncated to what the other covers: phones to ``frames_per_unit`` x the units, units to
    the unit frames holding at least one phone frame. Raises ``ValueError`` naming the ids present on
    one side only, or an utterance whose lengths differ by more than ``max_mismatch`` unit frames
    (with both lengths).
    """
    check_same_ids(alignments, units)
    pairs = []
    for utt_id, phones in alignments.items():
        codes = units[utt_id]
        if abs(len(phones) - frames_per_unit * len(codes)) > max_mismatch * frames_per_unit:
            raise ValueError(
                f"{utt_id!r}: {len(phones)} phone frames but {len(codes)} unit frames, not {frames_per_unit} "
                f"phone frame(s) per unit frame give or take {max_mismatch} unit frames: the alignments' frame "
                "rate must be the units' or an integer multiple of it (or are they of different audio?)"
            )
        length = min(len(phones), frames_per_unit * len(codes))
        covered = -(-length // frames_per_unit)  # unit frames holding at least one phone frame
        pairs.append((utt_id, list(phones[:length]), list(map(int, codes[:covered]))))
    return pairs


# --------------------------------------------------------------------------- counting


@dataclass
class FrameCounts:
    """Co-occurrence counts of aligned frames, the input of every unit metric."""

    counts: np.ndarray  # (phones, codebook_size) frames with phone y and unit z
    phones: list[str]  # row labels
    unit_counts: np.ndarray  # (codebook_size,) frames per unit over all aligned frames
    dedup_units: int  # units left after collapsing repeats within each utterance
    num_frames: int  # all aligned frames (before any silence exclusion)
    num_utterances: int
    excluded_silence: bool
    frames_per_unit: int = 1  # phone frames each unit frame covers (2: 10 ms alignments, 20 ms units)

    @property
    def codebook_size(self) -> int:
        return int(self.unit_counts.size)


def count_frames(
    pairs: Sequence[tuple[str, Sequence[str], Sequence[int]]],
    codebook_size: int | None = None,
    phones: Sequence[str] | None = None,
    exclude_silence: bool = False,
    silence: str = SILENCE,
    frames_per_unit: int = 1,
) -> FrameCounts:
    """Count (phone, unit) frames of :func:`pair_frames` output.

    ``codebook_size`` defaults to the largest unit + 1. ``phones`` fixes the row order
    (e.g. ``phones.txt``); labels it lacks are appended in sorted order. With ``frames_per_unit``
    (the one given to :func:`pair_frames`), each unit counts once against each phone frame it
    covers, as the SpidR paper pairs 20 ms units with 10 ms phones; unit usage and bitrate stay on
    the units' own frames.
    """
    unit_arrays = [np.asarray(u, dtype=np.int64) for _, _, u in pairs]
    all_units = np.concatenate(unit_arrays) if pairs else np.zeros(0, np.int64)
    if all_units.size == 0:
        raise ValueError("no aligned frames to evaluate")
    if all_units.min() < 0:
        raise ValueError(f"units must be non-negative codeword indices, found {int(all_units.min())}")
    size = int(all_units.max()) + 1 if codebook_size is None else codebook_size
    if size > MAX_UNITS:  # the count table has a row per phone and a column per unit: refuse before allocating
        asked = 8 * size * (len({p for _, ph, _ in pairs for p in ph}) + 1)
        raise ValueError(
            f"unit ids up to {size - 1} ask for a count table of {asked:,} bytes; unit ids must be below {MAX_UNITS} "
            "(codebook indices): check that the units file holds codebook indices."
        )
    if all_units.max() >= size:
        raise ValueError(f"unit {int(all_units.max())} is outside the codebook of size {size}")
    labels = list(chain.from_iterable(ph for _, ph, _ in pairs))
    order = list(phones or [])
    order += sorted(set(labels) - set(order))
    if exclude_silence and silence in order:
        order.remove(silence)
    row = {p: i for i, p in enumerate(order)}
    rows = np.fromiter(map(row.get, labels, repeat(-1)), dtype=np.int64, count=len(labels))  # -1: excluded
    keep = rows >= 0
    if not keep.any():
        raise ValueError("no frames left to evaluate after excluding silence")
    rows = rows[keep]
    paired_units = np.concatenate(
        [np.repeat(u, frames_per_unit)[: len(ph)] for (_, ph, _), u in zip(pairs, unit_arrays, strict=True)]
    )
    joint = np.bincount(rows * size + paired_units[keep], minlength=len(order) * size).reshape(len(order), size)
    return FrameCounts(
        counts=joint,
        phones=order,
        unit_counts=np.bincount(all_units, minlength=size),
        dedup_units=sum(deduplicate(u).size for u in unit_arrays),
        num_frames=int(all_units.size),
        num_utterances=len(pairs),
        excluded_silence=exclude_silence,
        frames_per_unit=frames_per_unit,
    )


# --------------------------------------------------------------------------- metrics on counts


def joint_distribution(counts: np.ndarray) -> np.ndarray:
    """``p(y, z)`` from a phone x unit count matrix."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if counts.ndim != 2 or total <= 0:
        raise ValueError("need a 2-D count matrix with at least one count")
    return counts / total


def phone_purity(counts: np.ndarray) -> float:
    """``sum_z p(z) max_y p(y | z) = sum_z max_y p(y, z)``."""
    return float(joint_distribution(counts).max(axis=0).sum())


def cluster_purity(counts: np.ndarray) -> float:
    """``sum_y p(y) max_z p(z | y) = sum_y max_z p(y, z)``."""
    return float(joint_distribution(counts).max(axis=1).sum())


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy in bits of the distribution proportional to ``counts``."""
    p = np.asarray(counts, dtype=np.float64).ravel()
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum())


def mutual_information_bits(counts: np.ndarray) -> float:
    """``I(y; z)`` in bits of the joint distribution proportional to ``counts`` (never below 0: rounding
    makes the sum of an independent pair a tiny negative number)."""
    joint = joint_distribution(counts)
    outer = joint.sum(axis=1, keepdims=True) * joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return max(float((joint[nz] * np.log2(joint[nz] / outer[nz])).sum()), 0.0)


def pnmi(counts: np.ndarray) -> float:
    """Phone-normalized mutual information ``I(y; z) / H(y)``; NaN when there is a single phone."""
    phone_entropy = entropy_bits(np.asarray(counts).sum(axis=1))
    return mutual_information_bits(counts) / phone_entropy if phone_entropy > 0 else math.nan


def perplexity(unit_counts: np.ndarray) -> float:
    """Codebook perplexity ``2^H(z)``: the number of equally used units with the same entropy."""
    return float(2.0 ** entropy_bits(unit_counts))


def active_codewords(unit_counts: np.ndarray) -> int:
    """Number of units used at least once."""
    return int((np.asarray(unit_counts) > 0).sum())


def bitrate(dedup_units: int, num_frames: int, codebook_size: int, frame_rate: float = FRAME_RATE) -> float:
    """``log2(K) x`` deduplicated units per second of audio (``num_frames / frame_rate`` seconds)."""
    if num_frames <= 0:
        raise ValueError("bitrate needs at least one frame")
    return math.log2(codebook_size) * dedup_units * frame_rate / num_frames


def sequences_bitrate(
    sequences: Sequence[Sequence[int]], codebook_size: int, frame_rate: float = FRAME_RATE
) -> float:
    """:func:`bitrate` of unit sequences, each deduplicated on its own."""
    dedup = sum(len(deduplicate(list(s))) for s in sequences)
    return bitrate(dedup, sum(len(s) for s in sequences), codebook_size, frame_rate)


def metrics_from_counts(frames: FrameCounts, frame_rate: float = FRAME_RATE) -> dict[str, Any]:
    """All unit metrics of :class:`FrameCounts` as a JSON-ready dict."""
    return {
        "phone_purity": phone_purity(frames.counts),
        "cluster_purity": cluster_purity(frames.counts),
        "pnmi": pnmi(frames.counts),
        "codebook_perplexity": perplexity(frames.unit_counts),
        "active_codewords": active_codewords(frames.unit_counts),
        "codebook_size": frames.codebook_size,
        "bitrate": bitrate(frames.dedup_units, frames.num_frames, frames.codebook_size, frame_rate),
        "num_utterances": frames.num_utterances,
        "num_frames": frames.num_frames,
        "num_phone_frames": int(frames.counts.sum()),
        "num_phones": int((frames.counts.sum(axis=1) > 0).sum()),
        "excluded_silence": frames.excluded_silence,
        "alignment_frames_per_unit": frames.frames_per_unit,
    }


def evaluate_units(
    alignments: Mapping[str, Sequence[str]],
    units: Mapping[str, Sequence[int]],
    codebook_size: int | None = None,
    exclude_silence: bool = False,
    phones: Sequence[str] | None = None,
    frames_per_unit: int | None = 1,
) -> dict[str, Any]:
    """Unit metrics of ``units`` against frame phone ``alignments`` (both keyed by utterance id).

    ``frames_per_unit``: alignment frames per unit frame (``None``: :func:`infer_frames_per_unit`).
    Per utterance, lengths may differ by up to 2 unit frames (the longer is truncated); a larger
    difference or an id on one side only raises ``ValueError`` naming it.
    """
    if frames_per_unit is None:
        frames_per_unit = infer_frames_per_unit(alignments, units)
    pairs = pair_frames(alignments, units, frames_per_unit=frames_per_unit)
    frames = count_frames(
        pairs, codebook_size, phones=phones, exclude_silence=exclude_silence, frames_per_unit=frames_per_unit
    )
    return metrics_from_counts(frames)


# --------------------------------------------------------------------------- plots


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def unit_order(counts: np.ndarray) -> np.ndarray:
    """Used units sorted by their most likely phone (row index), then by decreasing ``p(phone | unit)``."""
    counts = np.asarray(counts, dtype=np.float64)
    used = np.flatnonzero(counts.sum(axis=0) > 0)
    conditional = counts[:, used] / counts[:, used].sum(axis=0)
    best = conditional.argmax(axis=0)
    return used[np.lexsort((-conditional.max(axis=0), best))]


def plot_phone_unit_matrix(
    counts: np.ndarray, phones: Sequence[str], path: str | Path, title: str | None = None
) -> Path:
    """PNG of ``P(phone | unit)``: phones in given order down, used units across sorted by most likely phone."""
    plt = _pyplot()
    counts = np.asarray(counts, dtype=np.float64)
    order = unit_order(counts)
    conditional = counts[:, order] / counts[:, order].sum(axis=0)
    height = max(4.0, 0.16 * len(phones) + 1.5)
    fig, ax = plt.subplots(figsize=(max(6.0, min(16.0, 0.02 * len(order) + 6)), height))
    image = ax.imshow(conditional, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(phones)), labels=list(phones), fontsize=7)
    ax.set_xlabel(f"units ({len(order)} used, sorted by most likely phone)")
    ax.set_ylabel("phone")
    ax.set_title(title or "P(phone | unit)")
    fig.colorbar(image, ax=ax, label="P(phone | unit)")
    return _save(fig, path)


def plot_codebook_usage(unit_counts: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """PNG histogram of frames per codeword index, with active codewords and perplexity in the title."""
    plt = _pyplot()
    unit_counts = np.asarray(unit_counts)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(unit_counts.size), unit_counts, width=1.0, color="tab:blue")
    ax.set_xlim(-0.5, unit_counts.size - 0.5)
    ax.set_xlabel("codeword index")
    ax.set_ylabel("frames")
    summary = (
        f"{active_codewords(unit_counts)}/{unit_counts.size} active, perplexity {perplexity(unit_counts):.1f}"
    )
    ax.set_title(f"{title}: {summary}" if title else f"codebook usage: {summary}")
    return _save(fig, path)


def plot_bars(values: Sequence[float], labels: Sequence[str], path: str | Path, title: str, ylabel: str, xlabel: str) -> Path:
    """PNG bar chart of `values`, one bar per label (e.g. a probe's learnt weight per layer)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(values) + 2), 3.5))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)), labels=list(labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def plot_curves(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    title: str,
    ylabel: str,
    references: Mapping[str, float] | None = None,
    xlabel: str = "step",
) -> Path:
    """PNG line plot of named ``(step, value)`` series, with dashed horizontal ``references`` (e.g. baselines)."""
    if not any(series.values()):
        raise ValueError("no (step, value) points to plot")
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, points in series.items():
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) <= 50 else None, linewidth=1.2, label=name)
    for (name, value), color in zip((references or {}).items(), ("gray", "black", "brown"), strict=False):
        ax.axhline(value, linestyle="--", linewidth=1, color=color, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and layers are whole numbers
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) + len(references or {}) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_loss_curve(
    points: Sequence[tuple[int, float]], path: str | Path, title: str = "training loss", ylabel: str = "loss"
) -> Path:
    """PNG line plot of ``(step, loss)`` points."""
    return plot_curves({ylabel: points}, path, title=title, ylabel=ylabel)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


# --------------------------------------------------------------------------- ABX (fastabx)

ABX_INSTALL_HINT = "ABX needs the fastabx package (Python >= 3.12): pip install spidr-hf[abx]"


def _import_fastabx():
    try:
        import fastabx
    except ImportError as error:
        raise ImportError(ABX_INSTALL_HINT) from error
    return fastabx


def load_features(path: str | Path, key: str | None = None):
    """A ``(frames, dim)`` float tensor from ``.safetensors`` (tensor ``key``, or the only one), ``.npy`` or ``.pt``."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(path)
        if key is None and len(tensors) != 1:
            raise ValueError(f"{path} holds tensors {sorted(tensors)}: choose one with key= (--feature-key)")
        tensor = tensors[key] if key is not None else next(iter(tensors.values()))
    elif path.suffix == ".npy":
        tensor = torch.from_numpy(np.load(path))
    else:
        tensor = load_weights_only(path)
    return tensor.float()


def abx_error_rates(
    item: str | Path,
    features_dir: str | Path,
    *,
    speaker_modes: Sequence[str] = ("within", "across"),
    context: str = "within",
    extension: str = ".safetensors",
    feature_key: str | None = None,
    feature_maker: Callable[[str | Path], Any] | None = None,
    distance: str = "angular",
    frequency: int = FRAME_RATE,
    max_size_group: int | None = 10,
    max_x_across: int | None = 5,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, float]:
    """ZeroSpeech-style ABX error rates (0 best, 0.5 chance) with ``fastabx.zerospeech_abx``.

    ``item`` is an item file (``#file onset offset #phone prev-phone next-phone speaker``,
    e.g. the synthetic corpus's ``phones.item``); ``#file`` is a feature file's path relative
    to ``features_dir`` without ``extension`` (the layout of ``spidr-hf extract``).
    Subsampling defaults (10 per group, 5 X across speakers) are ZeroSpeech 2021's.
    Returns ``{"abx_within_speaker": ..., "abx_across_speaker": ...}`` for the requested modes.
    """
    fastabx = _import_fastabx()
    maker = feature_maker or (lambda p: load_features(p, feature_key))
    results = {}
    for mode in speaker_modes:
        results[f"abx_{mode}_speaker"] = float(
            fastabx.zerospeech_abx(
                str(item),
                str(features_dir),
                max_size_group=max_size_group,
                max_x_across=max_x_across,
                speaker=mode,
                context=context,
                distance=distance,
                frequency=frequency,
                feature_maker=maker,
                extension=extension,
                seed=seed,
                device=device,
                progress=False,
            )
        )
    return results


# --------------------------------------------------------------------------- reporting


def json_ready(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf by ``None`` so the dict is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def format_table(metrics: Mapping[str, Any]) -> str:
    """A two-column text table of metrics (floats with 4 decimals)."""
    width = max(len(k) for k in metrics) if metrics else 0
    lines = []
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)
