"""The extraction run: inputs -> shard -> skip what is done -> probe lengths -> batches -> model -> writers."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..audio import AUDIO_EXTENSIONS, standardize
from ..model_dir import check_model_source
from ..modeling import SAMPLING_RATE
from ..progress import progress_bar
from ..runs import exclusive_writer, is_per_file_error, prepare_output_dir
from ..sources import AudioInputs, AudioItem, collect_inputs
from ..units import encoder_of
from .batching import (
    DecodedBatches,
    decoding_loader,
    default_batch_samples,
    default_num_workers,
    plan_batches,
    select_shard,
)
from .encoder import FrameEncoder, FrameKey, load_model
from .options import DTYPES, ExtractionOptions, ExtractionReport
from .unit_computer import UnitComputer
from .writers import FeatureWriter, UnitWriter, check_layout, check_signature, shard_suffix, write_failures

logger = logging.getLogger(__name__)


def extract(
    model_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike] | AudioInputs,
    options: ExtractionOptions,
    model: torch.nn.Module | None = None,
) -> ExtractionReport:
    """Extract features or units of ``inputs`` into ``options.output_dir`` (see :mod:`spidr_hf.extract`).

    Everything is checked before anything is written: the output folder, the inputs (at least one
    file for this shard), the model and the options. Paths a folder walk could not read count
    as failures. The shard's output files are locked against a second writer (``TimeoutError``).
    """
    started = time.perf_counter()
    if model is None:
        check_model_source(model_dir)  # a missing model first: it is the first thing named
    out = prepare_output_dir(options.output_dir, "--output-dir", create=False)
    check_layout(out, options)  # earlier outputs this run would not see: refused before any work
    check_signature(out, options, str(model_dir), write=False)
    collected = inputs if isinstance(inputs, AudioInputs) else collect_inputs(inputs, options.audio_column)
    shard_items = select_shard(collected.items, options.shard)
    unreadable = select_shard(collected.unreadable, options.shard)
    if not shard_items and not unreadable:
        raise ValueError(nothing_to_do(collected, inputs, options.shard))
    if model is None:  # head and codeword units need the pretraining model's heads and codebooks
        model = load_model(model_dir, options.device, options.dtype, options.units in ("head", "codeword"))
    units = UnitComputer.from_options(options, model, model_dir) if options.units else None
    keys = _frame_keys(options, units, encoder_of(model).config.num_hidden_layers)
    budget = options.max_batch_samples or default_batch_samples(encoder_of(model).device)
    encoder = FrameEncoder(model, keys, budget)
    prepare_output_dir(out, "--output-dir")  # inputs, model and options are valid: outputs may be written
    suffix = shard_suffix(options.shard)
    with exclusive_writer(out, f"extract{suffix}", f"shard {options.shard[0]}/{options.shard[1]}" if suffix else "outputs"):
        check_layout(out, options)  # again under the lock: another run may have written meanwhile
        check_signature(out, options, str(model_dir))
        if units is not None:
            writer: FeatureWriter | UnitWriter = UnitWriter(out / f"units{suffix}.jsonl")
        else:
            writer = FeatureWriter(out, [k[0] for k in keys], options.representation, options.output_format,
                                   DTYPES[options.store_dtype], encoder.geometry.frame_rate)  # fmt: skip
        todo = [item for item in shard_items if not writer.is_done(item)]
        report = ExtractionReport(skipped=len(shard_items) - len(todo))
        if report.skipped:
            logger.info("skipping %d file(s) already extracted in %s", report.skipped, out)
        for path, reason in unreadable:
            report.fail(path, OSError(reason), options.strict)
        pending, _ = collected.with_items(todo).probe_lengths()  # unreadable headers fail when decoded
        try:
            _run(pending, options, encoder, units, writer, report)
        finally:
            writer.close()
        write_failures(out / f"failures{suffix}.jsonl", report.failed)
    report.elapsed_seconds = time.perf_counter() - started
    return report


def nothing_to_do(collected: AudioInputs, inputs: Sequence | AudioInputs, shard: tuple[int, int] = (0, 1)) -> str:
    """Why a run has no file to process: no audio in the inputs, or none in this shard."""
    if collected.items:
        return (f"shard {shard[0]}/{shard[1]} holds no file: the inputs have {len(collected.items)} file(s) "
                f"for {shard[1]} shards.")  # fmt: skip
    named = "the inputs" if isinstance(inputs, AudioInputs) else ", ".join(map(str, inputs))
    return f"no audio file in {named} (audio files are {', '.join(AUDIO_EXTENSIONS)}; manifests list them)."


def _frame_keys(options: ExtractionOptions, units: UnitComputer | None, num_layers: int) -> list[FrameKey]:
    if units is not None:
        return [units.key]
    layers = dict.fromkeys(options.layers or [num_layers])  # ordered, without repeats
    return [(layer, options.representation) for layer in layers]


def _run(
    inputs: AudioInputs,
    options: ExtractionOptions,
    encoder: FrameEncoder,
    units: UnitComputer | None,
    writer: FeatureWriter | UnitWriter,
    report: ExtractionReport,
) -> None:
    batches = plan_batches(inputs.items, options.max_whole_seconds, encoder.max_batch_samples)
    workers = options.num_workers if options.num_workers is not None else default_num_workers(encoder.device)
    loader = decoding_loader(DecodedBatches(inputs, batches, encoder.geometry.receptive_field), workers)
    total_seconds = sum(item.num_samples or 0 for item in inputs.items) / SAMPLING_RATE
    # progress in audio seconds: the rate is the real-time factor and the ETA follows audio, not file counts
    bar_format = "{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
    with progress_bar(total_seconds, unit="s", desc="extract", bar_format=bar_format, disable=not options.progress) as bar:
        for decoded in loader:
            good = [(item, wave) for item, wave in decoded if not isinstance(wave, Exception)]
            for item, error in decoded:
                if isinstance(error, Exception):
                    report.fail(item.path, error, options.strict)
            for item, frames, seconds in _encode(good, encoder, options):
                if isinstance(frames, Exception):
                    report.fail(item.path, frames, options.strict)
                    continue
                try:
                    writer.write(item, units(frames) if units is not None else frames)
                except OSError as error:  # a name too long fails its file; a full disk stops the run
                    if not is_per_file_error(error):
                        raise
                    report.fail(item.path, error, options.strict)
                    continue
                report.written += 1
                report.audio_seconds += seconds
                bar.update(seconds)
            writer.flush()  # a crash loses at most the batch in flight
            hours = f"{report.audio_seconds / 3600:.2f}/{total_seconds / 3600:.2f} h"
            bar.set_postfix(files=f"{report.written}/{len(inputs.items)}", audio=hours, failed=len(report.failed))


def _encode(
    good: list[tuple[AudioItem, np.ndarray]], encoder: FrameEncoder, options: ExtractionOptions
) -> Iterator[tuple[AudioItem, dict[FrameKey, torch.Tensor] | Exception, float]]:
    """Frames of a decoded batch: one padded pass, or windows for a long file (the header may have lied)."""
    if not good:
        return
    waves = [standardize(wave) for _, wave in good]
    if len(good) == 1 and len(waves[0]) > options.max_whole_seconds * SAMPLING_RATE:
        frames = encoder.encode_file(waves[0], options.max_whole_seconds, options.window_seconds,
                                     options.context_seconds, DTYPES[options.store_dtype])  # fmt: skip
        yield good[0][0], frames, len(waves[0]) / SAMPLING_RATE
        return
    try:
        outputs = encoder.encode(waves)
    except torch.OutOfMemoryError as err:
        for item, _ in good:
            yield item, err, 0.0
        return
    for (item, wave), frames in zip(good, outputs, strict=True):
        yield item, frames, len(wave) / SAMPLING_RATE

