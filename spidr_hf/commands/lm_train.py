"""``spidr-hf lm-train``: a causal LM (transformers ``Trainer``) on deduplicated units."""

from __future__ import annotations

import argparse

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float, positive_int

DESCRIPTION = "train a unit language model (transformers causal LM) on units.jsonl files"

EPILOG = """\
Units (spidr-hf extract --units, spidr-hf baseline) are deduplicated, written <s> u1 u2 ... </s> with a
WordLevel tokenizer over the unit numbers (saved beside the LM: AutoTokenizer.from_pretrained loads it),
and packed into blocks of --block-size tokens. Checkpoints go to OUTPUT_DIR/checkpoint-<step>; the LM,
its tokenizer and lm_training.json to OUTPUT_DIR at the end.

example:
  spidr-hf extract spidr-base train/ --output-dir units --units head --layer 6
  spidr-hf lm-train units/units.jsonl --output-dir lm --preset base --max-steps 20000
  spidr-hf lm-score lm spidr-base zerospeech2021/ --units head --layer 6 --output-dir scores
"""


def build_parser() -> argparse.ArgumentParser:
    from spidr_hf.lm.model import PRESETS

    parser = CommandParser(prog="spidr-hf lm-train", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("units", nargs="+", help="units.jsonl files (ids unique across them)")
    parser.add_argument("--output-dir", required=True, help="where the LM, its tokenizer and checkpoints go")
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny", help="LM size: tiny (CPU) or base (~100M, GPU)")
    parser.add_argument("--num-units", type=positive_int, help="K, the units' vocabulary (default: the largest unit + 1)")
    parser.add_argument("--max-steps", type=positive_int, default=1000, help="optimizer steps")
    parser.add_argument("--block-size", type=positive_int, default=128, help="tokens per packed training sequence")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="blocks per step (per device)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--save-steps", type=positive_int, default=500, help="steps between two checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu"], help="cpu forces the CPU (default: the Trainer's choice)")
    parser.add_argument("--resume-from-checkpoint", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="resume from CHECKPOINT, or without a value from the last one in --output-dir")  # fmt: skip
    return parser


@command("lm-train", user_errors=(ImportError,))  # datasets not installed
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    from spidr_hf.lm.data import require_datasets
    from spidr_hf.lm.train import LMTrainingOptions, train_lm

    require_datasets()
    options = LMTrainingOptions(
        output_dir=args.output_dir, preset=args.preset, num_units=args.num_units, max_steps=args.max_steps,
        block_size=args.block_size, batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, save_steps=args.save_steps, seed=args.seed, device=args.device,
        resume_from_checkpoint=args.resume_from_checkpoint, progress=not args.quiet,
    )  # fmt: skip
    record = train_lm(args.units, options)
    print(f"{args.preset} LM, K={record['num_units']}: {record['sequences']} sequences, {record['tokens']} tokens, "
          f"{record['steps']} steps, last logged loss {record['final_loss']:.4g} -> {args.output_dir}")  # fmt: skip
    return 0
