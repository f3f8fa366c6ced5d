"""How SpidR learns: data, masking, the pretraining recipe and its Trainer.

`data` and `masking` build batches; `arguments` (the recipe's numbers), `recipe` (schedule, model,
recipe files) and `trainer` (a transformers `Trainer` subclass) run the pretraining that
`spidr-hf pretrain` exposes.
"""

if __name__ != "spidr_hf.training":  # the folder installs as spidr_hf.training; a second copy would split classes
    raise ImportError(
        f"training/ is the package spidr_hf.training, not {__name__!r}: install the repository "
        "(pip install -e .) and import spidr_hf.training."
    )

from .arguments import SpidRTrainingArguments, parse_pretraining_args
from .checkpoints import checkpoint_problem, last_complete_checkpoint
from .data import (
    LengthBudgetBatchSampler,
    PreparedBatches,
    PretrainingCollator,
    SpidRAudioDataset,
    is_empty_batch,
    load_training_index,
)
from .masking import compute_span_mask
from .monitoring import PretrainingError
from .recipe import BUILTIN_RECIPES, TriStageSchedule, load_pretraining_model, load_recipe
from .trainer import (
    PretrainingProgress,
    SpidRPretrainer,
    SpidRTeacherCallback,
    TimeBudget,
    pretraining_param_groups,
)

__all__ = [
    "BUILTIN_RECIPES",
    "LengthBudgetBatchSampler",
    "PreparedBatches",
    "PretrainingCollator",
    "PretrainingError",
    "PretrainingProgress",
    "SpidRAudioDataset",
    "SpidRPretrainer",
    "SpidRTeacherCallback",
    "SpidRTrainingArguments",
    "TimeBudget",
    "TriStageSchedule",
    "checkpoint_problem",
    "compute_span_mask",
    "is_empty_batch",
    "last_complete_checkpoint",
    "load_pretraining_model",
    "load_recipe",
    "load_training_index",
    "parse_pretraining_args",
    "pretraining_param_groups",
]
