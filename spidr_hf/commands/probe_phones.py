"""``spidr-hf probe-phones``: the SUPERB-style frozen-encoder phone probe, next to the same probe on log-mel."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float, positive_int
from spidr_hf.model_dir import check_model_source
from spidr_hf.runs import atomic_write_text, prepare_output_dir

DESCRIPTION = "PER of a linear CTC phone probe on a frozen SpidR's weighted layer sum, next to log-mel"

EPILOG = """\
The encoder stays frozen. A softmax-weighted sum of its layers (the transformer input and every
layer's output) feeds one linear layer trained with CTC on the phones of TRAIN_CORPUS (its
alignments.jsonl, runs of equal frame labels, silence left out); the phone error rate (PER) is
measured on TEST_CORPUS with greedy decoding. The same probe on 40 log-mel bands (on the model's
frame grid) is trained and scored the same way. Writes OUTPUT_DIR/results.json (both PERs, the
learnt layer weights) and OUTPUT_DIR/layer_weights.png (which layers carry the phones).

example (corpora from spidr-hf synth-corpus):
  spidr-hf probe-phones runs/tiny/model corpus/ heldout/ --output-dir probe
"""


def build_parser() -> argparse.ArgumentParser:
    from spidr_hf.downstream import ProbeSettings

    defaults = ProbeSettings()
    parser = CommandParser(prog="spidr-hf probe-phones", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("model_dir", help="a SpidR model directory (transformers format)")
    parser.add_argument("train_corpus", help="an aligned corpus (spidr-hf synth-corpus) or a saved dataset with phones")
    parser.add_argument("test_corpus", help="held-out speech in the same layout")
    parser.add_argument("--output-dir", type=Path, required=True, help="where results.json and the plot go")
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help="optimizer steps of each probe")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="utterances per step")
    parser.add_argument("--learning-rate", type=positive_float, default=defaults.learning_rate, help="Adam's")
    parser.add_argument("--max-train-minutes", type=positive_float, help="use the first minutes of TRAIN_CORPUS only")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the probes and the batch order")
    parser.add_argument("--device", help="where the encoder runs (default: cuda when available, else cpu)")
    return parser


@command("probe-phones")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    check_model_source(args.model_dir)
    out = prepare_output_dir(args.output_dir, "--output-dir", create=False)
    from spidr_hf.downstream import ProbeSettings, load_transcribed, phone_probe
    from spidr_hf.evaluation import plot_bars
    from spidr_hf.extract import load_model

    model = load_model(args.model_dir, args.device)  # a model that cannot load stops the run before any audio is read
    train = load_transcribed(args.train_corpus, "phones", max_minutes=args.max_train_minutes)
    test = load_transcribed(args.test_corpus, "phones")
    settings = ProbeSettings(steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)
    results = {"model": str(args.model_dir), **phone_probe(model, train, test, settings)}
    # everything is computed before anything is written: a failed run leaves no partial output
    prepare_output_dir(out, "--output-dir")
    weights = results["layer_weights"]
    plot_bars(list(weights.values()), list(weights), out / "layer_weights.png", xlabel="layer (0 = transformer input)",
              ylabel="softmax weight", title=f"phone probe: learnt layer weights ({Path(args.model_dir).name})")  # fmt: skip
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(out / "results.json", text)
    print(format_probe_table(results))
    print(f"results: {out / 'results.json'}, layer weights: {out / 'layer_weights.png'}")
    return 0


def format_probe_table(results: dict) -> str:
    """The printed comparison: PER per feature kind, and the layer the probe weighs most."""
    lines = [f"{'features':<10} {'PER':>7}", *(f"{r['features']:<10} {r['per']:>7.3f}" for r in results["rows"])]
    lines.append(f"phones: {results['phones']}; test: {results['test']['utterances']} utterances "
                 f"({results['test']['minutes']} min); heaviest layer: {results['best_layer']}")  # fmt: skip
    return "\n".join(lines)
