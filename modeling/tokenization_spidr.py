"""The CTC tokenizer that `AutoTokenizer` finds for a SpidR folder.

A fine-tuned SpidR CTC model saves a `Wav2Vec2CTCTokenizer` (or its phoneme variant) with its
processor, and `AutoTokenizer` loads it from the folder's `tokenizer_config.json`. Only a folder
without one reaches the class registered for `SpidRConfig`: `SpidRCTCTokenizer` loads the folder's
tokenizer as a plain `Wav2Vec2CTCTokenizer` (so nothing saved names this class), or says which
files are missing and how to save them, where transformers' own fallback would report a missing
sentencepiece.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import Wav2Vec2CTCTokenizer

TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json")
"""What a SpidR folder needs for the ASR pipeline (what `Wav2Vec2Processor.save_pretrained` writes)."""


def missing_tokenizer_error(folder: str | os.PathLike) -> FileNotFoundError | None:
    """The error for a model folder that holds no CTC tokenizer, naming the missing files and the fix; None if it has one."""
    folder = Path(folder)
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if not missing:
        return None
    return FileNotFoundError(
        f"model folder {folder} has no CTC tokenizer ({', '.join(missing)} missing): save one there with "
        "Wav2Vec2Processor(feature_extractor, tokenizer).save_pretrained(folder), as spidr-hf finetune-ctc does."
    )


class SpidRCTCTokenizer(Wav2Vec2CTCTokenizer):
    """What `AutoTokenizer` (and so `pipeline("automatic-speech-recognition")`) loads for a SpidR folder
    that saved no `tokenizer_config.json`: the folder's tokenizer as a plain `Wav2Vec2CTCTokenizer`, or,
    when the folder has none, a `FileNotFoundError` naming the fix. Registered for `SpidRConfig` by
    `import spidr_hf`.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and (error := missing_tokenizer_error(folder)) is not None:
            raise error
        return Wav2Vec2CTCTokenizer.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


__all__ = ["TOKENIZER_FILES", "SpidRCTCTokenizer", "missing_tokenizer_error"]
