"""The SpidR pretraining recipe as objects: the tri-stage learning rate, the model to start from,
recipe files and the built-in recipes.

The numbers of the paper's recipe are the defaults of
[`~spidr_hf.training.SpidRTrainingArguments`]; a recipe file (TOML or JSON) overrides any of
them by field name, and command-line flags override the file::

    # my_run.toml
    train_data = "/data/librilight/manifest.tsv"
    output_dir = "runs/spidr-base"
    per_device_max_batch_samples = 3_800_000
    max_steps = 400_000
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spidr_hf.modeling import SAMPLING_RATE, SpidRConfig, SpidRForPreTraining

from spidr_hf.model_dir import check_model_fits, from_pretrained, read_spidr_config, weights_file

BUILTIN_RECIPES: dict[str, dict[str, Any]] = {
    # The paper's recipe: exactly the defaults of SpidRTrainingArguments (400k steps, 3.8M samples per GPU).
    "spidr_base": {},
    # A tiny SpidR that learns something on a laptop CPU in a few minutes (demo, smoke tests).
    "tiny_cpu": {
        "model_config": "tiny",  # SpidRConfig.tiny(): its values and their reasons are commented there
        "max_steps": 1_500,  # the held-out PNMI levels off after ~1,000 steps (docs/TINY_RECIPE.md); keeps `make demo` short
        "learning_rate": 1e-3,  # 2e-3 kills the heads (one unit) within 500 steps; 1.5e-3 and 5e-4 score lower
        "scale_lr_schedule_to_max_steps": True,
        "per_device_max_batch_samples": 192_000,  # four 3 s crops: 4x larger batches were no better per step
        "max_samples": 48_000,
        # short spans, few of them: predicting a frame from its near context; spans of 10 at 0.8 (the paper's)
        # give the worst units of every masking tried here (docs/TINY_RECIPE.md)
        "mask_prob": 0.3,
        "mask_length": 3,
        "logging_steps": 10,
        "save_steps": 200,
        "bf16": False,
    },
}
"""Recipes that `--recipe NAME` finds without a file: field name -> value."""


# ------------------------------------------------------------------------------ learning rate
@dataclass(frozen=True)
class TriStageSchedule:
    """Learning-rate factor of the tri-stage schedule (fairseq's `tri_stage`), for `LambdaLR`.

    At optimizer step `t` (0 = the first update) the learning rate is `lr * factor(t)`:

    * warm-up, `t < warmup_steps`: linear from `init_lr_scale` to 1;
    * hold, the next `hold_steps`: 1;
    * decay, the next `decay_steps`: exponential from 1 to `final_lr_scale`, i.e.
      `final_lr_scale ** (s / decay_steps)` after `s` decay steps;
    * afterwards: `final_lr_scale`.

    Being a callable object (not a lambda), `LambdaLR` saves its fields in the scheduler's
    checkpoint, so a resumed run continues the schedule it started with.
    """

    warmup_steps: int = 12_000
    hold_steps: int = 188_000
    decay_steps: int = 200_000
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.01

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init_lr_scale + (1.0 - self.init_lr_scale) * step / self.warmup_steps
        step -= self.warmup_steps
        if step < self.hold_steps:
            return 1.0
        step -= self.hold_steps
        if step < self.decay_steps:
            return self.final_lr_scale ** (step / self.decay_steps)
        return self.final_lr_scale

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.hold_steps + self.decay_steps

    def scaled_to(self, total_steps: int) -> TriStageSchedule:
        """The same schedule with its three stages stretched or shrunk to `total_steps` (same fractions)."""
        if total_steps <= 0:
            raise ValueError(f"cannot scale the learning rate schedule to {total_steps} steps.")
        warmup = round(total_steps * self.warmup_steps / self.total_steps)
        hold = round(total_steps * self.hold_steps / self.total_steps)
        return TriStageSchedule(
            warmup_steps=warmup,
            hold_steps=hold,
            decay_steps=max(total_steps - warmup - hold, 0),
            init_lr_scale=self.init_lr_scale,
            final_lr_scale=self.final_lr_scale,
        )


# ------------------------------------------------------------------------------ model
def load_pretraining_model(
    model_config: str, config_overrides: str | None = None, seed: int | None = None
) -> SpidRForPreTraining:
    """The model a run starts from.

    Args:
        model_config: `"base"` (the paper's SpidR, `SpidRConfig()`), `"tiny"` (`SpidRConfig.tiny()`),
            a `config.json` (fresh weights with that architecture), or a model directory saved by
            `save_pretrained` / `spidr-hf convert` / an earlier run (continue from its weights,
            teacher, codebooks and `current_step`; the optimizer and schedule start afresh).
        config_overrides: `SpidRConfig` fields to change, as in transformers' example scripts:
            `"freeze_feature_encoder_step=1000,ema_timescale=2000"` (`PretrainedConfig.update_from_string`).
        seed: the run's seed, given to `SpidRConfig.codebook_init_seed` (the codebooks' start, when the
            model has none yet) before the overrides; the other weights follow the global seed (`set_seed`).
    """
    path = Path(model_config)
    if model_config == "base":
        config = SpidRConfig()
    elif model_config == "tiny":
        config = SpidRConfig.tiny()
    elif path.is_dir() and weights_file(path) != str(path):
        config = check_model_fits(_with_overrides(read_spidr_config(path), config_overrides, seed))
        return from_pretrained(SpidRForPreTraining, path, config=config)
    elif (path / "config.json").is_file() or path.is_file():
        config = read_spidr_config(path)
    else:
        raise FileNotFoundError(
            f"--model_config {model_config!r} is neither 'base', 'tiny', a config.json nor a model directory."
        )
    return SpidRForPreTraining(check_model_fits(_with_overrides(config, config_overrides, seed)))


def _with_overrides(config: SpidRConfig, overrides: str | None, seed: int | None = None) -> SpidRConfig:
    """`config` with the seed and `"name=value,..."` applied, rebuilt so `SpidRConfig` checks the new values now."""
    if seed is None and not overrides:
        return config
    if seed is not None:
        config.codebook_init_seed = seed
    if overrides:
        try:
            config.update_from_string(overrides)
        except ValueError as err:  # transformers' message names the key or value, not the flag
            raise ValueError(f"--config_overrides {overrides!r}: {err}") from err
    return SpidRConfig.from_dict(config.to_dict())


# ------------------------------------------------------------------------------ recipe files
def load_recipe(recipe: str | os.PathLike) -> dict[str, Any]:
    """Field values from a TOML/JSON recipe file, or a built-in recipe name (see `BUILTIN_RECIPES`).

    A TOML file may group fields in tables (`[optimizer]`, `[data]`, ...) for readability: tables
    are flattened, so only the field names matter.
    """
    path = Path(recipe)
    if not path.is_file():
        if str(recipe) in BUILTIN_RECIPES:
            return dict(BUILTIN_RECIPES[str(recipe)])
        if str(recipe) in recipe_files():
            return load_recipe(recipe_files()[str(recipe)])
        names = sorted({*BUILTIN_RECIPES, *recipe_files()})
        raise FileNotFoundError(f"recipe {recipe!r} is neither a file nor one of {names}.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        values = tomllib.loads(text)
    elif path.suffix.lower() == ".json":
        values = json.loads(text)
    else:
        raise ValueError(f"recipe {path} must be a .toml or .json file.")
    return _flatten_tables(values, str(path))


RECIPE_DIR = Path(__file__).parent / "recipes"
"""The recipe files that ship with the package (`--recipe NAME` finds `NAME.toml` here)."""


def recipe_files() -> dict[str, Path]:
    """Name -> path of each recipe file shipped in `RECIPE_DIR`."""
    return {path.stem: path for path in sorted(RECIPE_DIR.glob("*.toml"))}


def _flatten_tables(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`{"optimizer": {"learning_rate": 1}}` -> `{"learning_rate": 1}`; a name given twice is an error."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        items = value.items() if isinstance(value, dict) and key not in _DICT_FIELDS else [(key, value)]
        for name, item in items:
            if name in flat:
                raise ValueError(f"recipe {where} sets {name!r} twice.")
            flat[name] = item
    return flat


# TrainingArguments fields whose value is itself a dict (not a table of fields)
_DICT_FIELDS = {"lr_scheduler_kwargs", "accelerator_config", "fsdp_config", "deepspeed", "activation_checkpointing_kwargs"}


def hours_of_audio(num_samples: int, sampling_rate: int = SAMPLING_RATE) -> float:
    """`num_samples` at `sampling_rate` in hours."""
    return num_samples / sampling_rate / 3600


def format_hours(hours: float) -> str:
    """Human-readable duration for model cards ("12.3 h", "4.2 min")."""
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.1f} min" if hours * 60 >= 0.1 else f"{hours * 3600:.0f} s"


__all__ = [
    "BUILTIN_RECIPES",
    "RECIPE_DIR",
    "TriStageSchedule",
    "format_hours",
    "hours_of_audio",
    "load_pretraining_model",
    "load_recipe",
    "recipe_files",
]
