"""The LM stage of ``spidr-hf demo``: what a small unit LM learns from log-mel k-means units and from the initial
and the trained SpidR's head units, scored on the synthetic benchmark (:mod:`.synthetic_benchmark`) beside the
units' PNMI, the paper's unit-quality-vs-LM comparison at toy scale.

For each unit system: units of the training corpus (deduplicated) train a ``tiny`` LM (:func:`.train.train_lm`),
and the benchmark's audio goes through the same quantizer (:mod:`.units_source`) to be scored (:mod:`.scoring`).
Everything goes to ``OUT/lm/``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..baselines import BaselineQuantizer
from ..evaluation import write_units
from ..extract import ExtractionOptions, extract
from ..sources import AudioInputs, AudioItem
from ..unit_scores import AlignedCorpus
from .benchmarks import find_benchmarks
from .evaluate import load_lm
from .scoring import benchmark_accuracy, score_items
from .synthetic_benchmark import BENCHMARK_VOICES, synthesize_benchmark
from .train import LMTrainingOptions, train_lm
from .units_source import benchmark_ids, benchmark_units


@dataclass
class LMStageSettings:
    """The size of the demo's LM stage (kept to about a minute and a half on two CPU cores)."""

    words: int = 20
    sentences: int = 12
    voices: tuple[str, ...] = BENCHMARK_VOICES[:1]
    max_steps: int = 100
    block_size: int = 64
    batch_size: int = 16
    seed: int = 0
    all_layers: bool = False  # every codebook layer's head units, not only the best: unit quality vs LM score

    @classmethod
    def sized(cls, size: str, seed: int = 0) -> LMStageSettings:
        """``"full"`` (the demo's), ``"layers"`` (the same for every codebook layer) or ``"smoke"`` (the demo's
        ``--smoke``: a check that every step runs)."""
        if size not in STAGE_SIZES:
            raise ValueError(f"the LM stage's size must be one of {STAGE_SIZES}, got {size!r}.")
        if size == "smoke":
            return cls(words=4, sentences=2, max_steps=5, seed=seed)
        return cls(seed=seed, all_layers=size == "layers")


STAGE_SIZES = ("full", "layers", "smoke")


def _head_layer(rows: list[dict]) -> int:
    """The trained model's best head-unit layer by PNMI (the demo's own rows)."""
    heads = [r for r in rows if r["model"] == "trained" and r["units"] == "head"]
    return max(heads, key=lambda r: r["pnmi"])["layer"]


def _head_layers(rows: list[dict]) -> list[int]:
    """Every head-unit layer of the trained model."""
    return sorted(r["layer"] for r in rows if r["model"] == "trained" and r["units"] == "head")


def _pnmi(rows: list[dict], model: str, units: str, layer: int | None) -> float:
    return next(r["pnmi"] for r in rows if r["model"] == model and r["units"] == units and r["layer"] == layer)


def _model_training_units(model_dir: Path, corpus: AlignedCorpus, layer: int, out: Path) -> Path:
    options = ExtractionOptions(output_dir=str(out), units="head", unit_layer=layer, progress=False, num_workers=0)
    extract(model_dir, AudioInputs([AudioItem(str(corpus.root / "audio" / f"{i}.wav"), id=i) for i in corpus.ids]), options)
    return out / "units.jsonl"


def run_lm_stage(out: str | Path, fit: AlignedCorpus, model_dirs: dict[str, str | Path], rows: list[dict], k: int,
                 settings: LMStageSettings | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Rows ``{"model", "units", "layer", "pnmi", "lexical", "syntactic"}`` for log-mel k-means and each of
    ``model_dirs`` (``{"initial": dir, "trained": dir}``), PNMI taken from the demo's ``rows``.

    The LMs learn from the units of ``fit`` (the training speech the demo fits its k-means on), which
    bounds the stage's time whatever the corpus's size.
    """
    settings = settings or LMStageSettings()
    out = Path(out) / "lm"
    shutil.rmtree(out, ignore_errors=True)  # a rerun of the demo: its models are new, nothing here may be resumed
    bench = out / "benchmark"
    synthesize_benchmark(bench, settings.words, settings.sentences, seed=settings.seed, voices=settings.voices,
                         overwrite=True, progress=False)  # fmt: skip
    benchmarks = find_benchmarks(bench)
    layers = _head_layers(rows) if settings.all_layers else [_head_layer(rows)]
    quantizer = BaselineQuantizer.fit(fit.waves, "logmel", k, seed=settings.seed)
    # (model, units, layer, tag of its files, training units, what quantizes the benchmark)
    systems: list[tuple[str, str, int | None, str, Path, Path]] = []
    train_units = write_units(out / "train_units_logmel.jsonl", fit.ids, [quantizer(w) for w in fit.waves])
    systems.append(("baseline", "logmel k-means", None, "logmel", train_units, quantizer.save(out)))
    for name, model_dir in model_dirs.items():
        for layer in layers:
            units = _model_training_units(Path(model_dir), fit, layer, out / f"train_units_{name}_layer{layer}")
            systems.append((name, "head", layer, f"{name}_layer{layer}", units, Path(model_dir)))
    results = []
    for name, units, unit_layer, tag, train_units, source in systems:
        options = LMTrainingOptions(output_dir=str(out / f"lm_{tag}"), max_steps=settings.max_steps,
                                    block_size=settings.block_size, batch_size=settings.batch_size,
                                    save_steps=settings.max_steps, seed=settings.seed, num_units=k, progress=False)  # fmt: skip
        train_lm([train_units], options)
        model, tokenizer = load_lm(out / f"lm_{tag}")
        extraction = ExtractionOptions(output_dir=str(out / f"bench_units_{tag}"), units="head", unit_layer=unit_layer,
                                       progress=False, num_workers=0)  # fmt: skip
        bench_units = benchmark_units(source, bench, benchmarks, extraction)
        row = {"model": name, "units": units, "layer": unit_layer, "pnmi": _pnmi(rows, name, units, unit_layer)}
        for benchmark in benchmarks:
            names = benchmark_ids(bench, benchmark)
            log_probs = score_items(model, tokenizer, {n: bench_units[i] for n, i in names.items()}, str(source))
            scored = benchmark_accuracy(benchmark.pairs, log_probs)["sum"]
            row[benchmark.name.split("/")[0]] = scored["accuracy"]
            row[benchmark.name.split("/")[0] + "_ids"] = scored["ids"]  # how many items: the accuracy's resolution
        results.append(row)
    return results


def lm_table(rows: list[dict[str, Any]]) -> str:
    """The LM rows as a small table beside PNMI."""
    lines = ["Unit LM (tiny, trained on the units of the k-means training speech) on the synthetic benchmark "
             "(unseen voice; chance = 0.5):", f"{'model':<9}{'units':<16}{'layer':>5}  {'PNMI':>6}  {'lexical':>7}  {'syntactic':>9}"]  # fmt: skip
    counts = {name: rows[0].get(f"{name}_ids") for name in ("lexical", "syntactic")} if rows else {}
    if all(counts.values()):  # a few dozen items: one item moves an accuracy by 1/n, so say n
        lines[0] = lines[0][:-2] + f"; {counts['lexical']} lexical and {counts['syntactic']} syntactic items):"
    for row in rows:
        layer = "" if row["layer"] is None else str(row["layer"])
        lines.append(f"{row['model']:<9}{row['units']:<16}{layer:>5}  {row['pnmi']:>6.3f}  {row['lexical']:>7.3f}  {row['syntactic']:>9.3f}")
    return "\n".join(lines)


__all__ = ["STAGE_SIZES", "LMStageSettings", "lm_table", "run_lm_stage"]
