"""Checkpoint conversion, save/load round trips, Auto classes and remote code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spidr_hf import SpidRConfig, SpidRForPreTraining, SpidRModel
from spidr_hf.cli import main as cli
from spidr_hf.convert import (
    CheckpointError,
    config_from_reference,
    load_converted_model,
    load_reference_state_dict,
)


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_converted_directory_layout(converted_dir):
    names = {p.name for p in converted_dir.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert {"configuration_spidr.py", "modeling_spidr.py", "feature_extraction_spidr.py"} <= names
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    config = json.loads((converted_dir / "config.json").read_text())
    assert config["model_type"] == "spidr" and config["auto_map"]["AutoModel"] == "modeling_spidr.SpidRModel"
    assert "Converted from the reference checkpoint" in (converted_dir / "README.md").read_text()


def test_conversion_is_lossless(fixture_dir, converted_dir):
    reference = load_reference_state_dict(fixture_dir / "checkpoint.pt")
    converted = load_file(converted_dir / "model.safetensors")
    flat = sum(t.numel() for k, t in reference.items() if k != "current_step")
    assert sum(t.numel() for k, t in converted.items() if k != "current_step") == flat
    assert torch.equal(
        converted["spidr.encoder.layers.1.attention.out_proj.weight"],
        reference["student.layers.1.attention.proj.weight"],
    )
    assert torch.equal(
        converted["teacher.layers.0.attention.qkv.weight"], reference["teacher.layers.0.attention.qkv.weight"]
    )
    assert torch.equal(converted["heads.1.bias"], reference["heads.1.0.bias"])
    assert torch.equal(converted["codebook_sums"][1], reference["codebooks.1.codebook"])
    assert torch.equal(converted["codebook_counts"][0], reference["codebooks.0.counts"])


def test_config_is_read_from_reference_config(converted_dir):
    config = SpidRConfig.from_pretrained(converted_dir)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 4, 4)
    assert (config.intermediate_size, config.conv_dim[0], config.num_conv_pos_embedding_groups) == (
        128,
        32,
        4,
    )
    assert (config.num_codebooks, config.codebook_size, config.codebook_layers) == (2, 16, [3, 4])
    assert config.hidden_dropout == 0.0 and config.head_input == "before_residual"


@pytest.mark.parametrize("wrap", ["bare", "model", "training", "ddp"])
def test_accepts_checkpoint_layouts(fixture_dir, tmp_path, expected, wrap):
    state = torch.load(fixture_dir / "checkpoint.pt", weights_only=True)["model"]
    if wrap == "bare":
        obj = state
    elif wrap == "model":
        obj = {"model": state}
    elif wrap == "training":
        obj = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "step": 7}
    else:
        obj = {"model": {f"module.{k}": v for k, v in state.items()}}
    src = tmp_path / "ckpt.pt"
    torch.save(obj, src)
    out = tmp_path / "out"
    assert cli(["convert", str(src), str(out), "--config", str(fixture_dir / "config.json")]) == 0
    model = SpidRModel.from_pretrained(out).eval()
    with torch.no_grad():
        features = model(expected["waveforms"][:1]).last_hidden_state[0]
    torch.testing.assert_close(features, expected["single.last_hidden_state"], atol=1e-5, rtol=0)


def test_dinosr_model_type(fixture_dir, tmp_path):
    state = load_reference_state_dict(fixture_dir / "checkpoint.pt")
    reference = json.loads((fixture_dir / "config.json").read_text())
    config = config_from_reference(state, reference, model_type="dinosr")
    assert config.head_input == "last_hidden_state" and config.ema_schedule == "dinosr"


def test_dinosr_freeze_step_freezes_the_teacher_too(fixture_dir, tmp_path):
    """The reference's one freeze_step freezes DinoSR's feature encoder and teacher; the card says so."""
    reference = json.loads((fixture_dir / "config.json").read_text())
    reference["model"]["freeze_step"] = 1_234
    (tmp_path / "config.json").write_text(json.dumps(reference))
    for model_type, teacher_frozen_at in (("dinosr", 1_234), ("spidr", SpidRConfig().ema_frozen_step)):
        out = tmp_path / model_type
        args = [str(fixture_dir / "checkpoint.pt"), str(out), "--config", str(tmp_path / "config.json")]
        assert cli(["convert", *args, "--model-type", model_type]) == 0
        config = SpidRConfig.from_pretrained(out)
        assert (config.freeze_feature_encoder_step, config.ema_frozen_step) == (1_234, teacher_frozen_at)
        card = (out / "README.md").read_text()
        assert "`freeze_step` (1234) sets" in card
        assert ("`ema_frozen_step`" in card) == (model_type == "dinosr")


def test_config_inferred_from_weights_without_reference_config(fixture_dir, caplog):
    state = load_reference_state_dict(fixture_dir / "checkpoint.pt")
    config = config_from_reference(state, None)
    assert (config.hidden_size, config.intermediate_size, config.num_codebooks, config.codebook_size) == (
        64,
        128,
        2,
        16,
    )
    assert config.num_conv_pos_embedding_groups == 4 and config.pos_conv_kernel == 19
    assert config.num_attention_heads == 1  # 64 dims per head: the warning tells the user to pass --config
    assert "Pass --config" in caplog.text


def test_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_reference_state_dict(bogus)
    other = tmp_path / "other.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, other)
    with pytest.raises(CheckpointError, match="not a SpidR/DinoSR checkpoint"):
        load_reference_state_dict(other)
    with pytest.raises(FileNotFoundError):
        load_reference_state_dict(tmp_path / "missing.pt")


def test_refuses_arbitrary_pickles(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"student.layers.0.x": torch.zeros(1)}, "obj": Path("x")}, evil)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_reference_state_dict(evil)


def test_refuses_missing_and_unexpected_keys(fixture_dir):
    state = load_reference_state_dict(fixture_dir / "checkpoint.pt")
    reference = json.loads((fixture_dir / "config.json").read_text())
    config = config_from_reference(state, reference)
    missing = {k: v for k, v in state.items() if k != "student.layers.2.final_layer_norm.bias"}
    with pytest.raises(CheckpointError, match="missing.*final_layer_norm.bias"):
        load_converted_model(missing, config)
    with pytest.raises(CheckpointError, match="Unexpected keys.*extra_head"):
        load_converted_model({**state, "extra_head.weight": torch.zeros(1)}, config)


def test_refuses_a_config_of_another_model(fixture_dir):
    state = load_reference_state_dict(fixture_dir / "checkpoint.pt")
    reference = json.loads((fixture_dir / "config.json").read_text())
    reference["model"]["encoder_num_layers"] = 6
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        config_from_reference(state, reference)


def test_cli_reports_bad_checkpoint_without_traceback(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"\x00" * 10)
    assert cli(["convert", str(bogus), str(tmp_path / "out")]) == 2  # the one error path returns the status
    assert "spidr-hf convert: error" in capsys.readouterr().err


def test_save_pretrained_round_trip_is_safetensors_only(converted_dir, tmp_path, expected):
    model = SpidRForPreTraining.from_pretrained(converted_dir)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    again = SpidRForPreTraining.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_auto_classes_in_a_fresh_process(converted_dir, tmp_path):
    code = f"""
import spidr_hf, torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForPreTraining
assert type(AutoConfig.from_pretrained({str(converted_dir)!r})).__name__ == "SpidRConfig"
model = AutoModel.from_pretrained({str(converted_dir)!r})
assert type(model).__name__ == "SpidRModel", type(model)
assert type(AutoModelForPreTraining.from_pretrained({str(converted_dir)!r})).__name__ == "SpidRForPreTraining"
fe = AutoFeatureExtractor.from_pretrained({str(converted_dir)!r})
assert type(fe).__name__ == "SpidRFeatureExtractor"
"""
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    # the teacher, heads and codebooks of a pretraining checkpoint are dropped without a report
    assert "UNEXPECTED" not in result.stderr and "newly initialized" not in result.stderr


def test_trust_remote_code_without_the_package(converted_dir, tmp_path, expected):
    waves = tmp_path / "waves.pt"
    torch.save(expected["waveforms"][:1].clone(), waves)
    code = f"""
import sys
sys.modules["spidr_hf"] = None  # any import of the package now fails
import torch
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained({str(converted_dir)!r}, trust_remote_code=True).eval()
fe = AutoFeatureExtractor.from_pretrained({str(converted_dir)!r}, trust_remote_code=True)
assert not type(model).__module__.startswith("spidr_hf"), type(model).__module__
inputs = fe(torch.load({str(waves)!r})[0].numpy(), sampling_rate=16000, return_tensors="pt")
with torch.no_grad():
    out = model(**inputs).last_hidden_state
torch.save(out, {str(tmp_path / "out.pt")!r})
"""
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    # the fixture waveform is already standardised, so the extractor leaves it (almost) unchanged
    torch.testing.assert_close(
        torch.load(tmp_path / "out.pt")[0], expected["single.last_hidden_state"], atol=1e-4, rtol=0
    )
