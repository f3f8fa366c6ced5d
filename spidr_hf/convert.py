"""Lossless conversion of reference SpidR / DinoSR checkpoints to transformers directories."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .model_dir import save_pretrained_with_code, write_model_card
from .modeling import SpidRConfig, SpidRForPreTraining
from .runs import UntrustedPickleError, load_weights_only, missing_reason, prepare_output_dir

logger = logging.getLogger(__name__)

MODEL_TYPES = ("spidr", "dinosr")

# reference config field -> SpidRConfig field
_CONFIG_FIELDS = {
    "extractor_conv_bias": "conv_bias",
    "encoder_embed_dim": "hidden_size",
    "encoder_projection_dropout": "feat_proj_dropout",
    "encoder_pos_conv_kernel": "num_conv_pos_embeddings",
    "encoder_pos_conv_groups": "num_conv_pos_embedding_groups",
    "encoder_pos_conv_depth": "num_conv_pos_embedding_layers",
    "encoder_num_layers": "num_hidden_layers",
    "encoder_num_heads": "num_attention_heads",
    "encoder_attention_dropout": "attention_dropout",
    "encoder_ff_interm_features": "intermediate_size",
    "encoder_ff_interm_dropout": "activation_dropout",
    "encoder_dropout": "hidden_dropout",
    "encoder_layer_drop": "layerdrop",
    "encoder_qkv_bias": "qkv_bias",
    "codebook_size": "codebook_size",
    "codebook_decay": "codebook_decay",
    "num_codebooks": "num_codebooks",
    "ema_start_decay": "ema_start_decay",
    "ema_final_decay": "ema_final_decay",
    "ema_final_step": "ema_final_step",
    "ema_timescale": "ema_timescale",
    "ema_threshold": "ema_threshold",
    "freeze_step": "freeze_feature_encoder_step",
}

# reference key pattern -> transformers key template
_KEY_RULES = [
    (re.compile(r"^(feature_extractor|feature_projection)\.(.*)$"), r"spidr.\1.\2"),
    (re.compile(r"^student\.(.*)$"), r"spidr.encoder.\1"),
    (re.compile(r"^teacher\.(.*)$"), r"teacher.\1"),
    (re.compile(r"^heads\.(\d+)\.0\.(weight|bias)$"), r"heads.\1.\2"),
    (re.compile(r"^mask_embedding$"), "mask_embedding"),
]
_CODEBOOK_KEY = re.compile(r"^codebooks\.(\d+)\.(codebook|counts)$")


class CheckpointError(ValueError):
    """The file is not a SpidR/DinoSR reference checkpoint, or does not match its config."""


def load_reference_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a reference checkpoint safely (``weights_only=True``): a bare state dict,
    ``{"model": state_dict}``, a training checkpoint with optimizer state, or a DDP one."""
    path = Path(path)
    if not path.is_file():
        why = ": it is a folder" if path.is_dir() else f": it {missing_reason(path)}" if path.is_symlink() else ""
        raise FileNotFoundError(f"No checkpoint at {path}{why}.")
    try:
        obj = load_weights_only(path)
    except UntrustedPickleError as err:
        raise CheckpointError(str(err)) from err
    except Exception as err:  # pickle errors come in many types
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint with weights_only=True ({err}). "
            "Only plain tensor checkpoints are accepted; arbitrary pickles are never executed."
        ) from err
    state = _find_state_dict(obj)
    if state is None:
        raise CheckpointError(f"{path} holds no state dict of tensors (looked at the top level and under 'model').")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    if not any(k.startswith("student.layers.") for k in state):
        raise CheckpointError(
            f"{path} is not a SpidR/DinoSR checkpoint: it has no 'student.layers.*' weights "
            f"(first keys: {sorted(state)[:5]})."
        )
    return state


def _find_state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj:
                found = _find_state_dict(obj[key])
                if found is not None:
                    return found
    return None


def read_reference_config(path: str | Path) -> dict:
    """The reference `config.json` (training config with a "model" section, or that section alone), checked.

    Raises `CheckpointError` for a file that is not JSON, not an object, a transformers config, or
    has none of the reference model's fields.
    """
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"config {path} is not a JSON file ({err}).") from err
    model = values.get("model", values) if isinstance(values, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError(f"config {path} is not a JSON object with the reference model's fields.")
    if "model_type" in values:
        raise CheckpointError(
            f"config {path} is a transformers configuration (model_type {values['model_type']!r}), not the "
            "reference SpidR config.json that came with the checkpoint."
        )
    known = {*_CONFIG_FIELDS, "extractor_mode", "extractor_conv_layer_config"}
    if not known & set(model):
        raise CheckpointError(
            f"config {path} has none of the reference SpidR model's fields (e.g. encoder_embed_dim, "
            f"extractor_conv_layer_config); its keys are {sorted(model)[:8]}."
        )
    return values


def config_from_reference(
    state: Mapping[str, torch.Tensor], reference_config: Mapping | None = None, model_type: str = "spidr"
) -> SpidRConfig:
    """Build a `SpidRConfig` from the reference `config.json` (its "model" section) and the weights' shapes.

    Without a reference config, every number is read off the weights except the head count,
    which is taken as `hidden_size // 64` (12 for the base model) with a warning.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}.")
    kwargs = _config_from_weights(state)
    if reference_config is not None:
        ref = dict(reference_config.get("model", reference_config))
        if ref.get("encoder_layer_norm_first", False):
            raise CheckpointError("Pre-LN encoders (encoder_layer_norm_first=true) are not SpidR/DinoSR checkpoints.")
        excluded = ref.get("ema_exclude_layers", ["pos_conv_embed"])
        if list(excluded) != ["pos_conv_embed"]:
            raise CheckpointError(f"Unsupported ema_exclude_layers {excluded}: only ['pos_conv_embed'] is implemented.")
        if "extractor_mode" in ref:
            kwargs["feat_extract_norm"] = ref["extractor_mode"]
        if "extractor_conv_layer_config" in ref:
            layers = ref["extractor_conv_layer_config"]
            kwargs.update(
                conv_dim=[c for c, _, _ in layers],
                conv_kernel=[k for _, k, _ in layers],
                conv_stride=[s for _, _, s in layers],
            )
        kwargs.update({ours: ref[theirs] for theirs, ours in _CONFIG_FIELDS.items() if theirs in ref})
    elif kwargs["hidden_size"] % 64 == 0:
        kwargs["num_attention_heads"] = kwargs["hidden_size"] // 64
        logger.warning(
            "No reference config.json: taking num_attention_heads=%d (64 dims per head, as in the base model). "
            "Pass --config if the checkpoint used another head count.",
            kwargs["num_attention_heads"],
        )
    else:
        raise CheckpointError("The attention head count cannot be read off the weights: pass the reference config.json.")
    if model_type == "dinosr":
        kwargs.update(head_input="last_hidden_state", ema_schedule="dinosr")
        # the reference's one freeze_step also freezes DinoSR's teacher (its decay is 1 from there on)
        kwargs["ema_frozen_step"] = kwargs.get("freeze_feature_encoder_step", SpidRConfig().freeze_feature_encoder_step)
    config = SpidRConfig(**kwargs)
    _check_against_weights(config, state)
    return config


def _config_from_weights(state: Mapping[str, torch.Tensor]) -> dict:
    conv_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight", k))})
    conv_weights = [state[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in conv_ids]
    pos_weight = state["student.pos_conv_embed.convs.0.weight"]
    depth = len({k for k in state if re.match(r"student\.pos_conv_embed\.convs\.\d+\.weight$", k)})
    hidden = pos_weight.shape[0]
    return dict(
        conv_dim=[w.shape[0] for w in conv_weights],
        conv_kernel=[w.shape[2] for w in conv_weights],
        conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        feat_extract_norm="layer_norm" if "feature_extractor.conv_layers.1.layer_norm.weight" in state else "group_norm",
        hidden_size=hidden,
        num_hidden_layers=len({k.split(".")[2] for k in state if k.startswith("student.layers.")}),
        intermediate_size=state["student.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        qkv_bias="student.layers.0.attention.qkv.bias" in state,
        num_conv_pos_embeddings=pos_weight.shape[2] * depth,
        num_conv_pos_embedding_groups=hidden // pos_weight.shape[1],
        num_conv_pos_embedding_layers=depth,
        num_codebooks=len({k for k in state if _CODEBOOK_KEY.match(k) and k.endswith(".codebook")}) or 8,
        codebook_size=state["codebooks.0.codebook"].shape[0] if "codebooks.0.codebook" in state else 256,
        # strides are not stored in the weights: keep the default extractor's
        conv_stride=list(SpidRConfig().conv_stride)[: len(conv_ids)],
    )


def _check_against_weights(config: SpidRConfig, state: Mapping[str, torch.Tensor]) -> None:
    inferred = _config_from_weights(state)
    for field in ("conv_dim", "conv_kernel", "hidden_size", "num_hidden_layers", "intermediate_size", "num_codebooks"):
        if getattr(config, field) != inferred[field]:
            raise CheckpointError(
                f"The config says {field}={getattr(config, field)} but the weights have {inferred[field]}: "
                "this config.json does not belong to this checkpoint."
            )


def reference_to_hf_state_dict(state: Mapping[str, torch.Tensor], config: SpidRConfig) -> dict[str, torch.Tensor]:
    """Rename reference keys to `SpidRForPreTraining` keys; stack the codebooks into two buffers."""
    converted: dict[str, torch.Tensor] = {}
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if key == "current_step":
            converted["current_step"] = tensor.reshape(()).long()
            continue
        if match := _CODEBOOK_KEY.match(key):
            (sums if match.group(2) == "codebook" else counts)[int(match.group(1))] = tensor
            continue
        for pattern, template in _KEY_RULES:
            if pattern.match(key):
                converted[pattern.sub(template, key).replace(".attention.proj.", ".attention.out_proj.")] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Unexpected keys in the checkpoint (not part of SpidR/DinoSR): {sorted(unknown)[:10]}")
    if sums:
        if sorted(sums) != list(range(config.num_codebooks)) or sorted(counts) != sorted(sums):
            raise CheckpointError(f"Codebooks {sorted(sums)} / counts {sorted(counts)} do not cover {config.num_codebooks} codebooks.")
        converted["codebook_sums"] = torch.stack([sums[i] for i in range(config.num_codebooks)])
        converted["codebook_counts"] = torch.stack([counts[i] for i in range(config.num_codebooks)])
    return converted


def load_converted_model(state: Mapping[str, torch.Tensor], config: SpidRConfig) -> SpidRForPreTraining:
    """A `SpidRForPreTraining` holding exactly the reference weights; refuses missing or unexpected keys."""
    model = SpidRForPreTraining(config)
    converted = reference_to_hf_state_dict(state, config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if k != "current_step"]  # some checkpoints predate the step counter
    if missing or unexpected:
        raise CheckpointError(
            f"The checkpoint does not match the architecture: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(unexpected)[:10]}."
        )
    return model.eval()


def convert_checkpoint(
    src: str | Path,
    out_dir: str | Path,
    config_path: str | Path | None = None,
    model_type: str = "spidr",
) -> Path:
    """Convert a reference checkpoint into a transformers directory (config, safetensors, preprocessor,
    model card and remote code). The reference `config.json` beside `src` is used when present."""
    src, out_dir = Path(src), Path(out_dir)
    prepare_output_dir(out_dir, "output folder", create=False)  # before the (slow) loading
    if config_path is not None and not Path(config_path).is_file():
        raise FileNotFoundError(f"No config at {config_path}.")
    state = load_reference_state_dict(src)
    if config_path is None and (src.parent / "config.json").is_file():
        config_path = src.parent / "config.json"
    reference_config = read_reference_config(config_path) if config_path is not None else None
    config = config_from_reference(state, reference_config, model_type=model_type)
    model = load_converted_model(state, config)
    save_pretrained_with_code(model, out_dir)
    write_model_card(
        out_dir,
        model.config,
        origin=f"Converted from the reference checkpoint `{src.name}` ({model_type}) with `spidr-hf convert`.",
        facts=conversion_facts(config),
    )
    return out_dir


def conversion_facts(config: SpidRConfig) -> dict[str, object]:
    """What the converted model card says about the recipe numbers taken from the reference config."""
    step = config.freeze_feature_encoder_step
    if config.ema_schedule == "dinosr":
        freezing = (
            f"the reference's `freeze_step` ({step}) sets both `freeze_feature_encoder_step` and `ema_frozen_step`: "
            "the feature encoder and the DinoSR teacher freeze at the same step, as in the reference"
        )
    else:
        freezing = (
            f"the reference's `freeze_step` ({step}) sets `freeze_feature_encoder_step`; the SpidR teacher's "
            f"decay reaches 1 by `ema_timescale` ({config.ema_timescale:g}) and `ema_threshold` ({config.ema_threshold:g})"
        )
    return {"EMA schedule": config.ema_schedule, "freezing": freezing}
