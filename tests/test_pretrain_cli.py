"""`spidr-hf pretrain`: flags and recipe files, a tiny run that AutoModel loads, TensorBoard logs; the step benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pretrain_worker import micro_config, write_speechlike_corpus
from spidr_hf.training import BUILTIN_RECIPES, SpidRTrainingArguments, load_recipe, parse_pretraining_args
from transformers import AutoFeatureExtractor, AutoModel

import spidr_hf  # noqa: F401  (registers SpidR with the Auto classes)
from spidr_hf.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _plain_cpu_convolutions():
    with torch.backends.mkldnn.flags(enabled=False):
        yield


def test_defaults_are_the_paper_recipe(tmp_path):
    args = parse_pretraining_args(["--output_dir", str(tmp_path)])
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (5e-4, 0.9, 0.95, 1e-6)
    assert (args.weight_decay, args.max_grad_norm, args.max_steps) == (0.01, 10.0, 400_000)
    assert (args.lr_warmup_steps, args.lr_hold_steps, args.lr_decay_steps) == (12_000, 188_000, 200_000)
    assert (args.init_lr_scale, args.final_lr_scale) == (0.01, 0.01)
    assert (args.per_device_max_batch_samples, args.min_samples, args.max_samples) == (3_800_000, 2_000, 320_000)
    assert (args.mask_prob, args.mask_length, args.min_masks) == (0.8, 10, 2)
    assert args.ddp_broadcast_buffers is False and args.remove_unused_columns is False
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert args.model_config == "base" and args.strict_audio is False


def test_flags_override_the_recipe_file_which_overrides_defaults(tmp_path):
    recipe = tmp_path / "run.toml"
    recipe.write_text(
        'model_config = "tiny"\nmax_steps = 50\n\n[optimizer]\nlearning_rate = 1e-3\nadam_beta2 = 0.98\n\n'
        "[masking]\nmask_length = 5\n"
    )
    args = parse_pretraining_args(["--output_dir", str(tmp_path), "--recipe", str(recipe), "--max_steps", "7"])
    assert (args.model_config, args.max_steps, args.learning_rate, args.adam_beta2, args.mask_length) == (
        "tiny", 7, 1e-3, 0.98, 5
    )
    (tmp_path / "typo.json").write_text(json.dumps({"learning_rat": 1e-3}))
    with pytest.raises(SystemExit):
        parse_pretraining_args(["--output_dir", str(tmp_path), "--recipe", str(tmp_path / "typo.json")])
    assert load_recipe("tiny_cpu") == BUILTIN_RECIPES["tiny_cpu"]
    tiny = parse_pretraining_args(["--output_dir", str(tmp_path), "--recipe", "tiny_cpu"])
    assert tiny.model_config == "tiny" and tiny.tri_stage_schedule().total_steps == tiny.max_steps


def test_pretrain_writes_a_model_automodel_loads(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 6)[0].parent
    out = tmp_path / "out"
    code = main(
        [
            "pretrain", "--model_config", "tiny", "--train_data", str(data), "--output_dir", str(out),
            "--max_steps", "3", "--save_steps", "2", "--logging_steps", "1", "--seed", "3",
            "--per_device_max_batch_samples", "32000", "--max_samples", "16000", "--report_to", "tensorboard",
            "--disable_tqdm", "true", "--lr_warmup_steps", "1", "--lr_hold_steps", "1", "--lr_decay_steps", "1",
        ]
    )  # fmt: skip
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_spidr.py"} <= names
    assert (out / "checkpoint-2" / "optimizer.pt").is_file()

    model = AutoModel.from_pretrained(out)
    extractor = AutoFeatureExtractor.from_pretrained(out)
    inputs = extractor(torch.randn(16_000).numpy(), sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        features = model(**inputs).last_hidden_state
    assert features.shape == (1, 49, model.config.hidden_size) and torch.isfinite(features).all()
    full = spidr_hf.SpidRForPreTraining.from_pretrained(out)
    assert int(full.current_step) == 3

    card = (out / "README.md").read_text()
    assert "optimizer steps**: 3" in card and "final target perplexity" in card and "6 utterances" in card

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = (out / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("loss", "learning_rate", "grad_norm", "target_perplexity", "prediction_perplexity", "ema_decay",
                 "skipped_files", "audio_seconds_per_second"):  # fmt: skip
        assert f"train/{name}" in tags, name


def test_pretrain_resumes_from_the_last_checkpoint(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 4)[0].parent
    micro_config().to_json_file(tmp_path / "micro.json")  # --model_config takes a config.json too
    common = [
        "pretrain", "--model_config", str(tmp_path / "micro.json"), "--train_data", str(data),
        "--output_dir", str(tmp_path / "out"),
        "--save_steps", "2", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
        "--per_device_max_batch_samples", "32000", "--max_samples", "16000",
    ]  # fmt: skip
    assert main([*common, "--max_steps", "2"]) == 0
    assert main([*common, "--max_steps", "3", "--resume_from_checkpoint", "last"]) == 0
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]


def test_arguments_refuse_inconsistent_lengths(tmp_path):
    with pytest.raises(ValueError, match="max_samples"):
        SpidRTrainingArguments(output_dir=str(tmp_path), min_samples=5_000, max_samples=4_000)
    with pytest.raises(ValueError, match="per_device_max_batch_samples"):
        SpidRTrainingArguments(output_dir=str(tmp_path), per_device_max_batch_samples=1_000)


@pytest.mark.slow
def test_step_benchmark_runs_on_cpu():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_pretrain_step.py"), "--small", "--steps", "1", "--batch", "2", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "device: CPU" in result.stdout
    for phase in ("feature extractor", "student", "teacher", "codebook assign", "backward", "optimizer", "EMA"):
        assert phase in result.stdout


def test_base_recipe_file_spells_out_the_defaults(tmp_path):
    recipe = REPO / "training" / "recipes" / "spidr_base.toml"
    from_file = parse_pretraining_args(["--output_dir", str(tmp_path), "--recipe", str(recipe)])
    defaults = parse_pretraining_args(["--output_dir", str(tmp_path)])
    for name, value in load_recipe(recipe).items():
        assert getattr(from_file, name) == getattr(defaults, name) == value, name


def test_model_config_resolves_names_files_and_directories(tmp_path):
    from spidr_hf.training import load_pretraining_model

    tiny = load_pretraining_model("tiny", "freeze_feature_encoder_step=5,ema_timescale=100.0")
    assert (tiny.config.hidden_size, tiny.config.freeze_feature_encoder_step, tiny.config.ema_timescale) == (128, 5, 100.0)
    tiny.config.to_json_file(tmp_path / "config.json")
    assert load_pretraining_model(str(tmp_path / "config.json")).config.freeze_feature_encoder_step == 5

    tiny.current_step.fill_(42)
    tiny.save_pretrained(tmp_path / "model")
    continued = load_pretraining_model(str(tmp_path / "model"), "codebook_decay=0.5")
    assert int(continued.current_step) == 42 and continued.config.codebook_decay == 0.5
    torch.testing.assert_close(continued.codebook_sums, tiny.codebook_sums)
    continued_seed_1 = load_pretraining_model(str(tmp_path / "model"), seed=1)  # the checkpoint's codebooks stay
    torch.testing.assert_close(continued_seed_1.codebook_sums, tiny.codebook_sums)
    # the run's seed draws the codebook start; the same seed, the same start whatever the global RNG did
    seeded = [load_pretraining_model("tiny", seed=seed).codebook_sums for seed in (1, 1, 2)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])
    with pytest.raises(ValueError, match="head_input"):
        load_pretraining_model("tiny", "head_input=neither")
    with pytest.raises(FileNotFoundError):
        load_pretraining_model(str(tmp_path / "missing"))


def test_help_lists_the_recipe_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_pretraining_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--train_data", "--per_device_max_batch_samples", "--model_config", "--recipe", "--mask_prob",
                 "--lr_warmup_steps", "--config_overrides", "--resume_from_checkpoint", "--dataloader_num_workers"):  # fmt: skip
        assert flag in text, flag
