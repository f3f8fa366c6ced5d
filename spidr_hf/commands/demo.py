"""`spidr-hf demo`: the main job of `make demo` (see spidr_hf.demo)."""

from __future__ import annotations

import dataclasses
import logging

from transformers.utils import logging as transformers_logging

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float, positive_int
from spidr_hf.demo import SCALES, DemoSettings, run_demo
from spidr_hf.espeak import EspeakError
from spidr_hf.runs import prepare_output_dir

DESCRIPTION = "pretrain a SpidR on synthetic speech and compare its units with log-mel / MFCC k-means on held-out speech"

SMOKE = {"minutes": 0.5, "heldout_minutes": 0.25, "max_steps": 4, "curve_every": 2, "kmeans_fit_minutes": 0.5,
         "lm_stage": "smoke"}
# the gpu scale's model on a CPU (bf16 autocast, as on the GPU) is slow: one 5 s crop per step, two steps
SMOKE_BY_SCALE = {"cpu": SMOKE, "gpu": {**SMOKE, "max_steps": 2, "batch_seconds": 5.0}}

# flag -> DemoSettings field; a flag left out keeps the scale's value
_FLAGS = ("minutes", "heldout_minutes", "max_steps", "curve_every", "seed", "device", "time_budget_s")


def build_parser() -> CommandParser:
    defaults = DemoSettings()
    gpu = SCALES["gpu"]
    parser = CommandParser(prog="spidr-hf demo", description=DESCRIPTION)
    parser.add_argument("--output-dir", default=defaults.output_dir, help="where every output goes")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                        help=f"cpu: the tiny SpidR on {defaults.minutes:g} min of speech (make demo); gpu: the "
                        f"{gpu['recipe']} recipe on {gpu['minutes'] / 60:g} h of speech for {gpu['time_budget_s']:g} s "
                        "(with --device cuda; 8 min on one H100)")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), help="where the model trains and is scored (default: cpu)")
    parser.add_argument("--minutes", type=positive_float, help=f"minutes of training speech (default: {defaults.minutes:g}; gpu: {gpu['minutes']:g})")
    parser.add_argument("--heldout-minutes", type=positive_float,
                        help="minutes of held-out speech (other sentences, two unseen voices) every row is scored on")  # fmt: skip
    parser.add_argument("--max-steps", type=positive_int, help="pretraining steps (default: the scale's recipe's)")
    parser.add_argument("--time-budget", dest="time_budget_s", type=positive_float,
                        help=f"seconds of pretraining, after which it stops (default: none; gpu: {gpu['time_budget_s']:g})")  # fmt: skip
    parser.add_argument("--curve-every", type=positive_int, help="steps between two learning-curve points")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-lm", action="store_true", help="skip the unit-LM stage (spidr_hf.lm.demo_stage)")
    parser.add_argument("--lm-layers", action="store_true",
                        help="an LM on every codebook layer's head units, not only the best (unit quality vs LM score; longer)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check of the scale's path: "
                        + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SMOKE.items()))  # fmt: skip
    return parser


@command("demo", user_errors=(EspeakError,))  # espeak-ng missing or failing
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    given = {name: getattr(args, name) for name in _FLAGS if getattr(args, name) is not None}
    settings = DemoSettings(**{**SCALES[args.scale], "output_dir": args.output_dir, **given})
    if args.smoke:
        settings = dataclasses.replace(settings, **SMOKE_BY_SCALE[args.scale])
    if args.no_lm or args.lm_layers:
        settings = dataclasses.replace(settings, lm_stage="off" if args.no_lm else "layers")
    apply_output_flags(args, level=logging.WARNING)
    transformers_logging.disable_progress_bar()  # its bars (writing the small models) would break the pretraining bar
    prepare_output_dir(settings.output_dir, "--output-dir", create=False)
    run_demo(settings)
    return 0
