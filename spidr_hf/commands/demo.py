"""`spidr-hf demo`: the main job of `make demo` (see spidr_hf.demo)."""

from __future__ import annotations

import logging

from spidr_hf.commands import CommandParser, apply_output_flags, command
from spidr_hf.demo import DemoSettings, run_demo
from spidr_hf.errors import UsageError

DESCRIPTION = "pretrain a tiny SpidR on synthetic speech and compare its units with log-mel / MFCC k-means on held-out speech"

SMOKE = {"minutes": 0.5, "heldout_minutes": 0.25, "max_steps": 4, "curve_every": 2, "kmeans_fit_minutes": 0.5}


def build_parser() -> CommandParser:
    defaults = DemoSettings()
    parser = CommandParser(prog="spidr-hf demo", description=DESCRIPTION)
    parser.add_argument("--output-dir", default=defaults.output_dir, help="where every output goes")
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="minutes of training speech")
    parser.add_argument("--heldout-minutes", type=float, default=defaults.heldout_minutes,
                        help="minutes of held-out speech (other sentences, two unseen voices) every row is scored on")  # fmt: skip
    parser.add_argument("--max-steps", type=int, help="pretraining steps (default: the tiny_cpu recipe's)")
    parser.add_argument("--curve-every", type=int, default=defaults.curve_every, help="steps between two learning-curve points")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check: "
                        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SMOKE.items()))  # fmt: skip
    return parser


@command("demo", user_errors=(ValueError,))
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
        settings = DemoSettings(**{**vars(settings), **SMOKE})
    for name in ("minutes", "heldout_minutes", "curve_every"):
        if getattr(settings, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(settings, name)}.")
    if settings.max_steps is not None and settings.max_steps <= 0:
        raise UsageError(f"--max-steps must be positive, got {settings.max_steps}.")
    apply_output_flags(args, level=logging.WARNING)
    run_demo(settings)
    return 0
