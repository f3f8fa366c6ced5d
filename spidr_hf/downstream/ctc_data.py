"""Transcribed speech for CTC: targets (phones or characters), their tokenizer, and padded batches.

Sources:

* an aligned corpus in the layout ``spidr-hf synth-corpus`` writes: phone targets come from
  ``alignments.jsonl`` (each run of equal frame labels is one phone, silence left out), character
  targets from the ``text`` of ``manifest.jsonl``;
* a ``datasets.Dataset``, in memory or saved with ``save_to_disk``: an audio column, and a text
  column (characters) or a phones column (a list of phones, or one string of space-separated phones).

Character targets are lower-cased, with ``|`` between words (the ``Wav2Vec2CTCTokenizer``
convention); phone targets use a ``Wav2Vec2PhonemeCTCTokenizer``, which keeps multi-letter phones
whole. Id 0 is ``<pad>``, the CTC blank, and id 1 ``<unk>``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, Wav2Vec2CTCTokenizer, Wav2Vec2PhonemeCTCTokenizer

from ..audio import load_audio
from ..modeling import SAMPLING_RATE, FrameGeometry, SpidRFeatureExtractor, ctc_frames_needed
from ..runs import missing_reason
from ..sources import decode_cell, is_saved_dataset, prepare_hf_dataset
from ..synth import SILENCE
from ..unit_scores import AlignedCorpus

TARGETS = ("phones", "chars")
"""What a CTC model learns to emit."""

PAD_TOKEN, UNK_TOKEN, WORD_DELIMITER = "<pad>", "<unk>", "|"
IGNORED_LABEL = -100
"""Label padding, ignored by the loss (transformers' convention)."""


def phone_transcript(frame_labels: list[str]) -> list[str]:
    """The phones of a frame alignment: one per run of equal labels, silence left out."""
    runs = [label for i, label in enumerate(frame_labels) if i == 0 or label != frame_labels[i - 1]]
    return [label for label in runs if label != SILENCE]


def char_transcript(text: str) -> list[str]:
    """Lower-cased characters of `text`, words separated by `|`."""
    return list(WORD_DELIMITER.join(text.lower().split()))


@dataclass
class TranscribedSpeech:
    """Utterances with their CTC targets (`transcripts`: one token list per utterance)."""

    source: str
    targets: str
    ids: list[str]
    waves: list[np.ndarray]  # mono float32 at 16 kHz
    transcripts: list[list[str]]

    @property
    def minutes(self) -> float:
        return sum(w.size for w in self.waves) / SAMPLING_RATE / 60

    def __len__(self) -> int:
        return len(self.ids)

    def check_ctc_fits(self, labels: list[list[int]], geometry: FrameGeometry) -> None:
        """Refuse an utterance whose `labels` need more CTC frames than its audio has (`ValueError`)."""
        for utt_id, wave, ids in zip(self.ids, self.waves, labels, strict=True):
            frames = geometry.num_frames(wave.size)
            needed = int(ctc_frames_needed(pad_labels([ids]))[0])
            if needed > frames:
                raise ValueError(
                    f"{self.source}: utterance {utt_id!r} has {len(ids)} {self.targets} ({needed} CTC frames with the "
                    f"blanks between repeats) but its audio gives {frames} frames: remove it or fix its transcript."
                )


def load_transcribed(
    source: str | os.PathLike | Any,
    targets: str = "phones",
    max_minutes: float | None = None,
    text_column: str = "text",
    phones_column: str = "phones",
    audio_column: str = "audio",
) -> TranscribedSpeech:
    """The utterances of an aligned corpus folder, a saved dataset or a `datasets.Dataset`, with their `targets`.

    Raises:
        FileNotFoundError: `source` does not exist, or a corpus folder lacks the file its targets
            come from (alignments.jsonl for phones, manifest.jsonl for characters).
        ValueError: an unknown `targets`, or an utterance without a transcript.
        TypeError: `source` is neither a path nor a map-style `datasets.Dataset`.
    """
    if targets not in TARGETS:
        raise ValueError(f"unknown targets {targets!r}: choose one of {', '.join(TARGETS)}.")
    path = Path(source) if isinstance(source, str | os.PathLike) else None
    if path is None:
        speech = _from_dataset(source, "the dataset", targets, text_column, phones_column, audio_column)
    elif not path.exists():
        raise FileNotFoundError(f"corpus {path} {missing_reason(path)}.")
    elif is_saved_dataset(path):
        speech = _from_dataset(_load_saved_dataset(path), str(path), targets, text_column, phones_column, audio_column)
    elif targets == "phones":
        corpus = AlignedCorpus.load(path, max_minutes=max_minutes)
        speech = TranscribedSpeech(str(path), targets, corpus.ids, corpus.waves, [phone_transcript(p) for p in corpus.phones])
    else:
        speech = _chars_of_corpus(path, max_minutes)
    if not speech.ids:
        raise ValueError(f"{speech.source} holds no utterances.")
    return speech


def _chars_of_corpus(root: Path, max_minutes: float | None) -> TranscribedSpeech:
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{root} has no manifest.jsonl with transcripts (see spidr-hf synth-corpus).")
    records = []  # every transcript is checked before any audio is decoded
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        record = json.loads(line)
        if not isinstance(record.get("text"), str):
            raise ValueError(
                f"{manifest}:{number}: utterance {record.get('id')!r} has no 'text' transcript: give character "
                "targets a corpus with transcripts, or use --targets phones with its alignments.jsonl."
            )
        records.append(record)
    speech = TranscribedSpeech(str(root), "chars", [], [], [])
    for record in records:
        if max_minutes is not None and speech.minutes >= max_minutes:
            break
        speech.ids.append(record["id"])
        speech.waves.append(load_audio(root / record["path"]))
        speech.transcripts.append(char_transcript(record["text"]))
    return speech


def _load_saved_dataset(path: Path) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{path} holds the splits {sorted(loaded)}: save the one split to use (dataset['train'].save_to_disk).")
    return loaded


def _from_dataset(
    dataset: Any, path: str, targets: str, text_column: str, phones_column: str, audio_column: str
) -> TranscribedSpeech:
    dataset = prepare_hf_dataset(dataset, audio_column)  # a TypeError for anything but a map-style Dataset
    column = phones_column if targets == "phones" else text_column
    if column not in dataset.column_names:
        raise ValueError(
            f"{path} has no transcript column {column!r} for {targets} targets; its columns are {dataset.column_names}."
        )
    speech = TranscribedSpeech(path, targets, [], [], [])
    for row, record in enumerate(dataset):
        value = record[column]
        if targets == "chars":
            if not isinstance(value, str):
                raise ValueError(f"{path} row {row}: {column!r} must be a transcript string, got {value!r:.40}.")
            tokens = char_transcript(value)
        else:
            tokens = value.split() if isinstance(value, str) else list(value or [])
        speech.ids.append(str(record.get("id", f"{row:08d}")))
        speech.waves.append(decode_cell(record[audio_column], name=f"{path} row {row}"))
        speech.transcripts.append(tokens)
    return speech


def build_tokenizer(transcripts: list[list[str]], targets: str) -> PreTrainedTokenizerBase:
    """A CTC tokenizer whose vocabulary is `<pad>` (the blank), `<unk>` and every token of `transcripts`."""
    tokens = sorted({token for tokens in transcripts for token in tokens} - {PAD_TOKEN, UNK_TOKEN})
    if targets == "chars":
        tokens = [WORD_DELIMITER, *(t for t in tokens if t != WORD_DELIMITER)]
    vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1, **{token: index + 2 for index, token in enumerate(tokens)}}
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        options = dict(pad_token=PAD_TOKEN, unk_token=UNK_TOKEN, bos_token=None, eos_token=None)
        if targets == "phones":
            return Wav2Vec2PhonemeCTCTokenizer(str(vocab_file), do_phonemize=False, **options)
        return Wav2Vec2CTCTokenizer(str(vocab_file), word_delimiter_token=WORD_DELIMITER, **options)


def encode_targets(tokenizer: PreTrainedTokenizerBase, transcripts: list[list[str]]) -> list[list[int]]:
    """Token ids of each transcript (`<unk>` for a token outside the vocabulary)."""
    return [tokenizer.convert_tokens_to_ids(tokens) for tokens in transcripts]


class CTCCollator:
    """Padded model inputs and `labels` (padded with -100) for a list of `{"wave", "labels"}` examples."""

    def __init__(self, feature_extractor: SpidRFeatureExtractor):
        self.feature_extractor = feature_extractor

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = self.feature_extractor(
            [e["wave"] for e in examples], sampling_rate=self.feature_extractor.sampling_rate, padding=True,
            return_attention_mask=True, return_tensors="pt",
        )  # fmt: skip
        batch["labels"] = pad_labels([e["labels"] for e in examples])
        return dict(batch)


def pad_labels(labels: list[list[int]]) -> torch.Tensor:
    """`(batch, longest)` label ids, padded with -100."""
    padded = torch.full((len(labels), max(map(len, labels), default=0)), IGNORED_LABEL, dtype=torch.long)
    for row, ids in enumerate(labels):
        padded[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return padded


__all__ = [
    "IGNORED_LABEL",
    "TARGETS",
    "CTCCollator",
    "TranscribedSpeech",
    "build_tokenizer",
    "char_transcript",
    "encode_targets",
    "load_transcribed",
    "pad_labels",
    "phone_transcript",
]
