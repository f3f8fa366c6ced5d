"""Sub-commands of the ``spidr-hf`` CLI (see :mod:`spidr_hf.cli`)."""

from __future__ import annotations

import argparse


def model_and_audio_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A parser taking a model directory and audio inputs, as ``extract`` and ``fit-kmeans`` do."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", help="a SpidR model directory (transformers format)")
    parser.add_argument(
        "inputs",
        nargs="+",
        help="audio files, folders (recursive), .csv/.jsonl/.tsv manifests, saved datasets",
    )
    return parser
