"""The unit LM: a Llama-architecture causal LM from transformers, in two sizes.

* ``tiny``: a few hundred thousand parameters, trains in seconds on a CPU (tests, the demo);
* ``base``: about 100M parameters (12 layers of 768), for GPUs: the scale of the small spoken LMs
  that the SpidR paper's unit comparisons train.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig, LlamaForCausalLM

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "max_position_embeddings": 512},
    "base": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 12, "max_position_embeddings": 2048},
}  # fmt: skip
"""LlamaConfig settings of each preset (vocabulary and special tokens come from the tokenizer)."""


def lm_config(preset: str, tokenizer: Any) -> LlamaConfig:
    """The ``LlamaConfig`` of ``preset`` for ``tokenizer``'s vocabulary."""
    if preset not in PRESETS:
        raise ValueError(f"unknown LM preset {preset!r}: choose one of {', '.join(PRESETS)}.")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **PRESETS[preset],
    )


def build_lm(preset: str, tokenizer: Any) -> LlamaForCausalLM:
    """A freshly initialised causal LM of ``preset`` (seed it with ``transformers.set_seed`` first)."""
    return LlamaForCausalLM(lm_config(preset, tokenizer))


__all__ = ["PRESETS", "build_lm", "lm_config"]
