"""`spidr-hf convert`: reference checkpoint -> transformers directory."""

from __future__ import annotations

import argparse
import logging

DESCRIPTION = "convert a reference SpidR/DinoSR checkpoint (.pt) into a transformers directory"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="spidr-hf convert", description=DESCRIPTION)
    parser.add_argument("src", help="reference checkpoint (.pt): a state dict, {'model': ...}, a training or DDP checkpoint")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--config", help="the reference config.json (default: config.json next to SRC, if any)")
    parser.add_argument("--model-type", choices=["spidr", "dinosr"], default="spidr", help="which recipe trained it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from spidr_hf.convert import CheckpointError, convert_checkpoint

    try:
        out = convert_checkpoint(args.src, args.out, config_path=args.config, model_type=args.model_type)
    except (CheckpointError, FileNotFoundError) as err:
        parser.exit(2, f"spidr-hf convert: error: {err}\n")
    print(f"Wrote {out} (config.json, model.safetensors, preprocessor_config.json, README.md, remote code).")
    return 0
