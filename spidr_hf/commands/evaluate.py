"""``spidr-hf evaluate``: unit quality (purity, PNMI, perplexity, bitrate) against phone alignments, and ABX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spidr_hf import evaluation as ev
from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_int
from spidr_hf.errors import UsageError
from spidr_hf.runs import missing_reason, prepare_output_dir

DESCRIPTION = "unit quality against phone alignments (purity, PNMI, perplexity, bitrate) and ABX"


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="spidr-hf evaluate",
        description=DESCRIPTION
        + ". Writes OUTPUT_DIR/metrics.json, phone_unit_matrix.png and codebook_usage.png, and prints a table.",
    )
    units = parser.add_argument_group("unit metrics")
    units.add_argument(
        "--alignments", type=Path, help='alignments.jsonl: {"id", "phones": [label per 20 ms frame]}'
    )
    units.add_argument(
        "--units", type=Path, help='units.jsonl: {"id", "units": [int per frame], ...} (spidr-hf extract)'
    )
    units.add_argument("--codebook-size", type=positive_int, help="number of codewords K (default: largest unit + 1)")
    units.add_argument(
        "--exclude-silence", action="store_true", help="drop SIL frames from the phone/unit statistics"
    )
    units.add_argument(
        "--phones",
        type=Path,
        help="phone order for the matrix plot (default: phones.txt beside --alignments, if any)",
    )
    abx = parser.add_argument_group("ABX (needs pip install spidr-hf[abx])")
    abx.add_argument("--abx-item", type=Path, help="item file, e.g. the synthetic corpus's phones.item")
    abx.add_argument(
        "--features", type=Path, help="features folder of spidr-hf extract (<id><extension> files)"
    )
    abx.add_argument(
        "--features-extension", default=".safetensors", help="feature file suffix (default: %(default)s)"
    )
    abx.add_argument("--feature-key", help="tensor name inside .safetensors files with several, e.g. layer6")
    abx.add_argument("--abx-distance", default="angular", help="fastabx distance (default: %(default)s)")
    abx.add_argument("--device", help="torch device for ABX (default: fastabx's choice)")
    parser.add_argument("--output-dir", type=Path, required=True, help="where metrics.json and the plots go")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.alignments is None) != (args.units is None):
        parser.error("--alignments and --units go together")
    if (args.abx_item is None) != (args.features is None):
        parser.error("--abx-item and --features go together")
    if args.alignments is None and args.abx_item is None:
        parser.error("nothing to do: give --alignments/--units and/or --abx-item/--features")
    for flag in ("alignments", "units", "abx_item", "features"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            raise UsageError(f"--{flag.replace('_', '-')} {path} {missing_reason(path)}.")


def _phone_order(args: argparse.Namespace) -> list[str] | None:
    path = args.phones or args.alignments.parent / "phones.txt"
    return ev.read_phone_inventory(path) if path.is_file() else None


def unit_frames(args: argparse.Namespace) -> ev.FrameCounts:
    """Phone x unit counts of --units against --alignments (ids and lengths checked)."""
    pairs = ev.pair_frames(ev.read_alignments(args.alignments), ev.read_units(args.units))
    return ev.count_frames(
        pairs,
        codebook_size=args.codebook_size,
        phones=_phone_order(args),
        exclude_silence=args.exclude_silence,
    )


def write_unit_plots(frames: ev.FrameCounts, output_dir: Path) -> None:
    """The phone x unit matrix and the codebook usage of `frames`, in `output_dir`."""
    # rows never seen (inventory entries absent here) would only add empty lines to the plot
    seen = frames.counts.sum(axis=1) > 0
    ev.plot_phone_unit_matrix(
        frames.counts[seen],
        [p for p, s in zip(frames.phones, seen, strict=True) if s],
        output_dir / "phone_unit_matrix.png",
    )
    ev.plot_codebook_usage(frames.unit_counts, output_dir / "codebook_usage.png")


@command("evaluate", user_errors=(ImportError,))  # ABX without fastabx installed
def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    apply_output_flags(args)
    prepare_output_dir(args.output_dir, "--output-dir", create=False)
    metrics: dict = {}
    # every input is read and checked before the output folder is touched: a mistake leaves nothing behind
    frames = unit_frames(args) if args.alignments is not None else None
    if frames is not None:
        metrics.update(ev.metrics_from_counts(frames))
    if args.abx_item is not None:
        metrics.update(
            ev.abx_error_rates(
                args.abx_item,
                args.features,
                extension=args.features_extension,
                feature_key=args.feature_key,
                distance=args.abx_distance,
                device=args.device,
            )
        )
    prepare_output_dir(args.output_dir, "--output-dir")
    if frames is not None:
        write_unit_plots(frames, args.output_dir)
    (args.output_dir / "metrics.json").write_text(json.dumps(ev.json_ready(metrics), indent=2) + "\n")
    print(ev.format_table(metrics))
    print(f"-> {args.output_dir / 'metrics.json'}")
    return 0
