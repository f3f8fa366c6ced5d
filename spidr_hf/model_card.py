"""The README model card written next to every converted or pretrained model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .modeling import SpidRConfig

_TEMPLATE = """---
library_name: transformers
pipeline_tag: feature-extraction
tags:
- audio
- speech
- self-supervised-learning
- spidr
license: {license}
---

# {title}

{origin}

SpidR (Poli et al., *SpidR: Learning Fast and Stable Linguistic Units for Spoken Language Models
Without Supervision*, TMLR 2025, arXiv:2512.20308) is a self-supervised speech encoder trained by
masked prediction, self-distillation from an EMA teacher and online clustering. It turns 16 kHz
speech into 50 feature frames per second whose intermediate layers carry phonetic information.

## Architecture

| | |
|---|---|
| feature extractor | {num_conv} conv layers, {conv_dim} channels ({feat_extract_norm}) |
| transformer | {layers} post-LN layers, {hidden} dims, {heads} heads, FFN {ffn} |
| codebooks | {codebooks} x {codebook_size} codewords on layers {codebook_layers} |
| heads read | {head_input} |
| parameters | {params} |

## Facts of this model

{facts}

## How to load

```python
import spidr_hf  # registers SpidR with the Auto classes
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("{path}")            # the student encoder
extractor = AutoFeatureExtractor.from_pretrained("{path}")
inputs = extractor(audio_16khz, sampling_rate=16000, return_tensors="pt")
features = model(**inputs, output_hidden_states=True).before_residual_states[5]  # layer 6
```

Without the package, `AutoModel.from_pretrained(path, trust_remote_code=True)` loads the encoder
from the code stored in this directory. `SpidRForPreTraining.from_pretrained(path)` keeps the
teacher, heads and codebooks (units, continued pretraining).

## Intended use and limitations

Research on speech representations, discrete units for spoken language models and phonetic
probing. English read speech only for the official checkpoints; no speaker, language or
transcription ability is claimed. The units are not a phone recogniser.

## Citation

```bibtex
@article{{poli2025spidr,
  title   = {{SpidR: Learning Fast and Stable Linguistic Units for Spoken Language Models Without Supervision}},
  author  = {{Poli, Maxime and others}},
  journal = {{Transactions on Machine Learning Research}},
  year    = {{2025}},
  eprint  = {{2512.20308}},
}}
```
"""


def render_model_card(
    config: SpidRConfig,
    origin: str,
    facts: Mapping[str, object] | None = None,
    title: str = "SpidR",
    path: str = "path/to/model",
    license: str = "cc-by-nc-4.0",
    num_parameters: int | None = None,
) -> str:
    """The card's Markdown, filled with the config's numbers and the run's `facts`."""
    fact_lines = "\n".join(f"- **{k}**: {v}" for k, v in (facts or {}).items()) or "- (none recorded)"
    return _TEMPLATE.format(
        license=license,
        title=title,
        origin=origin,
        num_conv=len(config.conv_dim),
        conv_dim=config.conv_dim[0],
        feat_extract_norm=config.feat_extract_norm,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        ffn=config.intermediate_size,
        codebooks=config.num_codebooks,
        codebook_size=config.codebook_size,
        codebook_layers=", ".join(map(str, config.codebook_layers)),
        head_input="before-residual FFN outputs (SpidR)"
        if config.head_input == "before_residual"
        else "the final output (DinoSR)",
        params=f"{num_parameters / 1e6:.1f}M" if num_parameters else "see config",
        facts=fact_lines,
        path=path,
    )


def write_model_card(out_dir: str | Path, config: SpidRConfig, origin: str, **kwargs) -> Path:
    """Write `README.md` in `out_dir` (see `render_model_card` for the arguments)."""
    out = Path(out_dir) / "README.md"
    out.write_text(render_model_card(config, origin, path=str(out_dir), **kwargs))
    return out
