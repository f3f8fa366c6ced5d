"""The main job end to end, in its smoke size: corpus -> pretraining -> units -> metrics and plots."""

from __future__ import annotations

import json
import re

import pytest

from spidr_hf.cli import main as cli
from spidr_hf.espeak import espeak_available


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_demo_smoke_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--smoke", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^PNMI\s+-?\d\.\d{3}\s+-?\d\.\d{3}$", printed, flags=re.M), printed

    results = json.loads((out / "results.json").read_text())
    for model in ("initial", "trained"):
        for key in ("pnmi", "phone_purity", "codebook_perplexity", "loss"):
            assert isinstance(results[model][key], float), (model, key)
    assert results["trained"]["loss"] != results["initial"]["loss"]  # the model did train
    for name in (
        "phone_unit_matrix_initial.png",
        "phone_unit_matrix_trained.png",
        "codebook_usage_initial.png",
        "codebook_usage_trained.png",
        "loss_curve.png",
    ):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for folder in ("initial_model", "trained_model"):
        assert (out / folder / "model.safetensors").is_file()
    assert (out / "units_trained" / "units.jsonl").is_file()
    assert (out / "corpus" / "alignments.jsonl").is_file()

    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(out / "trained_model")).__name__ == "SpidRModel"
