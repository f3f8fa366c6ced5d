"""The tiny-recipe search of docs/TINY_RECIPE.md: train the tiny SpidR with one setting changed at a time
and score its units on held-out speech as it learns, with the measurements that explain what happened.

Every run uses the demo's corpora (`spidr_hf.demo`: 12 minutes of training speech in five voices,
4 minutes of held-out speech of other sentences, two of its four voices never heard in training)
and its scoring (`spidr_hf.unit_scores`: k-means fitted on 3 minutes of training speech, k = the
codebook size). Every `--every` steps it records, on the held-out corpus:

* PNMI of each codebook layer's head units and of k-means units of each layer's features;
* the teacher's targets: their effective rank (exp of the entropy of the normalised singular
  values of the instance-normalised codebook-layer outputs), how many codewords they use, and
  the PNMI of the codeword labels themselves;
* how far the teacher has moved from its initialisation (relative L2 distance of its weights);
* the share of the feature encoder's output variance that changes over time (1 = all of it,
  0 = every frame the same vector): the early collapse the search found;
* the training log's target and prediction perplexities (mean over codebooks).

Usage::

    python benchmarks/tiny_recipe_search.py --list
    python benchmarks/tiny_recipe_search.py paper_tiny recipe --steps 3000 --every 500 --out runs/search
    python benchmarks/tiny_recipe_search.py --all --steps 1500      # every variant (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from spidr_hf.modeling import SpidRConfig, SpidRForPreTraining, masked_instance_norm
from spidr_hf.training import SpidRPretrainer, SpidRTrainingArguments, load_recipe
from transformers import TrainerCallback, set_seed

from spidr_hf.audio import standardize
from spidr_hf.demo import HELDOUT_VOICES, TRAIN_VOICES
from spidr_hf.synth import synthesize_corpus
from spidr_hf.unit_scores import AlignedCorpus, UnitQualityCallback, score_units

# The tiny_cpu recipe before the search (the paper's architecture at tiny size, 1e-3, spans of 10 at 0.8)
PAPER_TINY_MODEL = {"num_conv_pos_embedding_layers": 5, "num_conv_pos_embeddings": 95, "codebook_decay": 0.9,
                    "feat_extract_norm": "layer_norm"}  # fmt: skip
PAPER_TINY_TRAINING = {"mask_prob": 0.8, "mask_length": 10, "learning_rate": 1e-3}

# name -> (SpidRConfig.tiny() overrides, SpidRTrainingArguments overrides), each on top of the paper-tiny setting
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "paper_tiny": ({}, {}),
    "lr_3e-4": ({}, {"learning_rate": 3e-4}),
    "lr_1e-4": ({}, {"learning_rate": 1e-4}),
    "mask_0.5x5": ({}, {"mask_prob": 0.5, "mask_length": 5}),
    "mask_0.3x3": ({}, {"mask_prob": 0.3, "mask_length": 3}),
    "teacher_slow": ({"ema_start_decay": 0.9999}, {}),
    "teacher_fast": ({"ema_start_decay": 0.99, "ema_timescale": 1000.0}, {}),
    "codebook_decay_0.5": ({"codebook_decay": 0.5}, {}),
    "codebook_decay_0.999": ({"codebook_decay": 0.999}, {}),
    "codebooks_16": ({"codebook_size": 16}, {}),
    "codebooks_on_all_layers": ({"num_codebooks": 4, "codebook_decay": 0.5}, {"mask_prob": 0.5, "mask_length": 5}),
    "batch_x4": ({}, {"per_device_max_batch_samples": 768_000}),
    "long_warmup": ({"codebook_decay": 0.5}, {"mask_prob": 0.5, "mask_length": 5, "scale_lr_schedule_to_max_steps": False,
                                              "lr_warmup_steps": 1000, "lr_hold_steps": 500, "lr_decay_steps": 1}),
    "posconv_depth_1": ({"num_conv_pos_embedding_layers": 1, "num_conv_pos_embeddings": 19, "codebook_decay": 0.5},
                        {"mask_prob": 0.5, "mask_length": 5}),
    "posconv_1_frozen_cnn": ({"num_conv_pos_embedding_layers": 1, "num_conv_pos_embeddings": 19, "codebook_decay": 0.5,
                              "freeze_feature_encoder_step": 0}, {"mask_prob": 0.5, "mask_length": 5}),
    "posconv_1_weight_decay_1": ({"num_conv_pos_embedding_layers": 1, "num_conv_pos_embeddings": 19, "codebook_decay": 0.5},
                                 {"mask_prob": 0.5, "mask_length": 5, "weight_decay": 1.0}),
    "group_norm_posconv_1": ({"feat_extract_norm": "group_norm", "num_conv_pos_embedding_layers": 1,
                              "num_conv_pos_embeddings": 19, "codebook_decay": 0.5}, {"mask_prob": 0.5, "mask_length": 5}),
    "group_norm_posconv_5": ({"feat_extract_norm": "group_norm", "codebook_decay": 0.5}, {"mask_prob": 0.5, "mask_length": 5}),
    "group_norm_posconv_1_lr_2e-3": ({"feat_extract_norm": "group_norm", "num_conv_pos_embedding_layers": 1,
                                      "num_conv_pos_embeddings": 19, "codebook_decay": 0.5},
                                     {"mask_prob": 0.3, "mask_length": 3, "learning_rate": 2e-3}),
    "posconv_1_width_256": ({"hidden_size": 256, "intermediate_size": 512, "num_conv_pos_embedding_layers": 1,
                             "num_conv_pos_embeddings": 19, "codebook_decay": 0.5}, {"mask_prob": 0.5, "mask_length": 5}),
    "recipe": None,  # the tiny_cpu recipe as it ships
}  # fmt: skip


def render_corpora(root: Path, minutes: float) -> tuple[Path, Path]:
    """The demo's training and held-out corpora (`minutes` and a third of it), rendered once under `root`."""
    train, heldout = root / f"corpus_{minutes:g}", root / f"heldout_{minutes:g}"
    if not (heldout / "alignments.jsonl").is_file():
        info = synthesize_corpus(train, minutes, seed=0, voices=TRAIN_VOICES, progress=False, overwrite=True)
        synthesize_corpus(heldout, minutes / 3, seed=1, voices=HELDOUT_VOICES, progress=False, overwrite=True,
                          exclude_texts={u.text for u in info.utterances})  # fmt: skip
    return train, heldout


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy) of the normalised squared singular values of the centred rows of `x`."""
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s.square() / s.square().sum()
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


class Diagnostics(TrainerCallback):
    """Teacher targets, teacher drift and feature-encoder collapse on held-out speech, every `every` steps."""

    def __init__(
        self, model: SpidRForPreTraining, heldout: AlignedCorpus, every: int, utterances: int = 40
    ) -> None:
        self.every, self.history = every, []
        self.waves = heldout.waves[:utterances]
        self.phones = [p for labels in heldout.phones[:utterances] for p in labels]
        self.heldout = heldout
        self.initial_teacher = [p.detach().clone() for p in model.teacher.parameters()]

    @torch.no_grad()
    def measure(self, model: SpidRForPreTraining, step: int) -> dict[str, Any]:
        model.eval()
        config = model.config
        targets = {layer: [] for layer in config.codebook_layers}
        temporal, total = 0.0, 0.0
        for wave in self.waves:
            features = model.spidr.project_features(torch.from_numpy(standardize(wave))[None])
            centred = features - features.mean(1, keepdim=True)
            temporal, total = temporal + float(centred.square().sum()), total + float(features.square().sum())
            teacher = model.teacher(features, None, output_before_residual=True)
            for layer in config.codebook_layers:
                targets[layer].append(
                    masked_instance_norm(teacher.before_residual_states[layer - 1].float(), None)[0]
                )
        entry: dict[str, Any] = {"step": step, "feature_temporal_variance": temporal / total}
        for index, layer in enumerate(config.codebook_layers):
            x = torch.cat(targets[layer])
            labels = torch.cdist(x, model.codewords[index].float()).argmin(-1)
            metrics, _ = score_units(
                [labels.numpy()], _one_utterance(self.heldout, self.phones), config.codebook_size
            )
            entry[f"target_rank_layer{layer}"] = effective_rank(x)
            entry[f"target_codewords_layer{layer}"] = int(labels.unique().numel())
            entry[f"target_pnmi_layer{layer}"] = metrics["pnmi"]
        moved = sum(
            float((p - q).square().sum())
            for p, q in zip(model.teacher.parameters(), self.initial_teacher, strict=True)
        )
        entry["teacher_drift"] = (moved / sum(float(q.square().sum()) for q in self.initial_teacher)) ** 0.5
        model.train()
        self.history.append(entry)
        return entry

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(model, state.global_step)


def _one_utterance(corpus: AlignedCorpus, phones: list[str]) -> AlignedCorpus:
    return AlignedCorpus(corpus.root, ["all"], [], [phones], corpus.phone_order)


def run(
    name: str,
    steps: int,
    every: int,
    out: Path,
    corpora: tuple[Path, AlignedCorpus, AlignedCorpus],
    config_overrides: str = "",
    extra_training: dict[str, Any] | None = None,
) -> dict:
    train, heldout, fit = corpora
    recipe = load_recipe("tiny_cpu")
    if VARIANTS[name] is None:  # the recipe as it ships
        model_overrides, training_overrides = {}, {}
        config = SpidRConfig.tiny()
        if recipe.get("config_overrides"):
            config.update_from_string(recipe["config_overrides"])
    else:
        model_overrides, training_overrides = VARIANTS[name]
        config = SpidRConfig.tiny(**{**PAPER_TINY_MODEL, **model_overrides})
        recipe = {**recipe, **PAPER_TINY_TRAINING, **training_overrides}
    if config_overrides:
        config.update_from_string(config_overrides)
        model_overrides = {**model_overrides, "config_overrides": config_overrides}
    training_overrides = {**training_overrides, **(extra_training or {})}
    recipe.update(training_overrides)
    recipe.pop("config_overrides", None)
    recipe.pop("model_config", None)
    set_seed(0)
    model = SpidRForPreTraining(config)
    curve = UnitQualityCallback(
        fit, heldout, config.codebook_size, every, range(1, config.num_hidden_layers + 1)
    )
    diagnostics = Diagnostics(model, heldout, every)
    args = SpidRTrainingArguments(**{**recipe, "train_data": str(train / "manifest.tsv"), "output_dir": str(out / name),
                                     "max_steps": steps, "save_steps": float(10**9), "logging_steps": 50.0, "seed": 0,
                                     "report_to": "none", "disable_tqdm": True})  # fmt: skip
    started = time.perf_counter()
    SpidRPretrainer(model, args, callbacks=[curve, diagnostics]).train()
    result = {"name": name, "model_overrides": model_overrides, "training_overrides": training_overrides,
              "steps": steps, "seconds": round(time.perf_counter() - started, 1), "curve": curve.history,
              "diagnostics": diagnostics.history}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    last, diag = curve.history[-1], diagnostics.history[-1]
    print(f"{name:<28} step {last['step']:>5}  head PNMI {max(last['head'].values()):.3f}  "
          f"k-means PNMI {max(last['kmeans'].values()):.3f} (layer {max(last['kmeans'], key=last['kmeans'].get)})  "
          f"target rank {min(v for k, v in diag.items() if k.startswith('target_rank')):.1f}  "
          f"feature temporal variance {diag['feature_temporal_variance']:.3f}", flush=True)  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"some of: {', '.join(VARIANTS)}")
    parser.add_argument("--all", action="store_true", help="every variant")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument(
        "--minutes", type=float, default=12.0, help="training speech (the demo's 12 by default)"
    )
    parser.add_argument(
        "--config-overrides", default="", help="SpidRConfig values on top of each variant: a=1,b=[2,3]"
    )
    parser.add_argument(
        "--training-overrides", type=json.loads, default={}, help="training values, JSON: {...}"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("runs/tiny_recipe_search"))
    args = parser.parse_args()
    if args.list:
        for name, value in VARIANTS.items():
            print(f"{name:<28} {value if value is not None else 'the tiny_cpu recipe as it ships'}")
        return
    names = list(VARIANTS) if args.all else args.variants
    unknown = sorted(set(names) - set(VARIANTS))
    if not names or unknown:
        parser.error(
            f"name variants to run (unknown: {unknown})" if unknown else "name variants to run, or --all"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train, heldout_dir = render_corpora(args.out / "data", args.minutes)
    data = (train, AlignedCorpus.load(heldout_dir), AlignedCorpus.load(train, max_minutes=args.minutes / 4))
    for name in names:
        run(name, args.steps, args.every, args.out, data, args.config_overrides, args.training_overrides)


if __name__ == "__main__":
    main()
