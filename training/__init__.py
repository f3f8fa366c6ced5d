"""How SpidR learns: data, masking, the pretraining recipe and its Trainer.

`spidr_hf.training.data` and `spidr_hf.training.masking` build batches; `arguments`, `recipe` and
`trainer` turn them into a transformers `Trainer` run (see `spidr-hf pretrain`).
"""

from .data import (
    LengthBudgetBatchSampler,
    PretrainingCollator,
    SpidRAudioDataset,
    Utterance,
    is_empty_batch,
    load_training_index,
    write_manifest,
)
from .masking import compute_span_mask, num_frames

__all__ = [
    "LengthBudgetBatchSampler",
    "PretrainingCollator",
    "SpidRAudioDataset",
    "Utterance",
    "compute_span_mask",
    "is_empty_batch",
    "load_training_index",
    "num_frames",
    "write_manifest",
]
