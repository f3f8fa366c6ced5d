"""``spidr-hf evaluate``: unit quality (purity, PNMI, perplexity, bitrate) against phone alignments, and ABX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spidr_hf import evaluation as ev
from spidr_hf import unit_scores
from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float, positive_int
from spidr_hf.errors import UsageError
from spidr_hf.extract import load_model
from spidr_hf.runs import atomic_write_text, missing_reason, prepare_output_dir
from spidr_hf.sources import collect_inputs
from spidr_hf.unit_scores import AlignedCorpus
from spidr_hf.units import encoder_of

DESCRIPTION = "unit quality against phone alignments (purity, PNMI, perplexity, bitrate) and ABX"


EPILOG = """examples:
  spidr-hf evaluate --alignments corpus/alignments.jsonl --units units/units.jsonl --output-dir eval
  spidr-hf evaluate --alignments phoneme-dev-clean-and-other.jsonl.gz \\
      --units units-codebooks-spidr-l6-dev-clean-and-other.jsonl.gz --output-dir eval   (10 ms phones, 20 ms units)
  spidr-hf evaluate --alignments mfa_output/ --phone-tier phones --units units.jsonl --output-dir eval
  spidr-hf evaluate --model spidr-base --audio heldout/audio --alignments heldout/alignments.jsonl \\
      --layers 1-8 --fit-audio corpus/audio --output-dir sweep         (layer_sweep.json and .png)
"""


def _layer_list(text: str) -> list[int]:
    """argparse type: '6', '5,6,7' or '1-8' (ranges inclusive)."""
    layers: list[int] = []
    try:
        for part in text.replace(",", " ").split():
            first, _, last = part.partition("-")
            layers += range(int(first), int(last or first) + 1)
    except ValueError:
        layers = []
    if not layers or min(layers) < 1:
        raise argparse.ArgumentTypeError(f"must be 1-based layers such as '6', '5,6,7' or '1-8', got {text!r}")
    return list(dict.fromkeys(layers))


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="spidr-hf evaluate",
        description=DESCRIPTION
        + ". Writes OUTPUT_DIR/metrics.json, phone_unit_matrix.png and codebook_usage.png, and prints a table;"
        " with --model, a layer sweep: OUTPUT_DIR/layer_sweep.json and layer_sweep.png.",
        epilog=EPILOG,
    )
    units = parser.add_argument_group("unit metrics")
    units.add_argument(
        "--alignments",
        type=Path,
        help='phone alignments: JSON lines, plain or gzip-compressed ({"id" or "name", "phones": [label per '
        "frame]}), or a folder of Praat TextGrids (Montreal Forced Aligner)",
    )
    units.add_argument(
        "--units",
        type=Path,
        help='units: JSON lines, plain or gzip-compressed ({"id" or "name", "units": [int per frame], ...}; '
        "spidr-hf extract)",
    )
    units.add_argument(
        "--alignment-rate",
        type=positive_float,
        metavar="HZ",
        help=f"frames per second of --alignments: the units' {ev.FRAME_RATE:g} or a multiple of it, each unit "
        f"then counted against every phone frame it covers (default: inferred from the lengths; "
        f"{ev.TEXTGRID_RATE:g} for TextGrids)",
    )
    units.add_argument(
        "--phone-tier", default=ev.PHONE_TIER, help="the TextGrids' tier of phones (default: %(default)s)"
    )
    units.add_argument("--codebook-size", type=positive_int, help="number of codewords K (default: largest unit + 1)")
    units.add_argument(
        "--exclude-silence", action="store_true", help="drop SIL frames from the phone/unit statistics"
    )
    units.add_argument(
        "--phones",
        type=Path,
        help="phone order for the matrix plot (default: phones.txt beside (or in) --alignments, if any)",
    )
    sweep = parser.add_argument_group(
        "layer sweep: every layer's features + k-means and the codebook heads' units of a model, on "
        "--audio aligned by --alignments (all held in memory: minutes of audio, not hours)"
    )
    sweep.add_argument("--model", type=Path, help="a SpidR model folder (a pretraining one adds its head units)")
    sweep.add_argument(
        "--audio", type=Path, nargs="+", help="the aligned audio: files, folders, manifests (ids as --alignments')"
    )
    sweep.add_argument("--layers", type=_layer_list, help="1-based layers, e.g. '1-8' or '4,6' (default: all)")
    sweep.add_argument("--clusters", type=positive_int, help="k-means clusters K (default: the model's codebook size)")
    sweep.add_argument(
        "--fit-audio",
        type=Path,
        nargs="+",
        help="audio the k-means are fitted on, no alignments needed (default: --audio)",
    )
    abx = parser.add_argument_group("ABX (needs pip install spidr-hf[abx]; with --model, of each layer's features)")
    abx.add_argument("--abx-item", type=Path, help="item file, e.g. the synthetic corpus's phones.item")
    abx.add_argument(
        "--features", type=Path, help="features folder of spidr-hf extract (<id><extension> files)"
    )
    abx.add_argument(
        "--features-extension", default=".safetensors", help="feature file suffix (default: %(default)s)"
    )
    abx.add_argument("--feature-key", help="tensor name inside .safetensors files with several, e.g. layer6")
    abx.add_argument("--abx-distance", default="angular", help="fastabx distance (default: %(default)s)")
    abx.add_argument(
        "--device", help="torch device for ABX and --model (default: fastabx's choice; the model: CUDA if any)"
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where metrics.json and the plots go")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.model is not None:
        if args.audio is None or args.alignments is None:
            parser.error("--model needs --audio and --alignments (the layer sweep)")
        for flag in ("units", "features", "codebook_size", "exclude_silence"):
            if getattr(args, flag) not in (None, False):
                parser.error(f"--{flag.replace('_', '-')} is not for the layer sweep (--model): leave it out")
    else:
        for flag in ("audio", "layers", "clusters", "fit_audio"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} goes with --model (the layer sweep)")
        if (args.alignments is None) != (args.units is None):
            parser.error("--alignments and --units go together")
        if (args.abx_item is None) != (args.features is None):
            parser.error("--abx-item and --features go together")
        if args.alignments is None and args.abx_item is None:
            parser.error("nothing to do: give --alignments/--units, --abx-item/--features, or --model")
    for flag in ("alignments", "units", "abx_item", "features"):
        path = getattr(args, flag)
        if path is not None and not Path(path).exists():
            raise UsageError(f"--{flag.replace('_', '-')} {path} {missing_reason(path)}.")
    if args.alignment_rate is not None and (args.alignment_rate / ev.FRAME_RATE) % 1:
        raise UsageError(
            f"--alignment-rate {args.alignment_rate:g} is not an integer multiple of the units' "
            f"{ev.FRAME_RATE:g} frames per second: give {ev.FRAME_RATE:g}, {2 * ev.FRAME_RATE:g}, ..."
        )


def _phone_order(args: argparse.Namespace) -> list[str] | None:
    folder = args.alignments if args.alignments.is_dir() else args.alignments.parent
    path = args.phones or folder / "phones.txt"
    return ev.read_phone_inventory(path) if path.is_file() else None


def read_alignments(args: argparse.Namespace) -> tuple[dict[str, list[str]], int | None]:
    """--alignments, and their phone frames per unit frame where known before pairing (--alignment-rate,
    or the rate TextGrids are read at; None: to infer from the lengths)."""
    rate = args.alignment_rate or (ev.TEXTGRID_RATE if args.alignments.is_dir() else None)
    alignments = ev.read_alignments(args.alignments, tier=args.phone_tier, rate=rate or ev.TEXTGRID_RATE)
    return alignments, None if rate is None else round(rate / ev.FRAME_RATE)


def print_alignment_rate(args: argparse.Namespace, frames_per_unit: int) -> None:
    """Say at which rate --alignments were paired with the units, and why."""
    if args.alignment_rate:
        source = "--alignment-rate"
    elif args.alignments.is_dir():
        source = "TextGrids read at this rate; --alignment-rate changes it"
    else:
        source = "inferred from the lengths; --alignment-rate forces it"
    print(
        f"alignments at {frames_per_unit * ev.FRAME_RATE:g} Hz: {frames_per_unit} phone frame(s) per "
        f"{ev.FRAME_RATE:g} Hz unit frame ({source})"
    )


def unit_frames(args: argparse.Namespace) -> ev.FrameCounts:
    """Phone x unit counts of --units against --alignments (ids and lengths checked), at the alignments'
    rate (--alignment-rate, the TextGrids' reading rate, or inferred from the lengths), which it prints."""
    alignments, frames_per_unit = read_alignments(args)
    units = ev.read_units(args.units)
    frames_per_unit = frames_per_unit or ev.infer_frames_per_unit(alignments, units)
    print_alignment_rate(args, frames_per_unit)
    pairs = ev.pair_frames(alignments, units, frames_per_unit=frames_per_unit)
    return ev.count_frames(
        pairs,
        codebook_size=args.codebook_size,
        phones=_phone_order(args),
        exclude_silence=args.exclude_silence,
        frames_per_unit=frames_per_unit,
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
    if args.model is not None:
        return layer_sweep(args)
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
    atomic_write_text(args.output_dir / "metrics.json", json.dumps(ev.json_ready(metrics), indent=2) + "\n")
    print(ev.format_table(metrics))
    print(f"-> {args.output_dir / 'metrics.json'}")
    return 0


# --------------------------------------------------------------------------- layer sweep (--model)


def load_sweep_model(args: argparse.Namespace) -> torch.nn.Module:
    """The pretraining model (its heads give units), or the encoder alone where the folder has no heads."""
    try:
        return load_model(args.model, args.device, pretraining=True)
    except ValueError:  # an encoder-only folder: features + k-means only (a broken folder fails again below)
        return load_model(args.model, args.device)


def sweep_table(rows: list[dict]) -> str:
    """One line per layer: PNMI of features + k-means and of head units, ABX error rates where measured."""
    columns = {
        "k-means PNMI": lambda r: r["kmeans"]["pnmi"],
        "head PNMI": lambda r: (r["head"] or {}).get("pnmi"),
    }
    for mode in ("within", "across"):
        if f"abx_{mode}_speaker" in rows[0]:
            columns[f"ABX {mode}"] = lambda r, key=f"abx_{mode}_speaker": r[key]
    lines = ["layer  " + "  ".join(f"{name:>12}" for name in columns)]
    for row in rows:
        cells = [get(row) for get in columns.values()]
        shown = [f"{c:>12.4f}" if c is not None else f"{'-':>12}" for c in cells]
        lines.append(f"{row['layer']:>5}  " + "  ".join(shown))
    return "\n".join(lines)


def plot_sweep(rows: list[dict], path: Path) -> Path:
    """PNMI (and ABX error rates) against layer, in one plot."""
    series = {
        "features + k-means PNMI": [(r["layer"], r["kmeans"]["pnmi"]) for r in rows],
        "head units PNMI": [(r["layer"], r["head"]["pnmi"]) for r in rows if r["head"]],
    }
    for mode in ("within", "across"):
        key = f"abx_{mode}_speaker"
        series[f"ABX error, {mode} speaker"] = [(r["layer"], r[key]) for r in rows if key in r]
    series = {name: points for name, points in series.items() if points}
    ylabel = "PNMI (higher) / ABX error (lower)"
    return ev.plot_curves(series, path, title="unit quality by layer", ylabel=ylabel, xlabel="layer")


def layer_sweep(args: argparse.Namespace) -> int:
    """--model: every layer of --layers scored on --audio; layer_sweep.json and layer_sweep.png."""
    model = load_sweep_model(args)
    config = encoder_of(model).config
    layers = args.layers or list(range(1, config.num_hidden_layers + 1))
    if max(layers) > config.num_hidden_layers:
        raise UsageError(
            f"--layers {max(layers)}: the model in {args.model} has {config.num_hidden_layers} layers."
        )
    alignments, frames_per_unit = read_alignments(args)
    evaluate = AlignedCorpus.from_inputs(
        collect_inputs(args.audio), alignments, _phone_order(args), frames_per_unit
    )
    print_alignment_rate(args, evaluate.frames_per_unit)
    fit = evaluate if args.fit_audio is None else AlignedCorpus.from_inputs(collect_inputs(args.fit_audio))
    k = args.clusters or config.codebook_size
    abx_options = {"distance": args.abx_distance, "device": args.device}
    rows = unit_scores.layer_sweep(
        model, fit, evaluate, k, layers, abx_item=args.abx_item, abx_options=abx_options
    )
    prepare_output_dir(args.output_dir, "--output-dir")
    plot_sweep(rows, args.output_dir / "layer_sweep.png")
    layer_rows = [
        {**row, "kmeans": ev.json_ready(row["kmeans"]), "head": row["head"] and ev.json_ready(row["head"])}
        for row in rows
    ]
    result = {"model": str(args.model), "clusters": k, "num_utterances": len(evaluate.ids), "layers": layer_rows}
    atomic_write_text(args.output_dir / "layer_sweep.json", json.dumps(result, indent=2) + "\n")
    print(sweep_table(rows))
    print(f"-> {args.output_dir / 'layer_sweep.json'}, {args.output_dir / 'layer_sweep.png'}")
    return 0
