"""The main job end to end, in its smoke size: corpora -> baselines -> pretraining with a learning curve ->
every row scored on held-out speech -> table, results.json and plots."""

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
    for row in (r"baseline\s+logmel k-means", r"baseline\s+mfcc k-means", r"initial\s+head\s+\d",
                r"trained\s+head\s+\d", r"trained\s+features \+ k-means\s+\d"):  # fmt: skip
        assert re.search(rf"^{row}\s+\d\.\d{{3}}\s", printed, flags=re.M), (row, printed)
    assert "x the log-mel PNMI" in printed
    for row in (r"baseline\s+logmel k-means", r"initial\s+head\s+\d", r"trained\s+head\s+\d"):  # the LM table
        assert re.search(rf"^{row}\s+\d\.\d{{3}}\s+\d\.\d{{3}}\s+\d\.\d{{3}}$", printed, flags=re.M), (row, printed)

    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    k = results["clusters"]
    assert {r["units"] for r in rows if r["model"] == "baseline"} == {"logmel k-means", "mfcc k-means"}
    for model in ("initial", "trained"):
        heads = [r for r in rows if r["model"] == model and r["units"] == "head"]
        kmeans = [r for r in rows if r["model"] == model and r["units"] == "features + k-means"]
        assert heads and len(kmeans) >= 2 and sum(r["best"] for r in kmeans) == 1
    for row in rows:
        assert isinstance(row["pnmi"], float) and row["codebook_size"] == k
        assert row["num_frames"] == rows[0]["num_frames"]  # every row scored on the same held-out frames
    assert results["loss"]["trained"] != results["loss"]["initial"]  # the model did train
    assert [e["step"] for e in results["learning_curve"]] == [0, 2, 4]  # 0: the initial model's rows
    initial_heads = {str(r["layer"]): r["pnmi"] for r in rows if r["model"] == "initial" and r["units"] == "head"}
    assert results["learning_curve"][0]["head"] == initial_heads
    layers = [str(layer) for layer in range(1, 5)]  # the tiny model's 4 layers: head units and features + k-means
    assert all(sorted(e["kmeans"]) == layers and len(e["head"]) == 2 for e in results["learning_curve"])
    assert [r["model"] for r in results["lm"]] == ["baseline", "initial", "trained"]
    assert all(0 <= r["lexical"] <= 1 and 0 <= r["syntactic"] <= 1 for r in results["lm"])
    assert set(results["goal"]) >= {"head_over_logmel", "kmeans_over_logmel", "head_goal_met", "kmeans_goal_met"}

    # held out: other sentences, and voices never heard in training
    texts = {json.loads(line)["text"] for line in (out / "corpus" / "manifest.jsonl").read_text().splitlines()}
    heldout = [json.loads(line) for line in (out / "heldout" / "manifest.jsonl").read_text().splitlines()]
    assert not texts & {r["text"] for r in heldout}
    assert results["heldout"]["voices_not_in_training"]
    train_voices = set(results["corpus"]["voices"])
    assert not set(results["heldout"]["voices_not_in_training"]) & train_voices

    for name in ("learning_curve.png", "phone_unit_matrix_logmel.png", "phone_unit_matrix_trained.png",
                 "codebook_usage_trained.png", "loss_curve.png"):  # fmt: skip
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for folder in ("initial_model", "trained_model"):
        assert (out / folder / "model.safetensors").is_file()
    assert (out / "units" / "logmel.jsonl").is_file()

    # the unit files score the same through the command line
    head = next(r for r in rows if r["model"] == "trained" and r["units"] == "head")
    assert cli(["evaluate", "--alignments", str(out / "heldout" / "alignments.jsonl"),
                "--units", str(out / "units" / f"trained_head_layer{head['layer']}.jsonl"),
                "--codebook-size", str(k), "--output-dir", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["pnmi"] == pytest.approx(head["pnmi"])

    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(out / "trained_model")).__name__ == "SpidRModel"


def test_demo_rejects_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage line, then the error, status 2
        cli(["demo", "--max-steps", "0", "--output-dir", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "spidr-hf demo: error: argument --max-steps: must be a positive integer, got '0'"
    )
    assert not (tmp_path / "d").exists()
