"""``spidr-hf lm-score``: accuracy of a unit LM on minimal-pair benchmarks (sWUGGY, sBLIMP, story cloze)."""

from __future__ import annotations

import argparse

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_int

DESCRIPTION = "score a unit LM on ZeroSpeech lexical/syntactic and story-cloze pairs (audio -> units -> log-prob)"

EPILOG = """\
Every benchmark file of BENCH_DIR becomes units (UNITS_SOURCE: a SpidR model folder with --units/--layer
as spidr-hf extract takes them, a baseline kmeans_<features>_k<K>.safetensors of spidr-hf baseline, or a
units.jsonl whose ids are the files' paths relative to BENCH_DIR without extension), deduplicated, and
scored by the LM: the summed log-probability of its units and </s> (the mean per token is reported too).
A pair is right when its correct member scores higher (a tie counts 1/2); accuracy is the mean over ids
of the mean over their voices. BENCH_DIR is one benchmark folder or a root of several: ZeroSpeech 2021
folders (.wav files + gold.csv, e.g. lexical/dev, syntactic/dev) and story-cloze folders (correct/ and
incorrect/ with the same .wav names).

Writes OUTPUT_DIR/lm_scores.json (accuracies, per type), OUTPUT_DIR/<benchmark>.txt (ZeroSpeech
submission lines "filename score") and, for a model folder, the extracted units in OUTPUT_DIR/units/.

example:
  spidr-hf lm-score lm spidr-base zerospeech2021/ --units head --layer 6 --output-dir scores
  spidr-hf lm-score lm logmel/kmeans_logmel_k64.safetensors bench/ --output-dir scores_logmel
"""


def build_parser() -> argparse.ArgumentParser:
    from spidr_hf.lm.scoring import AGGREGATIONS

    parser = CommandParser(prog="spidr-hf lm-score", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("lm_dir", help="an LM folder of spidr-hf lm-train (with its unit tokenizer)")
    parser.add_argument("units_source", metavar="MODEL_DIR", help="a SpidR model folder, a baseline k-means .safetensors, or a units.jsonl")
    parser.add_argument("bench_dir", help="a benchmark folder, or a root holding several")
    parser.add_argument("--output-dir", required=True, help="where lm_scores.json and the score files go")
    parser.add_argument("--units", choices=["head", "codeword", "kmeans"], default="head", help="units of a model folder")
    parser.add_argument("--layer", type=int, help="1-based layer of a model folder's units (required for a model folder)")
    parser.add_argument("--kmeans", help="k-means file for --units kmeans (default: MODEL_DIR/kmeans_layer<L>_k*.safetensors)")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="sum", help="the item score in the .txt files and the table")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sequences per LM forward pass")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu)")
    return parser


@command("lm-score")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    from spidr_hf.lm.evaluate import LMScoreOptions, score_lm, scores_table

    options = LMScoreOptions(output_dir=args.output_dir, units=args.units, layer=args.layer, kmeans=args.kmeans,
                             aggregation=args.aggregation, batch_size=args.batch_size, device=args.device,
                             progress=not args.quiet)  # fmt: skip
    results = score_lm(args.lm_dir, args.units_source, args.bench_dir, options)
    print(scores_table(results))
    print(f"-> {args.output_dir}/lm_scores.json")
    return 0
