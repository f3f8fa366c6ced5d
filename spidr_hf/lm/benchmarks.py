"""Minimal-pair benchmarks on disk: the ZeroSpeech 2021 lexical / syntactic layout and a story-cloze layout.

* **ZeroSpeech 2021** (sWUGGY ``lexical/dev``, sBLIMP ``syntactic/dev``): a folder of ``<filename>.wav``
  and its ``gold.csv``, one row per file with at least ``id``, ``filename``, ``correct`` (1 or 0) and
  ``voice`` (lexical also has ``frequency``, ``word``, ``phones``, ``length``; syntactic has ``type`` and
  ``subtype``). Files with the same ``(id, voice)`` form pairs: each correct one with each incorrect one.
* **story cloze** (tSC / sSC): a folder with ``correct/`` and ``incorrect/`` sub-folders holding the same
  file names, the story with its right and its wrong ending; each name is one pair.

:func:`find_benchmarks` takes a folder that is one benchmark, or a root holding several (e.g. the
ZeroSpeech ``dataset/`` with ``lexical/dev`` and ``syntactic/dev``, at most two levels down).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

GOLD = "gold.csv"
GOLD_COLUMNS = ("id", "filename", "correct", "voice")
"""The gold.csv columns every ZeroSpeech benchmark needs (``type`` is read when present)."""


@dataclass(frozen=True)
class Pair:
    """One minimal pair: file names (keys of :attr:`Benchmark.files`) of its correct and incorrect member."""

    id: str
    correct: str
    incorrect: str
    type: str = ""


@dataclass
class Benchmark:
    """A benchmark's audio files by name, and its pairs."""

    name: str
    root: Path
    files: dict[str, Path]
    pairs: list[Pair]


def _wavs(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(folder.glob("*.wav"))}


def read_zerospeech(folder: str | Path, name: str | None = None) -> Benchmark:
    """The benchmark in ``folder`` (wav files and ``gold.csv``).

    Raises:
        FileNotFoundError: no ``gold.csv`` in ``folder``.
        ValueError: missing columns, a ``correct`` that is not 0/1, a file named in gold.csv that is not in
            the folder or the reverse, an ``(id, voice)`` without both a correct and an incorrect file.
    """
    folder = Path(folder)
    gold = folder / GOLD
    if not gold.is_file():
        raise FileNotFoundError(
            f"{folder} has no {GOLD}: a ZeroSpeech benchmark folder holds its .wav files and their {GOLD} "
            f"(columns {', '.join(GOLD_COLUMNS)}); copy it from the benchmark's release."
        )
    with gold.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in GOLD_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{gold}: missing column(s) {', '.join(missing)}; a ZeroSpeech gold.csv has {', '.join(GOLD_COLUMNS)}.")
        rows = list(reader)
    files = _wavs(folder)
    members: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for number, row in enumerate(rows, start=2):
        if row["correct"] not in ("0", "1"):
            raise ValueError(f"{gold}:{number}: correct must be 1 or 0, got {row['correct']!r}.")
        if row["filename"] not in files:
            raise ValueError(
                f"{gold}:{number}: {row['filename']}.wav is not in {folder}; the ids of {GOLD} and the audio do not "
                "match: use the gold.csv of this folder's release."
            )
        group = members.setdefault((row["id"], row["voice"]), ([], []))
        group[0 if row["correct"] == "1" else 1].append(row["filename"])
    unlisted = sorted(set(files) - {row["filename"] for row in rows})
    if unlisted:
        raise ValueError(f"{folder}: {len(unlisted)} .wav file(s) not in {GOLD} (e.g. {unlisted[0]}.wav): "
                         f"the ids of {GOLD} and the audio do not match; remove them or use the matching {GOLD}.")  # fmt: skip
    type_of = {(row["id"], row["voice"]): row.get("type") or "" for row in rows}
    pairs = []
    for key, (good, bad) in members.items():
        if not good or not bad:
            raise ValueError(f"{gold}: id {key[0]!r}, voice {key[1]!r} has no {'correct' if not good else 'incorrect'} "
                             "file: each (id, voice) needs both; fix or remove its rows.")  # fmt: skip
        pairs += [Pair(key[0], g, b, type_of[key]) for g in good for b in bad]
    return Benchmark(name or folder.name, folder, files, pairs)


def read_story_cloze(folder: str | Path, name: str | None = None) -> Benchmark:
    """The story-cloze benchmark in ``folder`` (``correct/`` and ``incorrect/`` with the same file names).

    Raises:
        ValueError: a name in one sub-folder and not the other, or no files.
    """
    folder = Path(folder)
    good, bad = _wavs(folder / "correct"), _wavs(folder / "incorrect")
    if set(good) != set(bad) or not good:
        alone = sorted(set(good) ^ set(bad))
        raise ValueError(
            f"{folder}: correct/ and incorrect/ must hold the same .wav names"
            + (f" ({alone[0]}.wav is in one only)" if alone else " (both are empty)")
            + "; each name is one story with its two endings."
        )
    files = {**{f"correct/{n}": p for n, p in good.items()}, **{f"incorrect/{n}": p for n, p in bad.items()}}
    pairs = [Pair(n, f"correct/{n}", f"incorrect/{n}") for n in good]
    return Benchmark(name or folder.name, folder, files, pairs)


def _kind(folder: Path) -> str | None:
    if (folder / "correct").is_dir() and (folder / "incorrect").is_dir():
        return "cloze"
    if (folder / GOLD).is_file() or any(folder.glob("*.wav")):
        return "zerospeech"
    return None


def find_benchmarks(root: str | Path) -> list[Benchmark]:
    """Every benchmark in ``root``: ``root`` itself, or its sub-folders up to two levels down, named by relative path.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or a folder of .wav files has no ``gold.csv``.
        ValueError: no benchmark at all (see the module's layouts), or one that does not read.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder {root} does not exist.")
    candidates = [root] if _kind(root) else sorted(
        p for p in [*root.glob("*"), *root.glob("*/*")] if p.is_dir() and _kind(p) and _kind(p.parent) != "cloze"
    )  # fmt: skip
    if not candidates:
        raise ValueError(
            f"no benchmark in {root}: expected folders of .wav files with a {GOLD} (ZeroSpeech 2021 lexical/dev, "
            "syntactic/dev) or with correct/ and incorrect/ sub-folders (story cloze)."
        )
    benchmarks = []
    for folder in candidates:
        name = folder.name if folder == root else folder.relative_to(root).as_posix()
        read = read_story_cloze if _kind(folder) == "cloze" else read_zerospeech
        benchmarks.append(read(folder, name))
    return benchmarks


__all__ = ["GOLD", "GOLD_COLUMNS", "Benchmark", "Pair", "find_benchmarks", "read_story_cloze", "read_zerospeech"]
