"""Reading a CTC model's output: greedy decoding, phone/character error rate, and the tokenizer
(and ASR pipeline) of a model directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torchaudio
from transformers import AutoModelForCTC, AutoTokenizer, Pipeline, PreTrainedTokenizerBase, pipeline

from ..model_dir import check_model_source, from_pretrained, read_spidr_config
from ..modeling.tokenization_spidr import missing_tokenizer_error
from ..pipeline import default_feature_extractor


def greedy_ctc(logits: torch.Tensor, num_frames: int, blank: int = 0) -> list[int]:
    """Best path of `logits` `(frames, vocab)` over its first `num_frames` frames: repeats merged, blanks dropped."""
    best = torch.unique_consecutive(logits[:num_frames].argmax(-1))
    return best[best != blank].tolist()


def error_rate(hypotheses: list[list[Any]], references: list[list[Any]]) -> float:
    """Token error rate: total edit distance over total reference length (PER for phones, CER for characters)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("the references hold no tokens: an error rate needs transcribed speech.")
    edits = sum(torchaudio.functional.edit_distance(r, h) for r, h in zip(references, hypotheses, strict=True))
    return edits / total


def load_ctc_tokenizer(model_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The CTC tokenizer saved in a SpidR model folder, checked against the model's `vocab_size`.

    Raises:
        FileNotFoundError: the folder holds no tokenizer.
        ValueError: the tokenizer's vocabulary and the model's `vocab_size` differ.
    """
    folder = Path(check_model_source(model_dir))
    if (error := missing_tokenizer_error(folder)) is not None:
        raise error
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab_size = read_spidr_config(folder).vocab_size
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"the tokenizer in {folder / 'vocab.json'} has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocab_size}: save the tokenizer the model was trained with, or set vocab_size to {len(tokenizer)} "
            "and train the head again."
        )
    return tokenizer


def speech_recognizer(model_dir: str | os.PathLike, **kwargs: Any) -> Pipeline:
    """`pipeline("automatic-speech-recognition")` for a fine-tuned SpidR folder, its tokenizer checked first
    (`load_ctc_tokenizer`) and its weights loaded through `model_dir.from_pretrained` (a pickle that
    `weights_only` refuses is a `ValueError` naming the file); `kwargs` go to `pipeline()` (e.g. `device`)."""
    tokenizer = load_ctc_tokenizer(model_dir)
    folder = check_model_source(model_dir)
    model = from_pretrained(AutoModelForCTC, folder)
    feature_extractor = default_feature_extractor(model)  # the saved one, else SpidR's standard one
    return pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                    feature_extractor=feature_extractor, **kwargs)  # fmt: skip


__all__ = ["error_rate", "greedy_ctc", "load_ctc_tokenizer", "speech_recognizer"]
