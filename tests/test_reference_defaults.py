"""Every default of the `spidr_base` recipe equals the reference's (`reference-defaults.json`), field by field.

`spidr_base` is `SpidRTrainingArguments` under `--recipe spidr_base` (the built-in name and the
TOML file) plus the `SpidRConfig()` that its `model_config = "base"` builds. Every field of the
reference's configuration dataclasses is either mapped to ours below or listed with the reason it
has none.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import FIXTURE_DIR, REPO
from spidr_hf.training import SpidRTrainingArguments, parse_pretraining_args

from spidr_hf import SpidRConfig

DEFAULTS_FILE = FIXTURE_DIR.parent / "upstream-spidr-trajectory" / "reference-defaults.json"

# reference model field -> our value, read off SpidRConfig()
MODEL_FIELDS = {
    "extractor_mode": lambda c: c.feat_extract_norm,
    "extractor_conv_bias": lambda c: c.conv_bias,
    "extractor_conv_layer_config": lambda c: [list(x) for x in zip(c.conv_dim, c.conv_kernel, c.conv_stride, strict=True)],
    "encoder_embed_dim": lambda c: c.hidden_size,
    "encoder_projection_dropout": lambda c: c.feat_proj_dropout,
    "encoder_pos_conv_kernel": lambda c: c.num_conv_pos_embeddings,
    "encoder_pos_conv_groups": lambda c: c.num_conv_pos_embedding_groups,
    "encoder_pos_conv_depth": lambda c: c.num_conv_pos_embedding_layers,
    "encoder_num_layers": lambda c: c.num_hidden_layers,
    "encoder_num_heads": lambda c: c.num_attention_heads,
    "encoder_attention_dropout": lambda c: c.attention_dropout,
    "encoder_ff_interm_features": lambda c: c.intermediate_size,
    "encoder_ff_interm_dropout": lambda c: c.activation_dropout,
    "encoder_dropout": lambda c: c.hidden_dropout,
    "encoder_layer_drop": lambda c: c.layerdrop,
    "encoder_qkv_bias": lambda c: c.qkv_bias,
    "codebook_size": lambda c: c.codebook_size,
    "codebook_decay": lambda c: c.codebook_decay,
    "num_codebooks": lambda c: c.num_codebooks,
    "ema_start_decay": lambda c: c.ema_start_decay,
    "ema_final_decay": lambda c: c.ema_final_decay,
    "ema_final_step": lambda c: c.ema_final_step,
    "ema_timescale": lambda c: c.ema_timescale,
    "ema_threshold": lambda c: c.ema_threshold,
    # one reference step for both freezes (DinoSR's teacher freezes there too)
    "freeze_step": lambda c: c.freeze_feature_encoder_step if c.freeze_feature_encoder_step == c.ema_frozen_step else None,
}
MODEL_WITHOUT_COUNTERPART = {
    "encoder_layer_norm_first": "post-LN only (SPIDR.md); `spidr-hf convert` refuses a pre-LN checkpoint",
    "ema_exclude_layers": "not a setting: ema_step always copies pos_conv_embed instead of averaging it; "
    "`spidr-hf convert` refuses any other list",
}
# DinoSR's own recipe (the predecessor): spidr_base trains SpidR; a converted DinoSR takes these from its config.json
DINOSR_ONLY = {"encoder_layer_drop": "DinoSR drops layers in training; SpidR's recipe does not (spidr_model: 0.0)"}

# reference optimizer / masking / data field -> our value, read off the parsed SpidRTrainingArguments
TRAINING_FIELDS = {
    "optimizer": {
        "lr": lambda a: a.learning_rate,
        "betas": lambda a: [a.adam_beta1, a.adam_beta2],
        "weight_decay": lambda a: a.weight_decay,
        "eps": lambda a: a.adam_epsilon,
        "max_norm": lambda a: a.max_grad_norm,
        "init_lr_scale": lambda a: a.init_lr_scale,
        "final_lr_scale": lambda a: a.final_lr_scale,
        "max_steps": lambda a: a.max_steps,
        "warmup_steps": lambda a: a.lr_warmup_steps,
        "hold_steps": lambda a: a.lr_hold_steps,
        "decay_steps": lambda a: a.lr_decay_steps,
        "scheduler": lambda a: {"tri_stage": "tristage"}.get(a.lr_schedule, a.lr_schedule),
    },
    "masking": {
        "mask_prob": lambda a: a.mask_prob,
        "mask_length": lambda a: a.mask_length,
    },
    "data": {
        "num_buckets": lambda a: a.num_buckets,
        "min_sample_size": lambda a: a.min_samples,
        "max_sample_size": lambda a: a.max_samples,
        # the same number; it bounds the cropped (B, L) tensor here (cost="cropped"), the lengths' sum there
        "max_batch_length": lambda a: a.per_device_max_batch_samples,
        "random_seed": lambda a: a.seed,
    },
}
_MACHINE = (
    "a setting of the machine, not of the recipe (dataloader_* of TrainingArguments): crops and masks are a "
    "function of the seed, not of the loader (test_trainer::test_data_order_is_a_function_of_the_seed_not_of_the_workers)"
)
_CHANNEL_MASKING = "channel masking, off in the recipe (mask_channel_prob 0): not implemented"
TRAINING_WITHOUT_COUNTERPART = {
    "optimizer": {
        "dtype": "bf16=None: bf16 autocast where the accelerator computes bf16 natively (the reference's GPUs), "
        "fp32 on CPUs (bf16_supported)",
        "rsqrt_timescale": "the reference's other schedule (rsqrt), unused by its recipe; lr_schedule='trainer' "
        "gives transformers' schedules",
        "rsqrt_shift": "the reference's other schedule (rsqrt), unused by its recipe",
        "exclude_from_optimizer": "not a setting: pretraining_param_groups always leaves the teacher out",
        "to_freeze": "not a setting: feature_encoder_parameters (extractor and projection) freeze at "
        "freeze_feature_encoder_step",
    },
    "masking": {
        "mask_selection": "only 'static' (spans of exactly mask_length) is implemented",
        "mask_other": "a parameter of the non-static selections only",
        "no_mask_overlap": "spans always may overlap (compute_span_mask), as with the reference's False",
        "mask_min_space": "used only with no_mask_overlap",
        "mask_channel_prob": _CHANNEL_MASKING,
        "mask_channel_selection": _CHANNEL_MASKING,
        "mask_channel_other": _CHANNEL_MASKING,
        "mask_channel_length": _CHANNEL_MASKING,
        "no_mask_channel_overlap": _CHANNEL_MASKING,
        "mask_channel_min_space": _CHANNEL_MASKING,
    },
    "data": {
        "enable_padding": "not a setting: pretraining batches are cropped to their shortest, never padded",
        "rand_crop": "not a setting: crops always start at a random offset",
        "normalize": "not a setting: SpidRAudioDataset always standardises each file whole",
        "drop_last": "not a setting: the trainer's LengthBudgetBatchSampler keeps every batch (drop_last=False)",
        "bucket_method": "not a setting: equal-width length buckets between the shortest and longest ('uniform')",
        "num_workers": _MACHINE,
        "pin_memory": _MACHINE,
        "prefetch_factor": _MACHINE,
        "persistent_workers": _MACHINE,
    },
}


@pytest.fixture(scope="module")
def reference_defaults() -> dict:
    if not DEFAULTS_FILE.is_file():
        pytest.skip(f"reference defaults not found at {DEFAULTS_FILE} (they live in ../shared, next to the repo)")
    return json.loads(DEFAULTS_FILE.read_text())


def spidr_base_arguments(tmp_path: Path) -> list[SpidRTrainingArguments]:
    """The recipe by its built-in name and as the TOML file that writes it out."""
    toml = REPO / "training" / "recipes" / "spidr_base.toml"
    return [
        parse_pretraining_args(["--recipe", recipe, "--output_dir", str(tmp_path)]) for recipe in ("spidr_base", str(toml))
    ]


def test_every_reference_field_is_mapped_or_explained(reference_defaults):
    assert set(reference_defaults) == {"spidr_model", "dinosr_model", "optimizer", "masking", "data"}
    assert set(MODEL_FIELDS) | set(MODEL_WITHOUT_COUNTERPART) == set(reference_defaults["spidr_model"])
    assert not set(MODEL_FIELDS) & set(MODEL_WITHOUT_COUNTERPART)
    for section in ("optimizer", "masking", "data"):
        mapped, explained = set(TRAINING_FIELDS[section]), set(TRAINING_WITHOUT_COUNTERPART[section])
        assert mapped | explained == set(reference_defaults[section]), section
        assert not mapped & explained, section


def test_spidr_base_model_defaults_are_the_reference_ones(reference_defaults, tmp_path):
    for args in spidr_base_arguments(tmp_path):
        assert args.model_config == "base"  # SpidRConfig()
    config = SpidRConfig()
    assert (config.ema_schedule, config.head_input) == ("spidr", "before_residual")
    reference = reference_defaults["spidr_model"]
    for name, ours in MODEL_FIELDS.items():
        assert ours(config) == reference[name], name
    assert reference["encoder_layer_norm_first"] is False and reference["ema_exclude_layers"] == ["pos_conv_embed"]


def test_dinosr_reference_defaults_differ_from_spidr_only_where_listed(reference_defaults):
    spidr, dinosr = reference_defaults["spidr_model"], reference_defaults["dinosr_model"]
    differing = {name for name, value in dinosr.items() if spidr.get(name) != value}
    assert differing == set(DINOSR_ONLY)
    assert set(dinosr) <= set(spidr)  # DinoSR's schedule has no timescale / threshold


def test_spidr_base_training_defaults_are_the_reference_ones(reference_defaults, tmp_path):
    for args in spidr_base_arguments(tmp_path):
        for section, table in TRAINING_FIELDS.items():
            for name, ours in table.items():
                assert ours(args) == reference_defaults[section][name], f"{section}.{name}"
        assert args.optim == "adamw_torch" and args.lr_schedule == "tri_stage"
    assert reference_defaults["optimizer"]["dtype"] == "bfloat16"
    assert next(f for f in fields(SpidRTrainingArguments) if f.name == "bf16").default is None  # bf16 where supported
    assert reference_defaults["masking"]["mask_channel_prob"] == 0.0 and reference_defaults["masking"]["mask_selection"] == "static"
    assert reference_defaults["data"]["normalize"] and reference_defaults["data"]["rand_crop"]
    assert not reference_defaults["data"]["enable_padding"] and not reference_defaults["masking"]["no_mask_overlap"]
