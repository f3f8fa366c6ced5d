"""`spidr-hf pretrain`: SpidR pretraining with the transformers Trainer.

Every field of `SpidRTrainingArguments` (the recipe's numbers and all of transformers'
`TrainingArguments`) is a flag; `--recipe FILE` (TOML/JSON, or a built-in name) sets many at once
and the other flags override it. Examples::

    spidr-hf pretrain --recipe tiny_cpu --train_data audio/ --output_dir runs/tiny
    torchrun --nproc_per_node 8 -m spidr_hf.cli pretrain --train_data manifest.tsv --output_dir runs/base
    spidr-hf pretrain --train_data audio/ --output_dir runs/base --resume_from_checkpoint last
"""

from __future__ import annotations

import logging
import sys

DESCRIPTION = "pretrain SpidR on a folder or manifest of audio (transformers Trainer; torchrun for DDP)"

# values of --resume_from_checkpoint that mean "the last checkpoint in output_dir"
_LAST_CHECKPOINT = {"last", "true", "True"}


def main(argv: list[str]) -> int:
    from spidr_hf.training import SpidRPretrainer, load_pretraining_model, parse_pretraining_args

    if any(flag in argv for flag in ("-h", "--help")):
        print(f"spidr-hf pretrain: {DESCRIPTION}\n\n{__doc__.split(chr(10), 2)[2]}")
    args = parse_pretraining_args(argv)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING, format="%(levelname)s %(message)s")
    if args.train_data is None:
        print("spidr-hf pretrain: error: --train_data (a folder or manifest of audio) is required.", file=sys.stderr)
        return 2

    from transformers import set_seed

    set_seed(args.seed)  # the same weights on every rank, and for every run with this seed
    model = load_pretraining_model(args.model_config, args.config_overrides)
    trainer = SpidRPretrainer(model, args)
    resume = args.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume in _LAST_CHECKPOINT else resume)
    out = trainer.save_pretrained_model()
    if args.should_log:
        print(f"Wrote {out}: model.safetensors, config.json, preprocessor_config.json, README.md, remote code.")
    return 0
