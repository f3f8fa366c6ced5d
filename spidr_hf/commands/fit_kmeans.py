"""``spidr-hf fit-kmeans``: k-means on one layer's features, saved in the model directory for ``extract --units kmeans``."""

from __future__ import annotations

import argparse

from spidr_hf.commands import apply_output_flags, command, model_and_audio_parser, positive_int
from spidr_hf.errors import UsageError
from spidr_hf.extract import load_model, sample_frames
from spidr_hf.model_dir import check_model_source
from spidr_hf.runs import prepare_output_dir
from spidr_hf.sources import collect_inputs
from spidr_hf.units import KMeansQuantizer

DESCRIPTION = "fit k-means units on one layer's features and save them with the model"

EPILOG = """\
Frames are sampled from whole files in a seeded random order until --max-frames (computed as
spidr-hf extract computes them, long files in windows), then clustered with k-means++ and
Lloyd iterations in torch on --device (spidr_hf.units.fit_kmeans). The centroids go to
MODEL_DIR/kmeans_layer<L>_k<K>.safetensors (or --output-dir), where
`spidr-hf extract MODEL_DIR ... --units kmeans --layer L` finds them.

example:
  spidr-hf fit-kmeans spidr-base train/ --layer 6 --clusters 500
  spidr-hf extract spidr-base test/ --output-dir units --units kmeans --layer 6
"""


def build_parser() -> argparse.ArgumentParser:
    parser = model_and_audio_parser("spidr-hf fit-kmeans", DESCRIPTION, EPILOG)
    parser.add_argument(
        "--layer", type=int, required=True, help="1-based encoder layer (the paper's best: 6)"
    )
    parser.add_argument("--clusters", type=positive_int, required=True, help="k, the number of units")
    parser.add_argument("--representation", choices=["before_residual", "hidden_state"], default="before_residual",
                        help="the FFN output before the residual (the paper's), or the post-LayerNorm output")  # fmt: skip
    parser.add_argument(
        "--max-frames", type=positive_int, default=200_000, help="frames sampled to fit on (50 per second)"
    )
    parser.add_argument("--max-iter", type=positive_int, default=100, help="most Lloyd iterations")
    parser.add_argument("--seed", type=int, default=0, help="seeds the file order and k-means++")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu)")
    parser.add_argument("--output-dir", help="where the k-means file goes (default: MODEL_DIR)")
    parser.add_argument("--audio-column", default="audio", help="audio column of saved datasets")
    return parser


@command("fit-kmeans")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    check_model_source(args.model_dir)  # before walking the inputs, which can take long
    out = prepare_output_dir(args.output_dir or args.model_dir, "--output-dir", create=False)
    inputs = collect_inputs(args.inputs, args.audio_column)
    inputs.warn_unreadable()
    if not inputs.items:
        raise UsageError(f"no audio file in {', '.join(args.inputs)}.")
    model = load_model(args.model_dir, args.device)
    frames = sample_frames(model, inputs, args.layer, args.representation, max_frames=args.max_frames, seed=args.seed)
    quantizer = KMeansQuantizer.fit(frames.to(model.device), args.clusters, args.layer, args.representation,
                                    max_iter=args.max_iter, seed=args.seed)  # fmt: skip
    path = quantizer.save_pretrained(out)
    info = quantizer.info
    print(f"k-means, k={quantizer.k}, layer {args.layer} ({args.representation}): {info['num_frames']} frames, "
          f"{info['num_iterations']} iterations, inertia per frame {info['inertia'] / info['num_frames']:.4g}")  # fmt: skip
    print(f"saved {path}")
    return 0
