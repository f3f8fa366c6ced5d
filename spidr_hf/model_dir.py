"""A saved SpidR model directory: safetensors weights, the feature extractor's config, the remote
code that loads them without this package, and the README model card.

Converted checkpoints (``spidr-hf convert``), pretrained models (``spidr-hf pretrain``) and the
demo's models are all written here.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from transformers.dynamic_module_utils import get_relative_import_files

from . import modeling
from .modeling import SpidRConfig, SpidRFeatureExtractor, SpidRForPreTraining
from .runs import quiet_pickle_protocol, untrusted_pickle_error, write_failure

# What `trust_remote_code=True` loads from a saved directory, without this package.
AUTO_MAP = {
    "AutoConfig": "configuration_spidr.SpidRConfig",
    "AutoModel": "modeling_spidr.SpidRModel",
    "AutoModelForPreTraining": "modeling_spidr_pretraining.SpidRForPreTraining",
    "AutoModelForCTC": "modeling_spidr_heads.SpidRForCTC",
    "AutoModelForAudioClassification": "modeling_spidr_heads.SpidRForSequenceClassification",
    "AutoFeatureExtractor": "feature_extraction_spidr.SpidRFeatureExtractor",
}


def remote_code_files() -> list[Path]:
    """The files of `modeling/` that `AUTO_MAP` names, with every file they import (transformers' own rule)."""
    code_dir = Path(modeling.__file__).resolve().parent
    files: set[Path] = set()
    for module in {entry.split(".")[0] for entry in AUTO_MAP.values()}:
        path = code_dir / f"{module}.py"
        files.update([path, *map(Path, get_relative_import_files(path))])
    return sorted(files)


def save_pretrained_with_code(model: SpidRForPreTraining, out_dir: str | Path) -> None:
    """`save_pretrained` (safetensors) plus the feature extractor and the remote-code files; an OS error
    (disk full, read-only ...) is raised as one line naming the folder (`spidr_hf.runs.write_failure`)."""
    out_dir = Path(out_dir)
    model.config.auto_map = dict(AUTO_MAP)
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    except (OSError, SafetensorError) as error:  # safetensors' error of a full disk is no OSError
        raise write_failure(out_dir / "model.safetensors", error) from error
    SpidRFeatureExtractor().save_pretrained(out_dir)
    for path in remote_code_files():
        shutil.copyfile(path, out_dir / path.name)
    # the feature extractor's own auto_map, so AutoFeatureExtractor finds its class remotely too
    preprocessor = out_dir / "preprocessor_config.json"
    data = json.loads(preprocessor.read_text())
    data["auto_map"] = {"AutoFeatureExtractor": AUTO_MAP["AutoFeatureExtractor"]}
    preprocessor.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


# ------------------------------------------------------------------------------ reading one
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_spidr_config(path: str | os.PathLike) -> SpidRConfig:
    """The `SpidRConfig` in a `config.json` (or in a model folder's), refusing what is not one.

    Raises `ValueError` for a file that is not a JSON object, or the configuration of another
    kind of model (its `model_type`), and `FileNotFoundError` when there is no such file.
    """
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json." if path.is_dir() else f"config {path} does not exist.")
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file} is not a JSON file ({err}).") from err
    if not isinstance(values, dict):
        raise ValueError(f"{file} holds a JSON {type(values).__name__}, not a model configuration (an object).")
    model_type = values.get("model_type", SpidRConfig.model_type)
    if model_type != SpidRConfig.model_type:
        raise ValueError(f"{file} configures a {model_type!r} model, not a SpidR model (model_type 'spidr').")
    return SpidRConfig.from_dict(values)


def check_model_source(model: str | os.PathLike) -> str:
    """`model` as `from_pretrained` should get it: a SpidR model folder, checked, or a Hub id (`org/name`).

    A path that does not exist locally goes to the Hub only when it reads as a Hub repository id
    (`org/name`, no local folder `org`); anything else is a missing folder, reported at once
    (`FileNotFoundError`) instead of after the Hub client's retries. A folder must hold a SpidR
    `config.json` whose model fits in memory (`check_model_fits`) and weights (`ValueError` otherwise).
    """
    path = Path(model)
    if path.is_dir():
        check_model_fits(read_spidr_config(path))
        if not any((path / name).is_file() for name in _WEIGHT_FILES):
            raise ValueError(
                f"model folder {path} has no weights ({_WEIGHT_FILES[0]}): give a folder written by "
                "save_pretrained, spidr-hf convert or spidr-hf pretrain."
            )
        return str(path)
    if path.exists():
        raise NotADirectoryError(f"model {path} is a file: give the model's folder (config.json, model.safetensors).")
    text = str(model)
    if _HUB_ID.match(text) and not Path(text.split("/")[0]).exists():
        return text
    raise FileNotFoundError(f"model folder {path} does not exist.")


def weights_file(model: str | os.PathLike) -> str:
    """The weights file a model folder holds (the first of transformers' names), else the folder itself."""
    path = Path(model)
    return next((str(path / name) for name in _WEIGHT_FILES if (path / name).is_file()), str(model))


def from_pretrained(cls: type, source: str | os.PathLike, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source, **kwargs)``, with a pickle of weights that ``weights_only`` refuses
    reported as a ``ValueError`` naming the file and how to re-save it as safetensors (no traceback)."""
    try:
        with quiet_pickle_protocol():
            return cls.from_pretrained(source, **kwargs)
    except pickle.UnpicklingError as error:
        raise untrusted_pickle_error(weights_file(source)) from error


def machine_memory_bytes() -> int:
    """The physical memory of this machine, in bytes (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def check_model_fits(config: SpidRConfig, memory_bytes: int | None = None) -> SpidRConfig:
    """``config``, after checking that its model's float32 parameters fit in ``memory_bytes`` (this
    machine's memory by default): a ``ValueError`` with the number of bytes it asks for, before building."""
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    asked = 4 * config.estimated_num_parameters()
    if memory and asked > memory:
        raise ValueError(
            f"this configuration's model has about {asked // 4:,} parameters: building it asks for {asked:,} bytes "
            f"({asked / 2**30:,.1f} GiB) of float32 weights, more than this machine's {memory:,} bytes of memory. "
            "Give a smaller hidden_size, intermediate_size, num_hidden_layers or codebook_size."
        )
    return config
