"""Deduplicated unit sequences as text for a transformers LM: a ``PreTrainedTokenizerFast`` over a
``tokenizers`` WordLevel model whose words are the unit numbers ``"0" .. "K-1"``.

``encode_units`` turns a unit sequence into ``<s> u1 u2 ... </s>`` ids; the tokenizer is saved beside
the LM, so ``AutoTokenizer.from_pretrained(lm_dir)`` gives it back.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_unit_tokenizer(num_units: int) -> PreTrainedTokenizerFast:
    """A tokenizer for units ``0 .. num_units-1``: ids 0-3 are ``<pad> <s> </s> <unk>``, unit ``u`` is id ``u + 4``."""
    if num_units <= 0:
        raise ValueError(f"a unit tokenizer needs at least one unit, got num_units={num_units}.")
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({str(unit): unit + len(SPECIAL_TOKENS) for unit in range(num_units)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_input_names=["input_ids", "attention_mask"]
    )


def num_units_of(tokenizer: PreTrainedTokenizerFast) -> int:
    """K, the number of units a tokenizer from :func:`build_unit_tokenizer` knows."""
    return len(tokenizer) - len(SPECIAL_TOKENS)


def units_to_text(units: Sequence[int]) -> str:
    """``[3, 5, 3] -> "3 5 3"``, the text form the tokenizer reads."""
    return " ".join(str(int(unit)) for unit in units)


def check_units(units: Sequence[int], num_units: int, where: str) -> None:
    """Raise a ``ValueError`` naming ``where`` when ``units`` is empty or holds a unit outside ``0 .. num_units-1``."""
    if len(units) == 0:
        raise ValueError(f"{where}: an empty unit sequence; remove it (an LM cannot score or learn from no units).")
    low, high = min(units), max(units)
    if low < 0 or high >= num_units:
        raise ValueError(
            f"{where}: unit {high if high >= num_units else low} is outside 0..{num_units - 1}: these units come from "
            f"another quantizer than the LM's tokenizer (K={num_units}); use units of the same K, or train an LM on them."
        )


def encode_units(tokenizer: PreTrainedTokenizerFast, units: Sequence[int]) -> list[int]:
    """``<s> units </s>`` as token ids (units must be in the tokenizer's range: see :func:`check_units`)."""
    return tokenizer(units_to_text(units))["input_ids"]


__all__ = ["SPECIAL_TOKENS", "build_unit_tokenizer", "check_units", "encode_units", "num_units_of", "units_to_text"]
