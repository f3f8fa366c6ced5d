"""Transcribing audio files with a fine-tuned SpidR CTC model (``spidr-hf transcribe``).

The inputs are what ``spidr-hf extract`` takes (files, folders, manifests, saved datasets); each
file goes through transformers' ASR pipeline (`speech_recognizer`: the folder's tokenizer checked
first), long files in chunks of ``chunk_length_s`` seconds. One JSON line per file goes to
``transcripts.jsonl`` as soon as it is done, so a rerun into the same folder skips what is written;
a file that cannot be decoded is reported and listed in ``failures.jsonl``, the run goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from ..extract.options import ExtractionReport
from ..extract.run import nothing_to_do
from ..extract.writers import JsonlWriter, write_failures
from ..modeling import SAMPLING_RATE
from ..progress import progress_bar
from ..runs import exclusive_writer, prepare_output_dir, resolve_device
from ..sources import AudioInputs, collect_inputs
from .recognition import speech_recognizer

TRANSCRIPTS_FILE, FAILURES_FILE = "transcripts.jsonl", "failures.jsonl"


def transcribe_files(
    model_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    chunk_length_s: float = 20.0,
    device: str | None = None,
    audio_column: str = "audio",
    progress: bool = True,
) -> ExtractionReport:
    """Transcribe every file of `inputs` into `output_dir/transcripts.jsonl` (``{"id", "path", "text"}``).

    The model (and its tokenizer), the output folder and the inputs are checked before anything is
    written. `device`: where the model runs (default: cuda when available, else cpu).

    Raises:
        FileNotFoundError: no model, no tokenizer in it, or a missing input.
        ValueError: a tokenizer of another size than the model's head, or no audio in the inputs.
    """
    started = time.perf_counter()
    recognizer = speech_recognizer(model_dir, device=resolve_device(device))
    out = prepare_output_dir(output_dir, "--output-dir", create=False)
    collected = collect_inputs(inputs, audio_column)
    if not collected.items and not collected.unreadable:
        raise ValueError(nothing_to_do(collected, inputs))
    prepare_output_dir(out, "--output-dir")
    with exclusive_writer(out, "transcribe", "transcripts"):
        writer = JsonlWriter(out / TRANSCRIPTS_FILE)
        todo = [item for item in collected.items if not writer.is_done(item)]
        report = ExtractionReport(skipped=len(collected.items) - len(todo))
        for path, reason in collected.unreadable:
            report.fail(path, OSError(reason))
        try:
            _run(collected.with_items(todo), recognizer, writer, report, chunk_length_s, progress)
        finally:
            writer.close()
        write_failures(out / FAILURES_FILE, report.failed)
    report.elapsed_seconds = time.perf_counter() - started
    return report


def _run(inputs: AudioInputs, recognizer, writer: JsonlWriter, report: ExtractionReport,
         chunk_length_s: float, progress: bool) -> None:  # fmt: skip
    with progress_bar(len(inputs.items), unit="file", desc="transcribe", disable=not progress) as bar:
        for item in inputs.items:
            try:
                wave = inputs.decode(item)
            except Exception as error:  # any undecodable file fails alone, named
                report.fail(item.path, error)
                bar.update(1)
                continue
            seconds = wave.size / SAMPLING_RATE
            chunking = {"chunk_length_s": chunk_length_s} if seconds > chunk_length_s else {}
            text = recognizer(wave, **chunking)["text"]
            writer.write_record(item, {"text": text, "seconds": round(seconds, 3)})
            writer.flush()  # a kill loses at most the file in flight
            report.written += 1
            report.audio_seconds += seconds
            bar.update(1)
            bar.set_postfix(failed=len(report.failed))


__all__ = ["transcribe_files"]
