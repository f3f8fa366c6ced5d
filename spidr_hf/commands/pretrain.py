"""`spidr-hf pretrain`: SpidR pretraining with the transformers Trainer.

Every field of `SpidRTrainingArguments` (the recipe's numbers and all of transformers'
`TrainingArguments`) is a flag, kebab-case (`--train-data`) or snake_case (`--train_data`);
`--recipe FILE` (TOML/JSON, or a built-in name) sets many at once and the other flags override it.
`--quiet` (no progress bar and no metric lines, warnings only) and `--debug` (tracebacks) work as
in every command.
Examples::

    spidr-hf pretrain --recipe tiny_cpu --train-data audio/ --output-dir runs/tiny
    torchrun --nproc_per_node 8 -m spidr_hf.cli pretrain --train-data manifest.tsv --output-dir runs/base
    spidr-hf pretrain --train-data audio/ --output-dir runs/base --resume-from-checkpoint last
"""

from __future__ import annotations

import argparse
import logging

from transformers import PrinterCallback, set_seed

from spidr_hf.commands import add_output_flags, apply_output_flags, command, kebab_case_flags
from spidr_hf.errors import UsageError
from spidr_hf.runs import prepare_output_dir
from spidr_hf.training import (
    PretrainingError,
    SpidRPretrainer,
    load_pretraining_model,
    parse_pretraining_args,
)

DESCRIPTION = "pretrain SpidR on a folder or manifest of audio (transformers Trainer; torchrun for DDP)"

# values of --resume-from-checkpoint that mean "the last checkpoint in output_dir"
_LAST_CHECKPOINT = {"last", "true", "True"}


@command("pretrain", user_errors=(PretrainingError,))
def main(argv: list[str]) -> int:
    if any(flag in argv for flag in ("-h", "--help")):
        print(f"spidr-hf pretrain: {DESCRIPTION}\n\n{__doc__.split(chr(10), 2)[2]}")
    output = argparse.ArgumentParser(add_help=False)  # the flags every command takes; the rest are the Trainer's
    add_output_flags(output)
    flags, rest = output.parse_known_args(kebab_case_flags(argv))
    args = parse_pretraining_args(rest)
    apply_output_flags(flags, level=logging.INFO if args.should_log else logging.WARNING)
    if flags.quiet:
        args.disable_tqdm = True
    if args.train_data is None:
        raise UsageError("--train-data (a folder or manifest of audio) is required.")
    if args.should_save:
        prepare_output_dir(args.output_dir, "--output-dir")
    set_seed(args.seed)  # the same weights on every rank, and for every run with this seed
    model = load_pretraining_model(args.model_config, args.config_overrides, seed=args.seed)
    trainer = SpidRPretrainer(model, args)
    if flags.quiet:  # the metrics still reach the loggers (TensorBoard ...), not the terminal
        trainer.pop_callback(PrinterCallback)
    resume = args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint="last" if resume in _LAST_CHECKPOINT else resume)
    out = trainer.save_pretrained_model()
    if args.should_log:
        print(f"Wrote {out}: model.safetensors, config.json, preprocessor_config.json, README.md, remote code.")
    return 0
