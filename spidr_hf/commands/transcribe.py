"""``spidr-hf transcribe``: audio files to text with a fine-tuned SpidR CTC model."""

from __future__ import annotations

import argparse

from spidr_hf.commands import apply_output_flags, command, model_and_audio_parser, positive_float
from spidr_hf.errors import UsageError

DESCRIPTION = "transcribe audio files with a fine-tuned SpidR CTC model (the ASR pipeline)"

EPILOG = """\
MODEL_DIR is a fine-tuned model with its CTC tokenizer (what spidr-hf finetune-ctc writes to
OUTPUT/model). Each file goes through pipeline("automatic-speech-recognition"), files longer than
--chunk-length-s in chunks; OUTPUT_DIR/transcripts.jsonl gets one line per file ({"id", "path",
"text", "seconds"}) as soon as it is done, so a rerun skips what is written. Files that cannot be
decoded are listed in OUTPUT_DIR/failures.jsonl and the run goes on; it fails when none could be.

example:
  spidr-hf transcribe ctc/model audio/ --output-dir transcripts
"""


def build_parser() -> argparse.ArgumentParser:
    parser = model_and_audio_parser("spidr-hf transcribe", DESCRIPTION, EPILOG)
    parser.add_argument("--output-dir", required=True, help="transcripts.jsonl (and failures.jsonl) go here")
    parser.add_argument("--chunk-length-s", type=positive_float, default=20.0,
                        help="files longer than this many seconds are transcribed in chunks of it")  # fmt: skip
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu)")
    parser.add_argument("--audio-column", default="audio", help="audio column of saved datasets")
    return parser


@command("transcribe")
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    apply_output_flags(args)
    from spidr_hf.downstream.transcribe import transcribe_files

    report = transcribe_files(args.model_dir, args.inputs, args.output_dir, args.chunk_length_s, args.device,
                              args.audio_column, progress=not args.quiet)  # fmt: skip
    print(report.summary())
    if report.all_failed:
        raise UsageError(f"no input could be transcribed: all {len(report.failed)} failed (see above).")
    return 0
