"""Training data of a unit LM: ``units.jsonl`` files (``spidr-hf extract --units``, ``spidr-hf baseline``)
-> deduplicated unit sequences -> ``<s> units </s>`` token ids -> a ``datasets.Dataset`` of packed blocks.

Packing concatenates every sequence's ids and cuts the stream into blocks of ``block_size`` tokens, so
steps are not spent on padding; sequences cross block boundaries and ``<s>``/``</s>`` mark where they
start and end. The last, shorter block is padded (its padding masked out of the loss) rather than
dropped, so that no unit goes unseen, however small the data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluation import read_units
from ..units import deduplicate
from .tokenizer import check_units, encode_units

DATASETS_HINT = "the LM commands need the 'datasets' package: pip install 'spidr-hf[lm]'"


def require_datasets() -> Any:
    """The ``datasets`` module, or an ``ImportError`` saying how to install it (one line)."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError(DATASETS_HINT) from error
    return datasets


def read_unit_files(paths: Sequence[str | os.PathLike]) -> dict[str, list[int]]:
    """Deduplicated units by id from ``units.jsonl`` files (ids must be unique across files).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a malformed line, an empty sequence or an id found twice, naming the file (and line).
    """
    sequences: dict[str, list[int]] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: give the units.jsonl of spidr-hf extract --units or baseline.")
        for utt_id, units in read_units(path).items():
            if utt_id in sequences:
                raise ValueError(f"{path}: id {utt_id!r} is also in another units file; give each utterance once.")
            check_units(units, max(units, default=0) + 1, f"{path}: {utt_id!r}")
            sequences[utt_id] = deduplicate(units)
    if not sequences:
        raise ValueError(f"no unit sequence in {', '.join(map(str, paths))}.")
    return sequences


def packed_dataset(token_ids: Sequence[Sequence[int]], block_size: int, pad_token_id: int) -> Any:
    """A ``datasets.Dataset`` with ``input_ids``, ``attention_mask`` and ``labels``: the concatenated ``token_ids``
    cut into blocks of ``block_size``, the last one padded with ``pad_token_id`` (label -100: no loss)."""
    datasets = require_datasets()
    stream = [token for ids in token_ids for token in ids]
    blocks = [stream[start : start + block_size] for start in range(0, len(stream), block_size)]
    padding = [block_size - len(block) for block in blocks]
    return datasets.Dataset.from_dict({
        "input_ids": [block + [pad_token_id] * pad for block, pad in zip(blocks, padding, strict=True)],
        "attention_mask": [[1] * len(block) + [0] * pad for block, pad in zip(blocks, padding, strict=True)],
        "labels": [block + [-100] * pad for block, pad in zip(blocks, padding, strict=True)],
    })  # fmt: skip


def tokenize_sequences(tokenizer: Any, sequences: dict[str, list[int]], num_units: int, source: str) -> list[list[int]]:
    """Token ids of each sequence, after checking its units are within the tokenizer's ``num_units``."""
    for utt_id, units in sequences.items():
        check_units(units, num_units, f"{source}: {utt_id!r}")
    return [encode_units(tokenizer, units) for units in sequences.values()]


__all__ = ["DATASETS_HINT", "packed_dataset", "read_unit_files", "require_datasets", "tokenize_sequences"]
