"""A synthetic stand-in for sWUGGY and sBLIMP, rendered with espeak-ng in the ZeroSpeech 2021 layout, so that
tests and the demo score LMs with the same code (:mod:`.benchmarks`) as the real benchmarks.

* **lexical** (``OUT/lexical/dev``): words of the synthetic corpus's lexicon (the words of
  :func:`spidr_hf.synth.make_sentence`) against pseudo-words with one consonant changed into another of
  the same manner (stop, fricative, nasal), so that the pseudo-word keeps an English syllable shape and is
  no word of the lexicon. Both are rendered from espeak-ng phoneme mnemonics (``[[...]]``), the word
  from its own pronunciation, so that the pair differs in that one phone only.
* **syntactic** (``OUT/syntactic/dev``): sentences of the corpus's grammar against a word-order violation
  (two adjacent words swapped) or a determiner-agreement violation (a singular determiner made plural:
  ``a cat`` -> ``these cat``); ``type`` names which.

Each item is rendered in every voice of ``voices`` (by default two voices the demo never trains on), with
one seed per file: the same arguments give the same bytes. Files are written under a staging folder and
moved into ``OUT`` once all are rendered.
"""

from __future__ import annotations

import csv
import json
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from ..espeak import check_voices, espeak_version, text_to_phonemes
from ..modeling import SAMPLING_RATE
from ..progress import progress_bar
from ..runs import atomic_write_text, prepare_output_dir
from ..synth import make_sentence, render, speaker_name

BENCHMARK_VOICES = ("en-us+m5", "en+f5")
"""Voices of the synthetic benchmark: none is a voice of the synthetic corpus's defaults or of the demo."""

# espeak-ng mnemonics of English consonants by manner: a swap within a class keeps the syllable's shape
CONSONANT_CLASSES = ("pbtdkg", "fvszSZ", "mn")
_SINGULAR_TO_PLURAL = {"a": "these", "one": "several", "every": "many", "this": "these", "that": "those"}
_BENCHMARK_RATE = 170
LEXICAL_COLUMNS = ["id", "filename", "correct", "frequency", "word", "phones", "length", "voice"]
SYNTACTIC_COLUMNS = ["id", "filename", "type", "subtype", "correct", "voice"]


@dataclass(frozen=True)
class Item:
    """One benchmark item before rendering: what to say (text or ``[[mnemonics]]``) and its gold row."""

    text: str
    row: dict


def corpus_lexicon(seed: int = 0, sentences: int = 2000) -> list[str]:
    """The words of ``sentences`` sentences of the corpus grammar, sorted (the lexicon an LM on the corpus hears)."""
    rng = random.Random(seed)
    words = {w for _ in range(sentences) for w in re.findall(r"[a-z]+", make_sentence(rng).lower())}
    return sorted(words)


def _consonant_positions(phones: str) -> list[int]:
    """Indices of single-letter consonant mnemonics (not part of a two-letter one such as ``tS``, ``dZ``)."""
    letters = "".join(CONSONANT_CLASSES)
    return [i for i, c in enumerate(phones) if c in letters and phones[i + 1 : i + 2] not in ("S", "Z")
            and phones[i - 1 : i] not in ("t", "d")]  # fmt: skip


def pseudo_word(phones: str, rng: random.Random, taken: set[str]) -> str | None:
    """``phones`` with one consonant swapped for another of its class, not in ``taken``; None when there is none."""
    options = []
    for i in _consonant_positions(phones):
        kind = next(c for c in CONSONANT_CLASSES if phones[i] in c)
        options += [phones[:i] + other + phones[i + 1 :] for other in kind if other != phones[i]]
    options = [o for o in options if o not in taken]
    return rng.choice(options) if options else None


def lexical_items(words: Sequence[str], voices: Sequence[str], rng: random.Random) -> list[Item]:
    """A word / pseudo-word pair per word that has one, in every voice (gold rows of ZeroSpeech's lexical gold.csv)."""
    pronunciations = {w: text_to_phonemes(w, voices[0]) for w in words}
    taken = set(pronunciations.values())
    items = []
    for word in words:
        phones = pronunciations[word]
        pseudo = pseudo_word(phones, rng, taken)
        if pseudo is None:
            continue
        pair_id = f"{len(items) // (2 * len(voices)):04d}"
        for voice in voices:
            for correct, said in ((1, phones), (0, pseudo)):
                items.append(Item(f"[[{said}]]", {"id": pair_id, "correct": correct, "frequency": 1 if correct else 0,
                                                  "word": word if correct else "", "phones": said,
                                                  "length": len(word), "voice": speaker_name(voice)}))  # fmt: skip
    return items


def violation(sentence: str, rng: random.Random) -> tuple[str, str]:
    """``(type, ungrammatical sentence)``: a singular determiner made plural when there is one (half the time),
    else two adjacent different words swapped."""
    words = sentence.rstrip(".?").replace(",", "").split()
    singular = [i for i, w in enumerate(words) if w.lower() in _SINGULAR_TO_PLURAL]
    if singular and rng.random() < 0.5:
        i = rng.choice(singular)
        plural = _SINGULAR_TO_PLURAL[words[i].lower()]
        words[i] = plural.capitalize() if words[i][0].isupper() else plural
        return "determiner_agreement", " ".join(words)
    i = rng.choice([i for i in range(len(words) - 1) if words[i].lower() != words[i + 1].lower()])
    words[i], words[i + 1] = words[i + 1], words[i]
    return "word_order", " ".join(words)


def syntactic_items(count: int, voices: Sequence[str], rng: random.Random) -> list[Item]:
    """``count`` grammatical / ungrammatical sentence pairs in every voice (rows of ZeroSpeech's syntactic gold.csv)."""
    items = []
    for index in range(count):
        grammatical = make_sentence(rng).rstrip(".?").replace(",", "")
        kind, wrong = violation(grammatical, rng)
        for voice in voices:
            for correct, said in ((1, grammatical), (0, wrong)):
                items.append(Item(said, {"id": f"{index:04d}", "type": kind, "subtype": kind, "correct": correct,
                                         "voice": speaker_name(voice)}))  # fmt: skip
    return items


def _voice_of(voices: Sequence[str], speaker: str) -> str:
    return next(v for v in voices if speaker_name(v) == speaker)


def _write_task(folder: Path, prefix: str, items: list[Item], columns: list[str], voices: Sequence[str],
                seed: int, bar) -> None:  # fmt: skip
    folder.mkdir(parents=True)
    order = list(range(len(items)))
    random.Random(f"{seed}-{prefix}").shuffle(order)  # file names say nothing of the pair or its answer
    rows = []
    for number, index in enumerate(order):
        item = items[index]
        filename = f"{prefix}{number:05d}"
        wave, _ = render(item.text, _voice_of(voices, item.row["voice"]), rate=_BENCHMARK_RATE, seed=seed * 100_003 + index)
        sf.write(folder / f"{filename}.wav", wave, SAMPLING_RATE, subtype="PCM_16")
        rows.append({**item.row, "filename": filename})
        bar.update(1)
    rows.sort(key=lambda r: (r["id"], r["voice"], -r["correct"]))
    with (folder / "gold.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def synthesize_benchmark(out_dir: str | Path, words: int = 100, sentences: int = 100, seed: int = 0,
                         voices: Sequence[str] = BENCHMARK_VOICES, overwrite: bool = False,
                         progress: bool = True) -> dict:  # fmt: skip
    """Render the lexical and syntactic benchmark into ``out_dir/lexical/dev`` and ``out_dir/syntactic/dev``.

    ``words`` lexicon words (drawn with ``seed``; fewer if the lexicon is smaller) and ``sentences``
    sentences, each in every voice. Returns what ``out_dir/benchmark.json`` records.

    Raises:
        FileExistsError: ``out_dir`` already holds a benchmark and ``overwrite`` is false.
        ValueError: an unknown voice, or no word or sentence asked for.
    """
    if words <= 0 or sentences <= 0:
        raise ValueError(f"a benchmark needs words and sentences, got words={words}, sentences={sentences}.")
    voices = list(voices)
    check_voices(voices)
    root = prepare_output_dir(out_dir, create=False)
    tasks = [root / "lexical", root / "syntactic"]
    if any(t.exists() for t in tasks) and not overwrite:
        raise FileExistsError(f"{root} already holds a benchmark; pass --overwrite to replace it.")
    rng = random.Random(seed)
    lexicon = corpus_lexicon(seed)
    chosen = sorted(rng.sample(lexicon, min(words, len(lexicon))))
    lexical, syntactic = lexical_items(chosen, voices, rng), syntactic_items(sentences, voices, rng)
    prepare_output_dir(root)
    staging = root / ".benchmark.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with progress_bar(len(lexical) + len(syntactic), desc="rendering the benchmark", unit="file", disable=not progress) as bar:
        _write_task(staging / "lexical" / "dev", "lex", lexical, LEXICAL_COLUMNS, voices, seed, bar)
        _write_task(staging / "syntactic" / "dev", "syn", syntactic, SYNTACTIC_COLUMNS, voices, seed, bar)
    for task in tasks:
        shutil.rmtree(task, ignore_errors=True)
        (staging / task.name).rename(task)
    staging.rmdir()
    record = {"seed": seed, "voices": voices, "lexical_pairs": len(lexical) // 2, "syntactic_pairs": len(syntactic) // 2,
              "words": len({i.row["id"] for i in lexical}), "sentences": sentences, "espeak_ng_version": espeak_version()}  # fmt: skip
    atomic_write_text(root / "benchmark.json", json.dumps(record, indent=1) + "\n")
    return record


__all__ = ["BENCHMARK_VOICES", "corpus_lexicon", "pseudo_word", "synthesize_benchmark", "violation"]
