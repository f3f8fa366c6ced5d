"""``spidr-hf baseline``: log-mel or MFCC k-means units, the classical units SpidR's are compared with."""

from __future__ import annotations

import argparse
from pathlib import Path

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_int
from spidr_hf.errors import UsageError
from spidr_hf.evaluation import write_units
from spidr_hf.runs import prepare_output_dir

DESCRIPTION = "log-mel / MFCC k-means units of audio (the classical baseline for unit quality)"

EPILOG = """\
Features are computed with torchaudio on SpidR's 20 ms frame grid (25 ms windows) and normalised
per utterance; k-means (--clusters) is fitted on the frames of --fit (default: the inputs
themselves) and every input gets one unit per frame in OUTPUT_DIR/units.jsonl, with the ids
`spidr-hf extract` gives, so `spidr-hf evaluate` scores both the same way. The centroids go to
OUTPUT_DIR/kmeans_<features>_k<K>.safetensors.

example (fit on the training corpus, score on held-out speech):
  spidr-hf baseline heldout/manifest.tsv --fit corpus/manifest.tsv --features logmel --clusters 64 --output-dir logmel
  spidr-hf evaluate --alignments heldout/alignments.jsonl --units logmel/units.jsonl --output-dir logmel/eval
"""


def build_parser() -> argparse.ArgumentParser:
    from spidr_hf.baselines import FEATURES

    parser = CommandParser(prog="spidr-hf baseline", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("inputs", nargs="+", help="audio files, folders (recursive), .csv/.jsonl/.tsv manifests, saved datasets")
    parser.add_argument("--features", choices=FEATURES, default="logmel", help="log-mel (40 bands) or MFCC (13 + deltas)")
    parser.add_argument("--clusters", type=positive_int, required=True, help="k, the number of units")
    parser.add_argument("--fit", nargs="+", help="audio to fit k-means on (default: the inputs)")
    parser.add_argument("--output-dir", type=Path, required=True, help="where units.jsonl and the centroids go")
    parser.add_argument("--seed", type=int, default=0, help="seeds k-means++")
    parser.add_argument("--audio-column", default="audio", help="audio column of saved datasets")
    return parser


def _decode_all(inputs: list[str], audio_column: str) -> list[tuple[str, object]]:
    from spidr_hf.sources import collect_inputs

    collected = collect_inputs(inputs, audio_column)
    collected.warn_unreadable()
    if not collected.items:
        raise UsageError(f"no audio found in {' '.join(inputs)}.")
    return [(item.id, collected.decode(item)) for item in collected.items]


@command("baseline")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    prepare_output_dir(args.output_dir, "--output-dir", create=False)
    from spidr_hf.baselines import BaselineQuantizer

    inputs = _decode_all(args.inputs, args.audio_column)
    fit = inputs if args.fit is None else _decode_all(args.fit, args.audio_column)
    quantizer = BaselineQuantizer.fit([wave for _, wave in fit], args.features, args.clusters, seed=args.seed)
    units = [quantizer(wave) for _, wave in inputs]
    # everything is computed before anything is written: a failed run leaves no partial output
    args.output_dir.mkdir(parents=True, exist_ok=True)
    quantizer.save(args.output_dir)
    write_units(args.output_dir / "units.jsonl", [utt_id for utt_id, _ in inputs], units)
    print(f"{args.features} k-means, k={quantizer.k}: fitted on {len(fit)} file(s), units of {len(inputs)} "
          f"file(s) -> {args.output_dir / 'units.jsonl'}")  # fmt: skip
    return 0
