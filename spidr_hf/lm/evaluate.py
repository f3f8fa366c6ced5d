"""``spidr-hf lm-score`` as a function: benchmark audio -> units -> LM log-probabilities -> accuracies, on disk."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..extract import ExtractionOptions
from ..runs import atomic_write_text, prepare_output_dir, resolve_device
from .benchmarks import find_benchmarks
from .scoring import benchmark_accuracy, score_items
from .tokenizer import num_units_of
from .units_source import benchmark_ids, benchmark_units

SCORES_FILE = "lm_scores.json"


@dataclass
class LMScoreOptions:
    """How to score (see ``spidr-hf lm-score --help``)."""

    output_dir: str
    units: str = "head"
    layer: int | None = None
    kmeans: str | None = None
    aggregation: str = "sum"
    batch_size: int = 32
    device: str | None = None
    progress: bool = True


def load_lm(lm_dir: str | os.PathLike, device: str | None = None) -> tuple[Any, Any]:
    """The LM and unit tokenizer of an ``lm-train`` folder (a ``FileNotFoundError`` when it is not one)."""
    lm_dir = Path(lm_dir)
    for name in ("config.json", "tokenizer.json"):
        if not (lm_dir / name).is_file():
            raise FileNotFoundError(f"{lm_dir} is not an LM folder (no {name}): give the --output-dir of spidr-hf lm-train.")
    device = resolve_device(device)  # before any loading: a wrong --device is named at once
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    return model.to(device).eval(), tokenizer


def _check_model_units(model_dir: Path, options: LMScoreOptions, num_units: int) -> None:
    """Before extracting: a layer is given, and head or codeword units fit the LM's K."""
    if options.layer is None:
        raise ValueError(f"{model_dir} is a model folder: give --layer, the layer of its --units {options.units}.")
    if options.units in ("head", "codeword") and (model_dir / "config.json").is_file():
        codebook_size = AutoConfig.from_pretrained(model_dir).codebook_size
        if codebook_size > num_units:
            raise ValueError(
                f"{model_dir} has {codebook_size} codewords but the LM's tokenizer knows K={num_units} units: "
                "score with an LM trained on this model's units."
            )


def score_lm(lm_dir: str | os.PathLike, units_source: str | os.PathLike, bench_dir: str | os.PathLike,
             options: LMScoreOptions) -> dict[str, Any]:  # fmt: skip
    """Score every benchmark of ``bench_dir`` and write ``lm_scores.json`` and ``<benchmark>.txt`` files.

    Checks before it writes: the LM folder, the benchmarks (gold.csv, matching ids), the output
    folder, and for a model folder that ``--layer`` is given. Scores are written once all are computed.
    """
    model, tokenizer = load_lm(lm_dir, options.device)
    benchmarks = find_benchmarks(bench_dir)
    out = prepare_output_dir(options.output_dir, "--output-dir", create=False)
    if Path(units_source).is_dir():
        _check_model_units(Path(units_source), options, num_units_of(tokenizer))
    extraction = ExtractionOptions(output_dir=str(out / "units"), units=options.units, unit_layer=options.layer,
                                   kmeans=options.kmeans, device=options.device, progress=options.progress)  # fmt: skip
    units = benchmark_units(units_source, bench_dir, benchmarks, extraction)
    results: dict[str, Any] = {"lm": str(Path(lm_dir).resolve()), "units_source": str(Path(units_source).resolve()),
                               "num_units": num_units_of(tokenizer), "aggregation": options.aggregation, "benchmarks": {}}  # fmt: skip
    lines = {}
    for benchmark in benchmarks:
        ids = benchmark_ids(bench_dir, benchmark)
        log_probs = score_items(model, tokenizer, {n: units[i] for n, i in ids.items()}, str(units_source), options.batch_size)
        results["benchmarks"][benchmark.name] = benchmark_accuracy(benchmark.pairs, log_probs)
        score = (lambda lp: lp[0]) if options.aggregation == "sum" else (lambda lp: lp[0] / lp[1])
        lines[benchmark.name] = "".join(f"{n} {score(lp):.6f}\n" for n, lp in sorted(log_probs.items()))
    prepare_output_dir(out, "--output-dir")
    for name, text in lines.items():
        path = out / f"{name.replace('/', '_')}.txt"
        atomic_write_text(path, text)
    atomic_write_text(out / SCORES_FILE, json.dumps(results, indent=1) + "\n")
    return results


def scores_table(results: dict[str, Any]) -> str:
    """One line per benchmark: pairs, accuracy with summed and with mean log-probabilities."""
    lines = [f"{'benchmark':<24}{'pairs':>7}{'ids':>7}  {'acc (sum)':>9}  {'acc (mean)':>10}"]
    for name, scored in results["benchmarks"].items():
        lines.append(f"{name:<24}{scored['sum']['pairs']:>7}{scored['sum']['ids']:>7}  "
                     f"{scored['sum']['accuracy']:>9.3f}  {scored['mean']['accuracy']:>10.3f}")  # fmt: skip
        for kind, accuracy in scored[results["aggregation"]]["by_type"].items():
            lines.append(f"  {kind:<22}{'':>14}  {accuracy:>9.3f}")
    return "\n".join(lines)


__all__ = ["SCORES_FILE", "LMScoreOptions", "load_lm", "score_lm", "scores_table"]
