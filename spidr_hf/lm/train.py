"""Training a unit LM with the transformers ``Trainer``: packed blocks of deduplicated units, checkpoints
in the output folder, resume from the last one.

``OUTPUT_DIR`` holds, once training ends: the LM (``config.json``, ``model.safetensors``), its unit
tokenizer (``tokenizer.json`` ...), ``lm_training.json`` (what it was trained on) and the Trainer's
``checkpoint-<step>/`` folders. The tokenizer is written before the first step, so a resumed run
reads the same K back and refuses units of another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from ..runs import atomic_write_text, prepare_output_dir
from .data import packed_dataset, read_unit_files, tokenize_sequences
from .model import PRESETS, build_lm
from .tokenizer import build_unit_tokenizer, num_units_of

TRAINING_RECORD = "lm_training.json"


@dataclass
class LMTrainingOptions:
    """How to train (see ``spidr-hf lm-train --help`` for each)."""

    output_dir: str
    preset: str = "tiny"
    num_units: int | None = None  # K; default: the largest unit of the inputs + 1
    max_steps: int = 1000
    block_size: int = 128
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    save_steps: int = 500
    seed: int = 0
    device: str | None = None  # "cpu" forces the CPU; default: the Trainer's choice
    resume_from_checkpoint: str | bool = False  # True: the last checkpoint in output_dir
    progress: bool = True


def _tokenizer_for(out: Path, options: LMTrainingOptions, largest_unit: int) -> Any:
    """The saved tokenizer of a resumed run, else a new one for K units."""
    if options.resume_from_checkpoint and (out / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(out)
        if options.num_units is not None and options.num_units != num_units_of(tokenizer):
            raise ValueError(
                f"--num-units {options.num_units} differs from the K={num_units_of(tokenizer)} of the run in {out}; "
                "resume with the same units, or train into another --output-dir."
            )
        return tokenizer
    return build_unit_tokenizer(options.num_units or largest_unit + 1)


def _last_checkpoint(out: Path) -> str | None:
    """The last ``checkpoint-<step>`` folder in ``out``, or ``None`` (also when ``out`` does not exist)."""
    return get_last_checkpoint(str(out)) if out.is_dir() else None


def _checkpoint(out: Path, resume: str | bool) -> str | None:
    if not resume:
        return None
    if resume is True:
        last = _last_checkpoint(out)
        if last is None:
            raise ValueError(f"--resume-from-checkpoint: {out} holds no checkpoint-<step> folder to resume from.")
        return last
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume-from-checkpoint {resume} is not a checkpoint folder.")
    return str(resume)


def train_lm(units_files: Sequence[str | os.PathLike], options: LMTrainingOptions) -> dict[str, Any]:
    """Train (or resume) a unit LM on ``units_files``; returns what ``lm_training.json`` records.

    Everything is read and checked before anything is written: the units (empty or malformed
    sequences, units outside the tokenizer's K), the output folder (an LM already there is kept
    unless resuming), the checkpoint to resume from.
    """
    if options.preset not in PRESETS:
        raise ValueError(f"unknown LM preset {options.preset!r}: choose one of {', '.join(PRESETS)}.")
    out = prepare_output_dir(options.output_dir, "--output-dir", create=False)
    if not options.resume_from_checkpoint and ((out / "config.json").exists() or _last_checkpoint(out)):
        raise FileExistsError(
            f"{out} already holds an LM or its checkpoints; pass --resume-from-checkpoint to continue it, "
            "or give another --output-dir."
        )
    checkpoint = _checkpoint(out, options.resume_from_checkpoint)
    sequences = read_unit_files(units_files)
    tokenizer = _tokenizer_for(out, options, max(max(s) for s in sequences.values()))
    source = ", ".join(map(str, units_files))
    token_ids = tokenize_sequences(tokenizer, sequences, num_units_of(tokenizer), source)
    dataset = packed_dataset(token_ids, options.block_size, tokenizer.pad_token_id)

    set_seed(options.seed)
    model = build_lm(options.preset, tokenizer)
    prepare_output_dir(out, "--output-dir")
    tokenizer.save_pretrained(out)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=options.max_steps,
        per_device_train_batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        warmup_steps=options.warmup_steps,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=max(1, min(50, options.max_steps // 10)),
        save_steps=options.save_steps,
        save_total_limit=2,
        seed=options.seed,
        data_seed=options.seed,
        report_to="none",
        use_cpu=options.device == "cpu",
        disable_tqdm=not options.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
    if not options.progress:  # without bars the Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))
    record = {
        "units_files": [str(Path(p).resolve()) for p in units_files],
        "sequences": len(token_ids),
        "tokens": sum(len(ids) for ids in token_ids),
        "num_units": num_units_of(tokenizer),
        "blocks": len(dataset),
        "steps": trainer.state.global_step,
        "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), float("nan")),
        "options": {k: v for k, v in asdict(options).items() if k not in ("output_dir", "progress")},
    }
    atomic_write_text(out / TRAINING_RECORD, json.dumps(record, indent=1) + "\n")
    return record


__all__ = ["TRAINING_RECORD", "LMTrainingOptions", "train_lm"]
