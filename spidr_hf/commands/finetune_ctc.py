"""``spidr-hf finetune-ctc``: fine-tune a SpidR encoder with a CTC head on phones or characters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spidr_hf.commands import CommandParser, apply_output_flags, command, positive_float, positive_int
from spidr_hf.model_dir import check_model_source
from spidr_hf.runs import atomic_write_text, prepare_output_dir

DESCRIPTION = "fine-tune a SpidR encoder with a CTC head (phones or characters), the wav2vec2 recipe"

EPILOG = """\
A new linear CTC head (SpidRForCTC) on the encoder of MODEL_DIR learns the phones (alignments.jsonl)
or characters (manifest.jsonl's text) of TRAIN_CORPUS with transformers' Trainer; the feature
encoder stays frozen unless --train-feature-encoder. OUTPUT_DIR gets checkpoints/ (--resume goes on
from the last one), model/ (the fine-tuned model with its processor: the SpidR feature extractor
and a Wav2Vec2 CTC tokenizer, what pipeline("automatic-speech-recognition") loads) and
results.json (with --test-corpus: the error rate before and after, greedy decoding).

example (corpora from spidr-hf synth-corpus):
  spidr-hf finetune-ctc runs/tiny/model corpus/ --test-corpus heldout/ --output-dir ctc
"""


def build_parser() -> argparse.ArgumentParser:
    from spidr_hf.downstream.ctc_data import TARGETS
    from spidr_hf.downstream.finetune import FinetuneSettings

    defaults = FinetuneSettings()
    parser = CommandParser(prog="spidr-hf finetune-ctc", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("model_dir", help="a SpidR model directory (converted, pretrained or fine-tuned)")
    parser.add_argument("train_corpus", help="an aligned corpus (spidr-hf synth-corpus) or a saved dataset with transcripts")
    parser.add_argument("--test-corpus", help="held-out speech to score the error rate on")
    parser.add_argument("--output-dir", type=Path, required=True, help="checkpoints/, model/ and results.json go here")
    parser.add_argument("--targets", choices=TARGETS, default=defaults.targets, help="what the head emits")
    parser.add_argument("--max-steps", type=positive_int, default=defaults.max_steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="utterances per step")
    parser.add_argument("--learning-rate", type=positive_float, default=defaults.learning_rate, help="peak AdamW rate of the encoder")
    parser.add_argument("--head-learning-rate", type=positive_float, default=defaults.head_learning_rate,
                        help="peak AdamW rate of the fresh CTC head")  # fmt: skip
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warm-up steps")
    parser.add_argument("--save-steps", type=positive_int, default=defaults.save_steps, help="steps between checkpoints")
    parser.add_argument("--train-feature-encoder", action="store_true", help="also train the conv feature encoder")
    parser.add_argument("--resume", action="store_true", help="go on from the last checkpoint in OUTPUT_DIR")
    parser.add_argument("--text-column", default="text", help="transcript column of saved datasets (characters)")
    parser.add_argument("--phones-column", default="phones", help="phones column of saved datasets")
    parser.add_argument("--audio-column", default="audio", help="audio column of saved datasets")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds the head and the batch order")
    return parser


@command("finetune-ctc")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    check_model_source(args.model_dir)
    prepare_output_dir(args.output_dir, "--output-dir", create=False)
    from spidr_hf.downstream import load_transcribed
    from spidr_hf.downstream.finetune import FinetuneSettings, finetune_ctc

    columns = dict(text_column=args.text_column, phones_column=args.phones_column, audio_column=args.audio_column)
    train = load_transcribed(args.train_corpus, args.targets, **columns)
    test = None if args.test_corpus is None else load_transcribed(args.test_corpus, args.targets, **columns)
    settings = FinetuneSettings(
        targets=args.targets, max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
        head_learning_rate=args.head_learning_rate, warmup_steps=args.warmup_steps, freeze_feature_encoder=not args.train_feature_encoder,
        save_steps=args.save_steps, seed=args.seed,
    )  # fmt: skip
    results = finetune_ctc(args.model_dir, train, args.output_dir, settings, test=test, resume=args.resume,
                           progress=not args.quiet)  # fmt: skip
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(args.output_dir / "results.json", text)
    if "error_rate" in results:
        rate = results["error_rate"]
        print(f"{rate['metric']} on {results['test']['utterances']} held-out utterances: "
              f"{rate['initial']:.3f} before, {rate['final']:.3f} after fine-tuning")  # fmt: skip
    print(f"model: {args.output_dir / 'model'}, results: {args.output_dir / 'results.json'}")
    return 0
