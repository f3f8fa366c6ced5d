"""The main job (`make demo` / `spidr-hf demo`): pretrain a tiny SpidR on synthetic speech and show it learnt.

Steps, each with the package's own public pieces:
1. render a phone-aligned synthetic corpus with espeak-ng (`spidr_hf.synth`);
2. build the `tiny` SpidR and keep a copy of it at initialisation;
3. pretrain it with `SpidRPretrainer` (the `tiny_cpu` recipe);
4. extract head units of both models with `spidr_hf.extract` and score them against the phone
   alignments (`spidr_hf.evaluation`), plus the pretraining loss of both on one fixed batch;
5. print a table and write `results.json` and plots (phone x unit matrix, codebook usage,
   loss curve) to the output folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    output_dir: str = "demo_output"
    minutes: float = 12.0  # of synthetic speech
    max_steps: int = 3000  # optimizer steps of the tiny recipe (its time: README, `make demo`)
    seed: int = 0
    unit_layer: int | None = None  # 1-based layer whose head gives the units; default: the first codebook layer
    loss_batch_utterances: int = 8


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the whole demo; returns (and writes) the results."""
    from transformers import set_seed

    from spidr_hf.model_dir import save_pretrained_with_code
    from spidr_hf.synth import synthesize_corpus
    from spidr_hf.training import SpidRPretrainer, SpidRTrainingArguments, load_pretraining_model, load_recipe

    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    print(f"[1/4] Rendering {settings.minutes:g} minutes of phone-aligned speech with espeak-ng")
    corpus = synthesize_corpus(out / "corpus", settings.minutes, seed=settings.seed, overwrite=True)
    corpus_dir = out / "corpus"

    set_seed(settings.seed)
    model = load_pretraining_model("tiny")
    layer = settings.unit_layer or model.config.codebook_layers[0]
    initial_dir = out / "initial_model"
    save_pretrained_with_code(model, initial_dir)
    loss_batch = fixed_loss_batch(corpus_dir, model, settings.loss_batch_utterances, settings.seed)
    initial_loss = batch_loss(model, loss_batch)

    print(f"[2/4] Pretraining the tiny SpidR for {settings.max_steps} steps")
    args = SpidRTrainingArguments(
        **{
            **load_recipe("tiny_cpu"),
            "recipe": "tiny_cpu",
            "train_data": str(corpus_dir / "manifest.tsv"),
            "output_dir": str(out / "trained_model"),
            "max_steps": settings.max_steps,
            "save_steps": float(max(settings.max_steps, 1)),  # float fields, as their flags parse
            "logging_steps": float(max(1, min(10, settings.max_steps // 10))),
            "seed": settings.seed,
            "report_to": "tensorboard",
        }
    )
    trainer = SpidRPretrainer(model, args)
    trainer.train()
    trained_dir = trainer.save_pretrained_model()
    trained_loss = batch_loss(model, loss_batch)

    print(f"[3/4] Extracting layer-{layer} head units and scoring them against the alignments")
    initial = score_units(initial_dir, corpus_dir, out / "units_initial", layer)
    trained = score_units(trained_dir, corpus_dir, out / "units_trained", layer)

    print("[4/4] Writing plots")
    plots = write_plots(out / "plots", initial, trained, trainer.state.log_history)
    results = {
        "settings": asdict(settings),
        "corpus": {"minutes": round(corpus.minutes, 2), "utterances": len(corpus.utterances), "voices": corpus.voices},
        "unit_layer": layer,
        "initial": {**initial["metrics"], "loss": initial_loss},
        "trained": {**trained["metrics"], "loss": trained_loss},
        "plots": [str(p) for p in plots],
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(results_table(results))
    print(f"\nOutputs in {out}/: results.json, plots/, trained_model/, initial_model/, corpus/")
    return results


def fixed_loss_batch(corpus_dir: Path, model: Any, count: int, seed: int) -> dict[str, torch.Tensor]:
    """The first `count` utterances, cropped to the shortest and standardised, with one fixed span mask."""
    from spidr_hf.audio import load_audio, standardize
    from spidr_hf.training import compute_span_mask

    records = [json.loads(line) for line in (corpus_dir / "manifest.jsonl").read_text().splitlines()[:count]]
    waves = [load_audio(corpus_dir / r["path"]) for r in records]
    length = min(len(w) for w in waves)
    values = torch.stack([torch.from_numpy(standardize(w[:length])) for w in waves])
    frames = model.config.frame_geometry.num_frames(length)
    mask = compute_span_mask((len(waves), frames), generator=torch.Generator().manual_seed(seed))
    return {"input_values": values, "mask_time_indices": mask}


@torch.no_grad()
def batch_loss(model: Any, batch: dict[str, torch.Tensor]) -> float:
    """Pretraining loss of `model` (eval mode: no codebook update) on a fixed batch."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss = model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
    model.train(was_training)
    return loss


def score_units(model_dir: Path, corpus_dir: Path, units_dir: Path, layer: int) -> dict[str, Any]:
    """Head units of `layer` for the corpus (`spidr_hf.extract`), and their metrics against the alignments."""
    from spidr_hf.evaluation import (
        count_frames,
        metrics_from_counts,
        pair_frames,
        read_alignments,
        read_units,
    )
    from spidr_hf.extract import ExtractionOptions, extract

    options = ExtractionOptions(output_dir=str(units_dir), units="head", unit_layer=layer, num_workers=0, device="cpu")
    report = extract(model_dir, [str(corpus_dir / "manifest.tsv")], options)
    if report.failed:
        raise RuntimeError(f"unit extraction failed for {len(report.failed)} file(s):\n{report.summary()}")
    config = json.loads((model_dir / "config.json").read_text())
    phones = (corpus_dir / "phones.txt").read_text().split()
    pairs = pair_frames(read_alignments(corpus_dir / "alignments.jsonl"), read_units(units_dir / "units.jsonl"))
    frames = count_frames(pairs, codebook_size=config["codebook_size"], phones=phones)
    return {"metrics": metrics_from_counts(frames), "frames": frames}


def write_plots(plot_dir: Path, initial: dict, trained: dict, log_history: list[dict]) -> list[Path]:
    from spidr_hf.evaluation import plot_codebook_usage, plot_loss_curve, plot_phone_unit_matrix

    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, scored in (("initial", initial), ("trained", trained)):
        frames = scored["frames"]
        pnmi = scored["metrics"]["pnmi"]
        paths.append(
            plot_phone_unit_matrix(
                frames.counts, frames.phones, plot_dir / f"phone_unit_matrix_{name}.png",
                title=f"P(phone | unit), {name} model (PNMI {pnmi:.3f})",
            )
        )  # fmt: skip
        paths.append(plot_codebook_usage(frames.unit_counts, plot_dir / f"codebook_usage_{name}.png", title=name))
    points = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    if points:
        paths.append(plot_loss_curve(points, plot_dir / "loss_curve.png", title="tiny SpidR pretraining loss"))
    return paths


def results_table(results: dict[str, Any]) -> str:
    """`metric  initial  trained` rows (the PNMI row reads `PNMI  <initial>  <trained>`)."""
    rows = [
        ("PNMI", "pnmi", "{:.3f}"),
        ("phone purity", "phone_purity", "{:.3f}"),
        ("cluster purity", "cluster_purity", "{:.3f}"),
        ("codebook perplexity", "codebook_perplexity", "{:.1f}"),
        ("active codewords", "active_codewords", "{}"),
        ("bitrate (bit/s)", "bitrate", "{:.1f}"),
        ("loss (fixed batch)", "loss", "{:.3f}"),
    ]
    initial, trained = results["initial"], results["trained"]
    lines = [f"Layer-{results['unit_layer']} head units on {results['corpus']['minutes']} min of synthetic speech:"]
    lines.append(f"{'':<21}{'initial':>9}  {'trained':>9}")
    for label, key, fmt in rows:
        a, b = initial.get(key), trained.get(key)
        shown = [fmt.format(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "n/a" for v in (a, b)]
        lines.append(f"{label:<21}{shown[0]:>9}  {shown[1]:>9}")
    return "\n".join(lines)
