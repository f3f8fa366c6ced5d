"""`SpidRTrainingArguments`: transformers' `TrainingArguments` with the SpidR recipe as defaults.

The defaults read like the paper's hyper-parameter table (arXiv 2512.20308, and the reference
`spidr` recipe): change any of them with a recipe file (`--recipe FILE`) or a flag.

| what | default |
|---|---|
| optimizer | AdamW, lr 5e-4, betas (0.9, 0.95), eps 1e-6, weight decay 0.01 (all parameters) |
| gradient clipping | 10 |
| learning rate | tri-stage: 12k warm-up from 0.01 x lr, 188k hold, 200k exponential decay to 0.01 x lr |
| steps | 400k (on 16 GPUs) |
| batches | length buckets, up to 3.8M samples (237 s of audio) per GPU, cropped to the shortest |
| utterances | 2,000 to 320,000 samples (random 20 s crops) |
| masking | spans of 10 frames, mask_prob 0.8, at least 2 spans, same count in every row |
| precision | bf16 autocast where the accelerator supports it |
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from transformers import HfArgumentParser, TrainingArguments

from .recipe import TriStageSchedule, load_recipe

_REF = "(SpidR recipe: {})"

logger = logging.getLogger(__name__)


def default_report_to() -> list[str]:
    """TensorBoard (event files under `output_dir/runs`) when it is installed, else no logger."""
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else ["none"]


def _launched_distributed() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def bf16_supported() -> bool:
    """Whether bf16 autocast should be used by default: a CUDA device that computes in bf16 natively.

    CPUs are left in fp32 by default: CPU bf16 autocast is slow on most CPUs and changes numerics
    for no gain in a smoke test. Pass `--bf16 true` to force it.
    """
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass
class SpidRTrainingArguments(TrainingArguments):
    """`TrainingArguments` for SpidR pretraining (see the module docstring for the recipe).

    Besides the Trainer's own fields, it carries the data, masking, model and schedule settings of
    the recipe. `bf16=None` (default) means "bf16 autocast where supported": on a CUDA device with
    native bf16 (Ampere or newer), else fp32; set it to `True`/`False` to choose.
    """

    # --- data -------------------------------------------------------------------------------
    train_data: str | None = field(
        default=None,
        metadata={"help": "Training audio: a folder (searched recursively), a .csv/.jsonl/fairseq .tsv manifest."},
    )
    per_device_max_batch_samples: int = field(
        default=3_800_000, metadata={"help": "Audio samples per batch per device " + _REF.format("3.8M")}
    )
    min_samples: int = field(default=2_000, metadata={"help": "Shorter utterances are dropped " + _REF.format("2000")})
    max_samples: int = field(
        default=320_000, metadata={"help": "Longer utterances are randomly cropped " + _REF.format("320000 = 20 s")}
    )
    num_buckets: int = field(default=1_000, metadata={"help": "Length buckets of the batch sampler " + _REF.format("1000")})
    strict_audio: bool = field(
        default=False,
        metadata={"help": "Stop on the first unreadable or too-short audio file instead of skipping and counting it."},
    )
    max_empty_steps: int = field(
        default=100,
        metadata={"help": "Stop when this many consecutive optimizer steps find no readable audio (files gone missing)."},
    )
    # --- masking ----------------------------------------------------------------------------
    mask_prob: float = field(default=0.8, metadata={"help": "Span-start probability x span length " + _REF.format("0.8")})
    mask_length: int = field(default=10, metadata={"help": "Span length in frames " + _REF.format("10")})
    min_masks: int = field(default=2, metadata={"help": "Minimum spans per utterance " + _REF.format("2")})
    # --- model ------------------------------------------------------------------------------
    model_config: str = field(
        default="base",
        metadata={"help": "'base', 'tiny', a config.json, or a model directory to continue from (weights, teacher, codebooks)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "SpidRConfig fields to change, e.g. 'freeze_feature_encoder_step=1000,ema_timescale=2000' "
            "(the EMA, codebook and freezing numbers of the recipe live in the model config)."
        },
    )
    # --- learning rate schedule ---------------------------------------------------------------
    lr_schedule: str = field(
        default="tri_stage",
        metadata={
            "help": "'tri_stage' (the recipe) or 'trainer' (use --lr_scheduler_type and --warmup_steps instead).",
            "choices": ["tri_stage", "trainer"],
        },
    )
    lr_warmup_steps: int = field(default=12_000, metadata={"help": "Tri-stage warm-up steps " + _REF.format("12000")})
    lr_hold_steps: int = field(default=188_000, metadata={"help": "Tri-stage constant steps " + _REF.format("188000")})
    lr_decay_steps: int = field(default=200_000, metadata={"help": "Tri-stage decay steps " + _REF.format("200000")})
    init_lr_scale: float = field(default=0.01, metadata={"help": "Warm-up starts at this x lr " + _REF.format("0.01")})
    final_lr_scale: float = field(default=0.01, metadata={"help": "Decay ends at this x lr " + _REF.format("0.01")})
    scale_lr_schedule_to_max_steps: bool = field(
        default=False,
        metadata={"help": "Stretch/shrink the three stages to max_steps, keeping their fractions (3, 47 and 50 percent)."},
    )
    recipe: str | None = field(
        default=None,
        metadata={"help": "TOML/JSON file (or built-in name: spidr_base, tiny_cpu) of field values; flags override it."},
    )

    # --- TrainingArguments fields whose defaults the recipe changes -----------------------------------
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate " + _REF.format("5e-4")})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1 " + _REF.format("0.9")})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 " + _REF.format("0.95")})
    adam_epsilon: float = field(default=1e-6, metadata={"help": "AdamW epsilon " + _REF.format("1e-6")})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay " + _REF.format("0.01")})
    max_grad_norm: float = field(default=10.0, metadata={"help": "Gradient clipping norm " + _REF.format("10")})
    max_steps: int = field(default=400_000, metadata={"help": "Optimizer steps " + _REF.format("400000")})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (see transformers' OptimizerNames)."})
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 autocast; default: on where the GPU supports bf16 natively, off on CPU."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of model initialisation, data order, crops and masks."})
    logging_steps: float = field(default=200, metadata={"help": "Log every N optimizer steps."})
    save_steps: float = field(default=2_500, metadata={"help": "Save a resumable checkpoint every N steps."})
    # The codebooks are all-reduced by the model itself and every rank moves its teacher identically:
    # DDP must not re-broadcast rank 0's buffers at every forward.
    ddp_broadcast_buffers: bool | None = field(
        default=False, metadata={"help": "Keep False: codebooks are all-reduced by the model, not broadcast."}
    )
    report_to: None | str | list[str] = field(
        default_factory=default_report_to,
        metadata={"help": "Loggers (tensorboard, wandb, ..., or none); default: tensorboard when installed."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the pretraining collator builds the model inputs itself."}
    )

    def __post_init__(self) -> None:
        if _launched_distributed() and not torch.cuda.is_available():
            # accelerate only forms a CPU (gloo) process group when asked for the CPU explicitly
            self.use_cpu = True
        if self.bf16 is None:
            self.bf16 = bf16_supported() and not self.use_cpu
        super().__post_init__()
        self._check_recipe_numbers()
        if self.max_samples < self.min_samples:
            raise ValueError(f"max_samples ({self.max_samples}) must be >= min_samples ({self.min_samples}).")
        if self.per_device_max_batch_samples < self.min_samples:
            raise ValueError(
                f"per_device_max_batch_samples ({self.per_device_max_batch_samples}) must hold at least one "
                f"utterance of min_samples ({self.min_samples})."
            )
        if self.per_device_max_batch_samples < self.max_samples:  # a smaller budget means shorter crops
            logger.warning(
                "per_device_max_batch_samples (%d) is below max_samples (%d): cropping utterances to %d samples.",
                self.per_device_max_batch_samples, self.max_samples, self.per_device_max_batch_samples,
            )  # fmt: skip
            self.max_samples = self.per_device_max_batch_samples

    def _check_recipe_numbers(self) -> None:
        """The recipe's own numbers, each in its range (a ValueError names the flag)."""
        checks = {
            "per_device_max_batch_samples": (self.per_device_max_batch_samples > 0, "a positive integer"),
            "min_samples": (self.min_samples > 0, "a positive integer"),
            "max_samples": (self.max_samples > 0, "a positive integer"),
            "num_buckets": (self.num_buckets > 0, "a positive integer"),
            "mask_length": (self.mask_length > 0, "a positive integer"),
            "mask_prob": (0 < self.mask_prob <= 1, "a number in (0, 1]"),
            "min_masks": (self.min_masks >= 0, "a non-negative integer"),
            "max_empty_steps": (self.max_empty_steps > 0, "a positive integer"),
            "lr_warmup_steps": (self.lr_warmup_steps >= 0, "a non-negative integer"),
            "lr_hold_steps": (self.lr_hold_steps >= 0, "a non-negative integer"),
            "lr_decay_steps": (self.lr_decay_steps >= 0, "a non-negative integer"),
            "init_lr_scale": (0 < self.init_lr_scale, "a positive number"),
            "final_lr_scale": (0 < self.final_lr_scale, "a positive number"),
            "max_steps": (self.max_steps > 0 or self.max_steps == -1, "a positive integer (or -1: use num_train_epochs)"),
        }
        for name, (valid, kind) in checks.items():
            if not valid:
                raise ValueError(f"--{name} must be {kind}, got {getattr(self, name)}.")

    def tri_stage_schedule(self) -> TriStageSchedule:
        """The learning-rate schedule these arguments describe (scaled to `max_steps` if asked)."""
        schedule = TriStageSchedule(
            warmup_steps=self.lr_warmup_steps,
            hold_steps=self.lr_hold_steps,
            decay_steps=self.lr_decay_steps,
            init_lr_scale=self.init_lr_scale,
            final_lr_scale=self.final_lr_scale,
        )
        return schedule.scaled_to(self.max_steps) if self.scale_lr_schedule_to_max_steps else schedule


_USAGE = "spidr-hf pretrain --train-data DATA --output-dir DIR [--recipe FILE] [--FLAG VALUE ...] (--help: every flag)"


def parse_pretraining_args(argv: Sequence[str] | None = None) -> SpidRTrainingArguments:
    """Parse `spidr-hf pretrain` flags: defaults < `--recipe FILE` values < the other flags.

    Unknown names in a recipe file are an error (a typo would otherwise silently keep a default).
    """
    # argparse's errors print the usage line: the full one lists every TrainingArguments flag
    parser = HfArgumentParser(SpidRTrainingArguments, prog="spidr-hf pretrain", usage=_USAGE)
    argv = list(argv or [])
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--recipe")
    recipe = peek.parse_known_args(argv)[0].recipe
    if recipe is not None:
        values = load_recipe(recipe)
        known = {f.name for f in fields(SpidRTrainingArguments) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"recipe {recipe} has unknown field(s) {unknown}.")
        parser.set_defaults(**values)
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args


__all__ = ["SpidRTrainingArguments", "bf16_supported", "parse_pretraining_args"]
