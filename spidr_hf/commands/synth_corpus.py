"""``spidr-hf synth-corpus OUT --minutes M``: render a phone-aligned synthetic speech corpus with espeak-ng."""

from __future__ import annotations

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float, positive_int
from spidr_hf.lm.synthetic_benchmark import BENCHMARK_VOICES, synthesize_benchmark
from spidr_hf.synth import DEFAULT_VOICES, EspeakError, synthesize_corpus

DESCRIPTION = "render a phone-aligned synthetic speech corpus with espeak-ng"


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="spidr-hf synth-corpus",
        description=DESCRIPTION
        + ". Writes OUT/audio/<speaker>/<utt>.wav (16 kHz), manifest.tsv, manifest.jsonl, alignments.jsonl "
        "(one phone per 20 ms encoder frame), phones.txt, phones.item, stats.json and README.md.",
    )
    parser.add_argument("out", help="output directory")
    parser.add_argument("--minutes", type=positive_float, help="minutes of audio to render (at least); required without --benchmark")
    parser.add_argument("--seed", type=int, default=0, help="seed of texts and speaking rates (default: 0)")
    parser.add_argument(
        "--voices",
        nargs="+",
        metavar="VOICE",
        help=f"espeak-ng voices, one speaker each, e.g. en-us+f2 (default: {' '.join(DEFAULT_VOICES)}; with --benchmark "
        f"{' '.join(BENCHMARK_VOICES)}; list: espeak-ng --voices=en)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in OUT")
    benchmark = parser.add_argument_group("benchmark (instead of a corpus)")
    benchmark.add_argument("--benchmark", action="store_true", help="render a lexical and syntactic minimal-pair benchmark in "
                           "the ZeroSpeech 2021 layout (OUT/lexical/dev, OUT/syntactic/dev: .wav + gold.csv) for spidr-hf lm-score")  # fmt: skip
    benchmark.add_argument("--words", type=positive_int, default=100, help="lexicon words, each against a pseudo-word")
    benchmark.add_argument("--sentences", type=positive_int, default=100, help="sentences, each against a violation")
    return parser


@command("synth-corpus", user_errors=(EspeakError,))  # espeak-ng missing or failing
def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_output_flags(args)
    if args.benchmark:
        record = synthesize_benchmark(args.out, args.words, args.sentences, seed=args.seed, voices=args.voices or BENCHMARK_VOICES,
                                      overwrite=args.overwrite, progress=not args.quiet)  # fmt: skip
        print(f"{record['lexical_pairs']} lexical and {record['syntactic_pairs']} syntactic pairs -> {args.out}")
        return 0
    if args.minutes is None:
        parser.error("--minutes is required (or --benchmark)")
    info = synthesize_corpus(
        args.out,
        args.minutes,
        seed=args.seed,
        voices=args.voices,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(
        f"{len(info.utterances)} utterances, {info.minutes:.2f} min, {len(info.speakers)} speakers, "
        f"{len(info.phones)} phones -> {info.root}"
    )
    return 0
