"""`spidr-hf convert`: reference checkpoint -> transformers directory."""

from __future__ import annotations

from spidr_hf.commands import CommandParser, apply_output_flags, command
from spidr_hf.convert import convert_checkpoint

DESCRIPTION = "convert a reference SpidR/DinoSR checkpoint (.pt) into a transformers directory"


def build_parser() -> CommandParser:
    parser = CommandParser(prog="spidr-hf convert", description=DESCRIPTION)
    parser.add_argument("src", help="reference checkpoint (.pt): a state dict, {'model': ...}, a training or DDP checkpoint")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--config", help="the reference config.json (default: config.json next to SRC, if any)")
    parser.add_argument("--model-type", choices=["spidr", "dinosr"], default="spidr", help="which recipe trained it")
    return parser


@command("convert")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    out = convert_checkpoint(args.src, args.out, config_path=args.config, model_type=args.model_type)
    print(f"Wrote {out} (config.json, model.safetensors, preprocessor_config.json, README.md, remote code).")
    return 0
