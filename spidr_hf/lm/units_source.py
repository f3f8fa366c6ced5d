"""The deduplicated units of every file of some benchmarks, from one of three sources:

* a SpidR model folder: ``spidr-hf extract --units`` (head, codeword or k-means units of one layer), run
  through :func:`spidr_hf.extract.extract` into a folder of the caller's (resumable, as extraction is);
* a baseline quantizer file (``kmeans_<features>_k<K>.safetensors`` of ``spidr-hf baseline``): log-mel or
  MFCC k-means units of each decoded file;
* a ``units.jsonl`` computed beforehand, its ids the files' paths relative to the benchmark folder
  without extension (the ids ``spidr-hf extract MODEL BENCH_DIR`` gives).

Units are keyed by that relative id; :func:`benchmark_ids` gives the id of each file of a benchmark.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..audio import load_audio
from ..baselines import BaselineQuantizer
from ..evaluation import read_units
from ..extract import ExtractionOptions, extract
from ..sources import AudioInputs, AudioItem
from ..units import deduplicate
from .benchmarks import Benchmark


def benchmark_ids(root: str | os.PathLike, benchmark: Benchmark) -> dict[str, str]:
    """``{file name in the benchmark: id relative to root}`` (``lexical/dev/aAAf`` for ``aAAf`` under ``root``)."""
    base = benchmark.root.resolve().relative_to(Path(root).resolve())
    return {name: (base / name).as_posix() if base.parts else name for name in benchmark.files}


def _all_files(root: Path, benchmarks: Sequence[Benchmark]) -> dict[str, Path]:
    return {ids[name]: b.files[name] for b in benchmarks for ids in [benchmark_ids(root, b)] for name in b.files}


def units_from_file(path: str | os.PathLike, wanted: Sequence[str]) -> dict[str, list[int]]:
    """Deduplicated units of ``wanted`` ids from a ``units.jsonl`` (a ``ValueError`` names the first missing id)."""
    units = read_units(path)
    missing = [i for i in wanted if i not in units]
    if missing:
        raise ValueError(
            f"{path} has no units for {len(missing)} benchmark file(s) (e.g. {missing[0]!r}); its ids must be the "
            "files' paths relative to the benchmark folder without extension, as `spidr-hf extract MODEL BENCH_DIR` names them."
        )
    return {i: deduplicate(units[i]) for i in wanted}


def units_from_quantizer(path: str | os.PathLike, files: dict[str, Path]) -> dict[str, list[int]]:
    """Deduplicated baseline k-means units of each file (decoded at 16 kHz)."""
    quantizer = BaselineQuantizer.load(path)
    return {i: deduplicate(quantizer(load_audio(p)).tolist()) for i, p in files.items()}


def units_from_model(model_dir: str | os.PathLike, files: dict[str, Path], options: ExtractionOptions,
                     model: object | None = None) -> dict[str, list[int]]:  # fmt: skip
    """Deduplicated units of each file by ``spidr_hf.extract.extract`` into ``options.output_dir``.

    Raises:
        ValueError: a file that could not be extracted (named, with the reason).
    """
    inputs = AudioInputs([AudioItem(str(p), id=i) for i, p in files.items()])
    report = extract(model_dir, inputs, options, model=model)
    if report.failed:
        path, reason = report.failed[0]
        raise ValueError(f"{len(report.failed)} benchmark file(s) could not be extracted (e.g. {path}: {reason}).")
    return units_from_file(Path(options.output_dir) / "units.jsonl", list(files))


def benchmark_units(source: str | os.PathLike, root: str | os.PathLike, benchmarks: Sequence[Benchmark],
                    options: ExtractionOptions) -> dict[str, list[int]]:  # fmt: skip
    """Deduplicated units by relative id of every benchmark file, from ``source`` (see the module).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a file of another kind, missing or failed units.
    """
    source = Path(source)
    files = _all_files(Path(root), benchmarks)
    if source.is_dir():
        return units_from_model(source, files, options)
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist: give a SpidR model folder, a baseline k-means file or a units.jsonl.")
    if source.suffix == ".jsonl":
        return units_from_file(source, list(files))
    if source.suffix == ".safetensors":
        return units_from_quantizer(source, files)
    raise ValueError(f"{source} is neither a model folder, a .safetensors baseline quantizer nor a units .jsonl.")


__all__ = ["benchmark_ids", "benchmark_units", "units_from_file", "units_from_model", "units_from_quantizer"]
