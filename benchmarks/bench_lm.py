"""Benchmark the unit LM: training tokens per second (the transformers ``Trainer`` on packed blocks) and
scoring items per second (summed log-probabilities of benchmark-length unit sequences).

Random units of K clusters (deduplicated sequences of ``--item-units`` units, the length of a spoken word or
short sentence in 50 Hz units after deduplication) train the ``--preset`` LM for ``--steps`` optimizer steps
(after ``--warmup`` untimed ones), then ``--items`` sequences are scored in batches of ``--batch-size``.

Usage: ``python benchmarks/bench_lm.py`` (CPU, tiny preset); ``--device cuda --preset base`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import torch
from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

from spidr_hf.lm.data import packed_dataset
from spidr_hf.lm.model import PRESETS, build_lm
from spidr_hf.lm.scoring import score_items
from spidr_hf.lm.tokenizer import build_unit_tokenizer, encode_units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clusters", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--item-units", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    set_seed(0)
    rng = random.Random(0)
    tokenizer = build_unit_tokenizer(args.clusters)
    sequences = [[rng.randrange(args.clusters) for _ in range(args.item_units)] for _ in range(args.items)]
    blocks_needed = (args.steps + args.warmup) * args.train_batch_size
    stream = [encode_units(tokenizer, sequences[i % len(sequences)]) for i in range(blocks_needed * args.block_size // args.item_units + 1)]
    dataset = packed_dataset(stream, args.block_size, tokenizer.pad_token_id)
    model = build_lm(args.preset, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=model, train_dataset=dataset, data_collator=default_data_collator, args=TrainingArguments(
            output_dir=tmp, max_steps=args.warmup, per_device_train_batch_size=args.train_batch_size, report_to="none",
            save_strategy="no", disable_tqdm=True, use_cpu=args.device == "cpu", logging_strategy="no",
            dataloader_pin_memory=args.device != "cpu"))  # fmt: skip
        trainer.train()  # warm-up: allocations, kernels
        trainer.args.max_steps = args.warmup + args.steps
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=None)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    tokens_per_s = (args.warmup + args.steps) * args.train_batch_size * args.block_size / seconds
    model = trainer.model.to(args.device)
    units = {str(i): s for i, s in enumerate(sequences)}
    score_items(model, tokenizer, dict(list(units.items())[: args.batch_size]), "warm-up", args.batch_size)
    start = time.perf_counter()
    score_items(model, tokenizer, units, "bench", args.batch_size)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    items_per_s = len(units) / (time.perf_counter() - start)
    parameters = sum(p.numel() for p in model.parameters())
    print(json.dumps({"preset": args.preset, "parameters": parameters, "device": args.device, "threads": torch.get_num_threads(),
                      "training_tokens_per_s": round(tokens_per_s), "scoring_items_per_s": round(items_per_s, 1),
                      "block_size": args.block_size, "train_batch_size": args.train_batch_size, "item_units": args.item_units}))  # fmt: skip


if __name__ == "__main__":
    main()
