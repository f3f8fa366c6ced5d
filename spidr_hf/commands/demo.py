"""`spidr-hf demo`: the main job of `make demo` (see spidr_hf.demo)."""

from __future__ import annotations

import logging

from spidr_hf.commands import CommandParser, apply_output_flags, command
from spidr_hf.demo import DemoSettings, run_demo

DESCRIPTION = "render synthetic speech, pretrain a tiny SpidR on it, and show that its units learnt phones"


def build_parser() -> CommandParser:
    defaults = DemoSettings()
    parser = CommandParser(prog="spidr-hf demo", description=DESCRIPTION)
    parser.add_argument("--output-dir", default=defaults.output_dir, help="where every output goes")
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="minutes of synthetic speech")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="pretraining steps")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--unit-layer", type=int, help="1-based layer whose head gives the units (default: first codebook layer)")
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check: 0.5 minutes, 4 steps")
    return parser


@command("demo")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.minutes, args.max_steps = 0.5, 4
    apply_output_flags(args, level=logging.WARNING)
    run_demo(
        DemoSettings(
            output_dir=args.output_dir,
            minutes=args.minutes,
            max_steps=args.max_steps,
            seed=args.seed,
            unit_layer=args.unit_layer,
        )
    )
    return 0
