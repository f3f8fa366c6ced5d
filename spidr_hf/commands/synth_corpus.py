"""``spidr-hf synth-corpus OUT --minutes M``: render a phone-aligned synthetic speech corpus with espeak-ng."""

from __future__ import annotations

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float
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
    parser.add_argument("--minutes", type=positive_float, required=True, help="minutes of audio to render (at least)")
    parser.add_argument("--seed", type=int, default=0, help="seed of texts and speaking rates (default: 0)")
    parser.add_argument(
        "--voices",
        nargs="+",
        default=list(DEFAULT_VOICES),
        metavar="VOICE",
        help="espeak-ng voices, one speaker each, e.g. en-us+f2 (default: %(default)s; list: espeak-ng --voices=en)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in OUT")
    return parser


@command("synth-corpus", user_errors=(EspeakError,))  # espeak-ng missing or failing
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
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
