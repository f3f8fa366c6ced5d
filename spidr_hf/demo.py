"""The main job (`make demo` / `spidr-hf demo`): pretrain a SpidR on synthetic speech and show,
side by side with classical baselines on held-out speech, what its units learnt.

Two scales run the same steps: `cpu` (the default, `make demo`: the tiny SpidR, `tiny_cpu`, minutes of
speech, a few minutes on a laptop) and `gpu` (`--device cuda --scale gpu`: the `demo_gpu` recipe, hours
of speech rendered on every core, pretraining stopped by a wall-clock budget; 8 minutes on one H100).

Steps, each with the package's own public pieces:
1. render two phone-aligned corpora with espeak-ng (`spidr_hf.synth`): a training corpus, and a
   held-out corpus of other sentences in voices of which two are never heard in training;
2. score the baselines, log-mel and MFCC k-means units (`spidr_hf.baselines`), and the `tiny`
   SpidR at initialisation;
3. pretrain it with `SpidRPretrainer` (the scale's recipe), scoring its units on the held-out
   corpus every few hundred steps (`spidr_hf.unit_scores.UnitQualityCallback`), one progress bar
   on screen and the training logs in `training_log.jsonl`;
4. score the trained model: the head units of each codebook layer, and k-means units of each
   layer's features; every k-means (baselines included) is fitted on training audio and scored on
   the held-out corpus, at the same number of clusters as the model's codebooks;
5. print the table (`report`: every row of `results["rows"]`, so a later stage can add its own) and
   what it means, write `results.json` (every row, the learning curve, the training log), the unit
   files and plots (learning curve, phone x unit matrices, codebook usage, loss, perplexities).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from spidr_hf import evaluation as ev
from spidr_hf.audio import load_audio, standardize
from spidr_hf.espeak import check_voices
from spidr_hf.lm.demo_stage import LMStageSettings, lm_table, run_lm_stage
from spidr_hf.model_dir import save_pretrained_with_code
from spidr_hf.modeling import SAMPLING_RATE
from spidr_hf.runs import atomic_write_text, resolve_device
from spidr_hf.synth import synthesize_corpus
from spidr_hf.training import (
    PretrainingProgress,
    SpidRPretrainer,
    SpidRTrainingArguments,
    TimeBudget,
    compute_span_mask,
    load_pretraining_model,
    load_recipe,
)
from spidr_hf.unit_scores import (
    AlignedCorpus,
    UnitQualityCallback,
    baseline_units,
    best_layer,
    model_units,
    score_units,
)

TRAIN_VOICES = ("en-us+m1", "en-us+f2", "en-us+m3", "en-us+f4", "en+m2")
# two voices never heard in training (en+f3, en-us+m7) and two that were
HELDOUT_VOICES = ("en+f3", "en-us+m7", "en-us+m1", "en-us+f2")


@dataclass
class DemoSettings:
    """One run of the demo; the defaults are the `cpu` scale's (`SCALES` holds the `gpu` one's)."""

    output_dir: str = "demo_output"
    minutes: float = 12.0  # of training speech
    heldout_minutes: float = 4.0  # of held-out speech, every row is scored on it
    max_steps: int | None = None  # optimizer steps; default: the recipe's
    seed: int = 0
    curve_every: int = 500  # steps between two scorings of the learning curve
    kmeans_fit_minutes: float = 3.0  # of training speech that every k-means is fitted on
    loss_batch_utterances: int = 8
    recipe: str = "tiny_cpu"  # a built-in recipe or a file of training/recipes (load_recipe)
    device: str = "cpu"  # where the model trains and is scored: "cpu" or "cuda"
    time_budget_s: float | None = None  # pretraining stops at the first step past it (learning curve included)
    batch_seconds: float | None = None  # audio per optimizer step; default: the recipe's
    render_workers: int = 1  # processes that render the corpora (byte-identical output for any number)
    scale: str = "cpu"  # which of SCALES these settings start from (the closing lines speak of it)
    lm_stage: str = "full"  # unit LMs on the synthetic benchmark (spidr_hf.lm.demo_stage): "full", "layers", "smoke" or "off"


SCALES: dict[str, dict[str, Any]] = {
    "cpu": {},  # DemoSettings' defaults: the tiny SpidR, about 4 minutes on 2 cores
    # hours of speech (rendered on every core), the demo_gpu recipe and a 5-minute pretraining budget: with
    # rendering (~1 min for 4 h on 16 cores) and scoring, 8 minutes on one H100
    "gpu": {
        "scale": "gpu",
        "recipe": "demo_gpu",
        "minutes": 240.0,
        "heldout_minutes": 10.0,
        "kmeans_fit_minutes": 5.0,
        "curve_every": 1_500,
        "time_budget_s": 300.0,
        "render_workers": os.cpu_count() or 1,
    },
}
"""The settings of each `--scale` that differ from `DemoSettings`' defaults."""


# --------------------------------------------------------------------------- the run
def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the whole demo; returns (and writes) the results."""
    device = demo_device(settings.device)
    check_voices(dict.fromkeys([*TRAIN_VOICES, *HELDOUT_VOICES]))  # espeak-ng and its voices, before any output
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    recipe = load_recipe(settings.recipe)
    max_steps = settings.max_steps or int(recipe["max_steps"])
    if settings.batch_seconds is not None:
        recipe["per_device_max_batch_samples"] = round(settings.batch_seconds * SAMPLING_RATE)
    if "dataloader_num_workers" in recipe:  # no more decoding workers than cores
        recipe["dataloader_num_workers"] = min(recipe["dataloader_num_workers"], os.cpu_count() or 1)

    print(f"[1/5] Rendering {settings.minutes:g} + {settings.heldout_minutes:g} minutes of phone-aligned speech with espeak-ng")
    render = {"overwrite": True, "workers": settings.render_workers}
    train = synthesize_corpus(out / "corpus", settings.minutes, seed=settings.seed, voices=TRAIN_VOICES, **render)
    heldout = synthesize_corpus(
        out / "heldout", settings.heldout_minutes, seed=settings.seed + 1, voices=HELDOUT_VOICES, **render,
        exclude_texts={u.text for u in train.utterances},
    )  # fmt: skip
    fit_corpus = AlignedCorpus.load(out / "corpus", max_minutes=settings.kmeans_fit_minutes)
    eval_corpus = AlignedCorpus.load(out / "heldout")

    set_seed(settings.seed)
    model = load_pretraining_model(recipe["model_config"], recipe.get("config_overrides"), seed=settings.seed)
    model.to(device)
    k = model.config.codebook_size
    print(f"[2/5] Scoring log-mel and MFCC k-means (k={k}) and the initial model on the held-out speech")
    baselines = {kind: score_baseline_units(kind, fit_corpus, eval_corpus, k, out / "units") for kind in ("logmel", "mfcc")}
    save_pretrained_with_code(model, out / "initial_model")
    loss_batch = fixed_loss_batch(out / "corpus", model, settings.loss_batch_utterances, settings.seed)
    initial_loss = batch_loss(model, loss_batch)
    initial = score_model_units(model, fit_corpus, eval_corpus, k, out / "units", "initial", settings.seed)

    parameters = sum(p.numel() for p in model.spidr.parameters()) / 1e6
    budget = f" or {settings.time_budget_s:g} s, whichever comes first" if settings.time_budget_s else ""
    print(f"[3/5] Pretraining SpidR ({parameters:.1f}M parameters, recipe {settings.recipe}) on {device.type} "
          f"for {max_steps} steps{budget} (units scored every {settings.curve_every})")  # fmt: skip
    layers = range(1, model.config.num_hidden_layers + 1)
    curve = UnitQualityCallback(fit_corpus, eval_corpus, k, settings.curve_every, layers, seed=settings.seed)
    callbacks: list[Any] = [curve]
    if settings.time_budget_s:
        callbacks.append(TimeBudget(settings.time_budget_s))
    args = SpidRTrainingArguments(
        **{
            **recipe,
            "recipe": settings.recipe,
            "train_data": str(out / "corpus" / "manifest.tsv"),
            "output_dir": str(out / "trained_model"),
            "max_steps": max_steps,
            "save_steps": float(max(max_steps, 1)),  # float fields, as their flags parse
            "logging_steps": float(max(1, min(50, max_steps // 10))),
            "seed": settings.seed,
            "report_to": "tensorboard",
            "use_cpu": device.type == "cpu",
            "disable_tqdm": False,  # the bar follows the package's policy (--quiet silences it)
        }
    )
    trainer = SpidRPretrainer(model, args, callbacks=callbacks)
    log_file = out / "training_log.jsonl"
    log_file.unlink(missing_ok=True)
    trainer.pop_callback(PretrainingProgress)
    trainer.add_callback(PretrainingProgress(log_file=log_file))  # the logs go to the file, the bar shows the loss
    train_started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_started - sum(e["seconds"] for e in curve.history)
    stopped_by_budget = any(isinstance(c, TimeBudget) and c.stopped_early for c in callbacks)
    trained_dir = trainer.save_pretrained_model()
    trained_loss = batch_loss(model, loss_batch)

    print("[4/5] Scoring the trained model on the held-out speech")
    trained = score_model_units(model, fit_corpus, eval_corpus, k, out / "units", "trained", settings.seed)

    print("[5/5] Writing results and plots")
    results = {
        "settings": asdict(settings),
        "recipe": settings.recipe,
        "device": device.type,
        "parameters_millions": round(parameters, 2),
        "max_steps": max_steps,
        "steps": trainer.state.global_step,
        "stopped_by_time_budget": stopped_by_budget,
        "clusters": k,
        "corpus": corpus_facts(train),
        "heldout": {**corpus_facts(heldout), "voices_not_in_training": sorted(set(HELDOUT_VOICES) - set(TRAIN_VOICES))},
        "kmeans_fit_minutes": round(fit_corpus.minutes, 2),
        "rows": result_rows(baselines, initial, trained),
        "loss": {"initial": initial_loss, "trained": trained_loss},
        "learning_curve": [initial_curve_point(initial), *curve.history],
        "training_log": [e for e in trainer.state.log_history if "loss" in e],
        "training_seconds": round(train_seconds, 1),
        "trained_model": str(trained_dir),
    }
    results["comparison"] = comparison(results["rows"])
    if settings.lm_stage != "off":
        print("      Training unit LMs on each system's units, scoring the synthetic lexical/syntactic benchmark")
        results["lm"] = run_lm_stage(out, fit_corpus, {"initial": out / "initial_model", "trained": trained_dir},
                                     results["rows"], k, LMStageSettings.sized(settings.lm_stage, settings.seed))  # fmt: skip
    results["plots"] = [str(p) for p in write_plots(out / "plots", results, baselines, trained)]
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    print()
    print(report(results))
    if results.get("lm"):
        print("\n" + lm_table(results["lm"]))
    print(f"\nOutputs in {out}/: results.json, training_log.jsonl, plots/, units/, trained_model/, initial_model/, "
          "corpus/, heldout/")  # fmt: skip
    return results


def demo_device(name: str) -> torch.device:
    """The device the demo trains on, checked before anything is rendered."""
    device = resolve_device(name)
    if device.type not in {"cpu", "cuda"}:
        raise ValueError(f"--device must be cpu or cuda, got {name!r}.")
    return device


def corpus_facts(info: Any) -> dict[str, Any]:
    return {"minutes": round(info.minutes, 2), "utterances": len(info.utterances), "voices": list(info.voices)}


# --------------------------------------------------------------------------- scoring
def score_baseline_units(
    kind: str, fit: AlignedCorpus, evaluate: AlignedCorpus, k: int, units_dir: Path
) -> dict[str, Any]:
    """Metrics and counts of `kind` k-means units fitted on `fit`, on `evaluate` (units written to `units_dir`)."""
    units = baseline_units(kind, fit, evaluate, k)
    units_dir.mkdir(parents=True, exist_ok=True)
    ev.write_units(units_dir / f"{kind}.jsonl", evaluate.ids, units)
    metrics, frames = score_units(units, evaluate, k)
    return {"metrics": metrics, "frames": frames}


def score_model_units(
    model: Any, fit: AlignedCorpus, evaluate: AlignedCorpus, k: int, units_dir: Path, name: str, seed: int
) -> dict[str, Any]:
    """Head units of each codebook layer and k-means units of each layer, on `evaluate` (units written to `units_dir`)."""
    units = model_units(model, fit, evaluate, k, seed=seed)
    sizes = {"head": model.config.codebook_size, "kmeans": k}
    scored: dict[str, Any] = {"head": {}, "kmeans": {}, "frames": {}}
    units_dir.mkdir(parents=True, exist_ok=True)
    for kind, by_layer in units.items():
        for layer, layer_units in by_layer.items():
            ev.write_units(units_dir / f"{name}_{kind}_layer{layer}.jsonl", evaluate.ids, layer_units)
            scored[kind][layer], scored["frames"][(kind, layer)] = score_units(layer_units, evaluate, sizes[kind])
    return scored


def initial_curve_point(initial: dict[str, Any]) -> dict[str, Any]:
    """The model at initialisation as the learning curve's step 0 (scored before training: no seconds in training)."""
    return {
        "step": 0,
        "head": {layer: m["pnmi"] for layer, m in initial["head"].items()},
        "kmeans": {layer: m["pnmi"] for layer, m in initial["kmeans"].items()},
        "seconds": 0.0,
    }


def result_rows(baselines: dict, initial: dict, trained: dict) -> list[dict[str, Any]]:
    """Every row of the comparison: baselines, the initial and trained model's head units per codebook layer
    and k-means units per layer (`best` marks each model's best k-means layer)."""
    rows = [
        {"model": "baseline", "units": f"{kind} k-means", "layer": None, **scored["metrics"]}
        for kind, scored in baselines.items()
    ]
    for name, scored in (("initial", initial), ("trained", trained)):
        rows += [{"model": name, "units": "head", "layer": layer, **m} for layer, m in scored["head"].items()]
        best = best_layer(scored["kmeans"])
        rows += [
            {"model": name, "units": "features + k-means", "layer": layer, "best": layer == best, **m}
            for layer, m in scored["kmeans"].items()
        ]
    return rows


def comparison(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The numbers the closing lines speak of: the best PNMI of the trained and initial model's units, and log-mel's."""

    def best(model: str, units: str) -> float:
        return max(r["pnmi"] for r in rows if r["model"] == model and r["units"] == units)

    logmel = next(r["pnmi"] for r in rows if r["units"] == "logmel k-means")
    return {
        "logmel_pnmi": logmel,
        "best_head_pnmi": best("trained", "head"),
        "best_kmeans_pnmi": best("trained", "features + k-means"),
        "initial_head_pnmi": best("initial", "head"),
        "head_over_logmel": best("trained", "head") / logmel,
        "kmeans_over_logmel": best("trained", "features + k-means") / logmel,
    }


def fixed_loss_batch(corpus_dir: Path, model: Any, count: int, seed: int) -> dict[str, torch.Tensor]:
    """The first `count` utterances, cropped to the shortest and standardised, with one fixed span mask."""
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


# --------------------------------------------------------------------------- report
def write_plots(plot_dir: Path, results: dict, baselines: dict, trained: dict) -> list[Path]:
    """Learning curve, phone x unit matrices (log-mel baseline, trained head units), codebook usage, loss, perplexities."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    history = results["learning_curve"]
    series = {f"head units, layer {layer}": [(e["step"], e["head"][layer]) for e in history] for layer in trained["head"]}
    best = best_layer(trained["kmeans"])
    series[f"features + k-means, layer {best}"] = [(e["step"], e["kmeans"][best]) for e in history if best in e["kmeans"]]
    references = {f"{kind} k-means": scored["metrics"]["pnmi"] for kind, scored in baselines.items()}
    if history:
        paths.append(ev.plot_curves(series, plot_dir / "learning_curve.png", title="PNMI on held-out speech",
                                    ylabel="PNMI", references=references))  # fmt: skip
    head_layer = best_layer(trained["head"])
    matrices = {
        "logmel": (baselines["logmel"]["frames"], "log-mel k-means"),
        "trained": (trained["frames"][("head", head_layer)], f"trained SpidR, layer-{head_layer} head units"),
        "trained_kmeans": (trained["frames"][("kmeans", best)], f"trained SpidR, layer-{best} features + k-means"),
    }
    for name, (frames, label) in matrices.items():
        seen = frames.counts.sum(axis=1) > 0
        paths.append(ev.plot_phone_unit_matrix(
            frames.counts[seen], [p for p, s in zip(frames.phones, seen, strict=True) if s],
            plot_dir / f"phone_unit_matrix_{name}.png", title=f"P(phone | unit), {label} (PNMI {pnmi_of(frames):.3f})",
        ))  # fmt: skip
    paths.append(ev.plot_codebook_usage(trained["frames"][("head", head_layer)].unit_counts,
                                        plot_dir / "codebook_usage_trained.png", title=f"layer-{head_layer} head units"))  # fmt: skip
    log = results["training_log"]
    if log:
        paths.append(ev.plot_curves({"loss": [(e["step"], e["loss"]) for e in log]}, plot_dir / "loss_curve.png",
                                    title=f"SpidR pretraining loss ({results['recipe']})", ylabel="loss"))  # fmt: skip
        perplexities = {
            name: [(e["step"], e[key]) for e in log if key in e]
            for name, key in (("targets", "target_perplexity"), ("predictions", "prediction_perplexity"))
        }
        if any(perplexities.values()):
            paths.append(ev.plot_curves(perplexities, plot_dir / "perplexity_curve.png",
                                        title="codebook perplexity in training (mean over codebooks)", ylabel="perplexity"))  # fmt: skip
    return paths


def pnmi_of(frames: ev.FrameCounts) -> float:
    return ev.pnmi(frames.counts)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def results_table(results: dict[str, Any]) -> str:
    """One line per row: baselines, then the initial and trained model (head units per codebook layer,
    best layer's features + k-means), with PNMI, purities, perplexity, active units and bitrate."""
    heldout = results["heldout"]
    unseen = ", ".join(heldout["voices_not_in_training"])
    lines = [
        f"Units on {heldout['minutes']} min of held-out speech (other sentences; voices {unseen} never heard in "
        f"training), k = {results['clusters']}; k-means fitted on {results['kmeans_fit_minutes']} min of training speech:",
        f"{'model':<9}{'units':<22}{'layer':>5}  {'PNMI':>6}  {'phone pur.':>10}  {'cluster pur.':>12}  "
        f"{'perplexity':>10}  {'active':>6}  {'bit/s':>6}",
    ]
    for row in results["rows"]:
        if row["units"] == "features + k-means" and not row.get("best"):
            continue
        layer = "" if row["layer"] is None else str(row["layer"])
        lines.append(
            f"{row['model']:<9}{row['units']:<22}{layer:>5}  {_fmt(row['pnmi'], '6.3f')}  "
            f"{_fmt(row['phone_purity'], '10.3f')}  {_fmt(row['cluster_purity'], '12.3f')}  "
            f"{_fmt(row['codebook_perplexity'], '10.1f')}  {row['active_codewords']:>6}  {_fmt(row['bitrate'], '6.1f')}"
        )
    return "\n".join(lines)


def closing_lines(results: dict[str, Any]) -> str:
    """What the table means, in a user's words: what training did, how it compares with classical features,
    what scale the paper's numbers need, and where to read more."""
    numbers = comparison(results["rows"])
    head, logmel = numbers["best_head_pnmi"], numbers["logmel_pnmi"]
    budget = ", stopped by the time budget" if results.get("stopped_by_time_budget") else ""
    verdict = "are ahead of" if head >= logmel else "do not yet reach"
    larger = (
        "this run is the one-GPU scale of the demo"
        if results["settings"]["scale"] == "gpu"
        else "`spidr-hf demo --device cuda --scale gpu` is the larger run that fits one GPU"
    )
    return "\n".join([
        f"Pretraining: {results['steps']} steps in {results['training_seconds']:.0f} s on {results['device']}{budget}; "
        f"loss on a fixed batch {results['loss']['initial']:.3f} -> {results['loss']['trained']:.3f}.",
        "What the table shows: PNMI (0 to 1) is how much a unit tells about the phone being spoken, on speech "
        f"the model never trained on. Pretraining took the model's head units from {numbers['initial_head_pnmi']:.3f} "
        f"(untrained) to {head:.3f}; log-mel k-means, with no learning at all, scores {logmel:.3f} (the head units reach "
        f"{numbers['head_over_logmel']:.2f}x of it, the best layer's features + k-means "
        f"{numbers['kmeans_over_logmel']:.2f}x).",
        f"At this scale ({results['parameters_millions']:.1f}M parameters, {results['corpus']['minutes']:g} min of "
        f"synthetic speech) the learnt units {verdict} these classical features. The paper's units (PNMI 0.66) come "
        f"from a 12-layer model trained for 400k steps on 16 GPUs; {larger}.",
        'More in the README, section "The two commands".',
    ])  # fmt: skip


def report(results: dict[str, Any]) -> str:
    """The demo's printed report: the table of every row of `results["rows"]`, then the closing lines."""
    return results_table(results) + "\n\n" + closing_lines(results)


__all__ = [
    "HELDOUT_VOICES",
    "SCALES",
    "TRAIN_VOICES",
    "DemoSettings",
    "closing_lines",
    "comparison",
    "report",
    "results_table",
    "run_demo",
]
