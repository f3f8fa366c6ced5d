"""`spidr-hf extract`: features or units of audio files, folders, manifests or saved datasets."""

from __future__ import annotations

import argparse
import os

from spidr_hf.commands import (
    apply_output_flags,
    command,
    model_and_audio_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from spidr_hf.errors import UsageError
from spidr_hf.extract import ExtractionOptions, extract

DESCRIPTION = "extract features or discrete units of audio files with a SpidR model"

EPILOG = """\
examples:
  spidr-hf extract MODEL audio/ --output-dir feats --layers 6 --representation before_residual --store-dtype fp16
  spidr-hf extract MODEL train.tsv --output-dir units --units head --layer 6
  spidr-hf extract MODEL ds/ --output-dir units --units kmeans --layer 6      (MODEL/kmeans_layer6_k*.safetensors)
  accelerate launch --num_processes 8 -m spidr_hf.cli extract MODEL audio/ --output-dir feats
      (each process takes shard RANK/WORLD_SIZE on cuda:LOCAL_RANK; units go to units.<i>-of-<n>.jsonl)

Reruns skip files already done. Files longer than --max-whole-s are processed in windows of
--window-s seconds with --context-s seconds of context on each side (see spidr_hf.extract).
"""


def _layers(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from err
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    parser = model_and_audio_parser("spidr-hf extract", DESCRIPTION, EPILOG)
    parser.add_argument("--output-dir", required=True, help="where outputs go (created)")

    what = parser.add_argument_group("features (the default)")
    what.add_argument(
        "--layers", type=_layers, help="1-based layers, e.g. '6' or '5,6,7' (default: the last)"
    )
    what.add_argument("--representation", choices=["hidden_state", "before_residual"], default="hidden_state",
                      help="post-LayerNorm layer output, or the FFN output before the residual (the paper's)")  # fmt: skip
    what.add_argument("--format", dest="output_format", choices=["safetensors", "npy"], default="safetensors")
    what.add_argument("--store-dtype", choices=["fp32", "fp16"], default="fp32", help="dtype of the stored features")
    what.add_argument("--fp16", dest="store_dtype", action="store_const", const="fp16", help="--store-dtype fp16")

    units = parser.add_argument_group("units (one JSON line per file in OUT/units.jsonl)")
    units.add_argument(
        "--units", choices=["head", "codeword", "kmeans"], help="extract units instead of features"
    )
    units.add_argument(
        "--layer", type=int, help="1-based layer of the units (a codebook layer for head/codeword)"
    )
    units.add_argument("--kmeans", help="k-means file (default: MODEL_DIR/kmeans_layer<L>_k*.safetensors)")

    run = parser.add_argument_group("running")
    run.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    run.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="model compute dtype")
    run.add_argument("--max-batch-samples", type=positive_int,
                     help="padded samples per batch, batch size x longest (default: 3.2M on a GPU, 1 file on a CPU)")  # fmt: skip
    run.add_argument("--max-whole-s", type=positive_float, default=60.0, help="longer files are processed in windows")
    run.add_argument("--window-s", type=positive_float, default=20.0, help="kept (core) seconds per window")
    run.add_argument("--context-s", type=non_negative_float, default=5.0, help="context seconds on each side of a window")
    run.add_argument("--num-workers", type=non_negative_int,
                     help="decoding processes (default: the cores torch leaves free, at most 4; 0 on a CPU run)")  # fmt: skip
    run.add_argument(
        "--shard", type=_shard, help="process shard i of n (default: RANK/WORLD_SIZE when launched)"
    )
    run.add_argument("--audio-column", default="audio", help="audio column of saved datasets")
    run.add_argument("--strict", action="store_true", help="stop at the first bad file")
    return parser


def _launcher_shard_and_device(args: argparse.Namespace) -> tuple[tuple[int, int], str | None]:
    """Shard and device from accelerate/torchrun's environment when the command line gives none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    shard = args.shard or (int(os.environ.get("RANK", "0")), world)
    device = args.device
    if device is None and world > 1 and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return shard, device


@command("extract")
def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.units and args.layers:
        parser.error("--layers selects feature layers; with --units give --layer")
    if args.units in ("head", "codeword") and args.layer is None:
        parser.error(f"--units {args.units} needs --layer (a codebook layer)")
    apply_output_flags(args)
    shard, device = _launcher_shard_and_device(args)
    options = ExtractionOptions(
        output_dir=args.output_dir,
        layers=args.layers,
        representation=args.representation,
        units=args.units,
        unit_layer=args.layer,
        kmeans=args.kmeans,
        output_format=args.output_format,
        store_dtype=args.store_dtype,
        device=device,
        dtype=args.dtype,
        max_batch_samples=args.max_batch_samples,
        max_whole_seconds=args.max_whole_s,
        window_seconds=args.window_s,
        context_seconds=args.context_s,
        num_workers=args.num_workers,
        shard=shard,
        strict=args.strict,
        progress=not args.quiet,
        audio_column=args.audio_column,
    )
    try:
        report = extract(args.model_dir, args.inputs, options)
    except RuntimeError as err:  # --strict stops at the first failure
        raise UsageError(str(err)) from err
    print(report.summary())
    if report.all_failed:
        raise UsageError(f"no input could be processed: all {len(report.failed)} failed (see above).")
    return 0
