"""`spidr-hf demo`: the main job of `make demo` (see spidr_hf.demo)."""

from __future__ import annotations

import dataclasses
import logging

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float, positive_int
from spidr_hf.demo import DemoSettings, run_demo
from spidr_hf.runs import prepare_output_dir

DESCRIPTION = "pretrain a tiny SpidR on synthetic speech and compare its units with log-mel / MFCC k-means on held-out speech"

SMOKE = {"minutes": 0.5, "heldout_minutes": 0.25, "max_steps": 4, "curve_every": 2, "kmeans_fit_minutes": 0.5,
         "lm_stage": "smoke"}


def build_parser() -> CommandParser:
    defaults = DemoSettings()
    parser = CommandParser(prog="spidr-hf demo", description=DESCRIPTION)
    parser.add_argument("--output-dir", default=defaults.output_dir, help="where every output goes")
    parser.add_argument("--minutes", type=positive_float, default=defaults.minutes, help="minutes of training speech")
    parser.add_argument("--heldout-minutes", type=positive_float, default=defaults.heldout_minutes,
                        help="minutes of held-out speech (other sentences, two unseen voices) every row is scored on")  # fmt: skip
    parser.add_argument("--max-steps", type=positive_int, help="pretraining steps (default: the tiny_cpu recipe's)")
    parser.add_argument("--curve-every", type=positive_int, default=defaults.curve_every, help="steps between two learning-curve points")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-lm", action="store_true", help="skip the unit-LM stage (spidr_hf.lm.demo_stage)")
    parser.add_argument("--lm-layers", action="store_true",
                        help="an LM on every codebook layer's head units, not only the best (unit quality vs LM score; longer)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check: "
                        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SMOKE.items()))  # fmt: skip
    return parser


@command("demo")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = DemoSettings(
        output_dir=args.output_dir,
        minutes=args.minutes,
        heldout_minutes=args.heldout_minutes,
        max_steps=args.max_steps,
        curve_every=args.curve_every,
        seed=args.seed,
    )
    if args.smoke:
        settings = dataclasses.replace(settings, **SMOKE)
    if args.no_lm or args.lm_layers:
        settings = dataclasses.replace(settings, lm_stage="off" if args.no_lm else "layers")
    apply_output_flags(args, level=logging.WARNING)
    prepare_output_dir(settings.output_dir, "--output-dir", create=False)
    run_demo(settings)
    return 0
