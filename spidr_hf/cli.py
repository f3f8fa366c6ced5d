"""The ``spidr-hf`` command line: one sub-command per module in :mod:`spidr_hf.commands`.

Each sub-command module owns its own argument parser (a ``CommandParser``, or transformers'
``HfArgumentParser`` for ``pretrain``) and exposes ``DESCRIPTION`` and ``main(argv)``, so the
parsers stay next to the code they drive and this dispatcher stays a table. The conventions they
share (kebab-case flags, ``--quiet``, ``--debug``, one error path) live in :mod:`spidr_hf.commands`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module under spidr_hf.commands
COMMANDS: dict[str, str] = {
    "convert": "convert",
    "pretrain": "pretrain",
    "extract": "extract",
    "fit-kmeans": "fit_kmeans",
    "baseline": "baseline",
    "evaluate": "evaluate",
    "synth-corpus": "synth_corpus",
    "probe-phones": "probe_phones",
    "finetune-ctc": "finetune_ctc",
    "transcribe": "transcribe",
    "demo": "demo",
    "lm-train": "lm_train",
    "lm-score": "lm_score",
}


def load_command(name: str):
    """The module of sub-command ``name`` (``DESCRIPTION``, ``main(argv)``, and for most ``build_parser()``)."""
    return importlib.import_module(f"spidr_hf.commands.{COMMANDS[name]}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="spidr-hf",
        description="SpidR speech models for transformers.",
        epilog="Run 'spidr-hf COMMAND --help' for the options of a command.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS), help="what to do")
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        print("\ncommands:")
        for name in sorted(COMMANDS):
            print(f"  {name:<14} {load_command(name).DESCRIPTION}")
        return 0
    args = parser.parse_args(argv[:1])
    return int(load_command(args.command).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
