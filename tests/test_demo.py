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
    captured = capsys.readouterr()
    printed = captured.out
    assert_rows_and_closing_lines(printed)
    assert_no_raw_logs(captured)
    # one progress bar for pretraining, the loss in its postfix (off a terminal: a line per refresh)
    assert re.search(r"^pretrain: .*loss=\d", captured.err, flags=re.M), captured.err
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
    assert set(results["comparison"]) >= {"logmel_pnmi", "best_head_pnmi", "initial_head_pnmi", "head_over_logmel"}
    assert results["steps"] == results["max_steps"] == 4 and not results["stopped_by_time_budget"]
    logged = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [1, 2, 3, 4] and "train_runtime" in logged[-1]
    assert [r["model"] for r in results["lm"]] == ["baseline", "initial", "trained"]
    assert all(0 <= r["lexical"] <= 1 and 0 <= r["syntactic"] <= 1 for r in results["lm"])

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


@pytest.mark.slow
@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_gpu_scale_runs_end_to_end_on_a_cpu_in_smoke_size(tmp_path, capsys):
    """`--scale gpu` is the path a lent GPU runs (demo_gpu recipe, parallel rendering, time budget, bf16), here on
    the CPU with tiny numbers; `--quiet` leaves the table and its closing lines, nothing else."""
    out = tmp_path / "gpu"
    assert cli(["demo", "--scale", "gpu", "--device", "cpu", "--smoke", "--quiet", "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert_rows_and_closing_lines(captured.out)
    assert "this run is the one-GPU scale" in captured.out
    assert_no_raw_logs(captured)
    assert "pretrain" not in captured.err and "synthesizing" not in captured.err  # --quiet: no bars

    results = json.loads((out / "results.json").read_text())
    settings = results["settings"]
    assert (results["recipe"], results["device"], results["clusters"]) == ("demo_gpu", "cpu", 256)
    assert settings["render_workers"] >= 1 and settings["time_budget_s"] == 300.0 and settings["batch_seconds"] == 5.0
    assert results["steps"] == 2 and not results["stopped_by_time_budget"]
    assert results["parameters_millions"] > 10  # the demo_gpu model, not the tiny one
    assert {r["layer"] for r in results["rows"] if r["model"] == "trained" and r["units"] == "head"} == {5, 6, 7, 8}
    assert (out / "trained_model" / "model.safetensors").is_file()


def test_demo_on_cuda_without_a_gpu_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert cli(["demo", "--device", "cuda", "--smoke", "--output-dir", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.strip() == (
        "spidr-hf demo: error: --device cuda: no CUDA device is visible here; run with --device cpu."
    )
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", [["demo", "--smoke"], ["synth-corpus", "--minutes", "0.1"]])
def test_missing_espeak_is_one_line_with_the_install_command(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("spidr_hf.espeak._library_name", lambda: "libespeak-ng-not-here.so.9")
    out = tmp_path / "d"
    argv = [*command, "--output-dir", str(out)] if command[0] == "demo" else [command[0], str(out), *command[1:]]
    assert cli(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"spidr-hf {command[0]}: error: espeak-ng is not installed; install it: apt-get install espeak-ng"
    )
    assert not out.exists()


def assert_rows_and_closing_lines(printed: str) -> None:
    for row in (r"baseline\s+logmel k-means", r"baseline\s+mfcc k-means", r"initial\s+head\s+\d",
                r"trained\s+head\s+\d", r"trained\s+features \+ k-means\s+\d"):  # fmt: skip
        assert re.search(rf"^{row}\s+\d\.\d{{3}}\s", printed, flags=re.M), (row, printed)
    # the closing lines say what the table means, in a user's words; no internal goal
    assert re.search(r"^Pretraining: \d+ steps in \d+ s on cpu", printed, flags=re.M), printed
    assert "What the table shows: PNMI (0 to 1)" in printed and "log-mel k-means, with no learning at all" in printed
    assert "The paper's units (PNMI 0.66)" in printed
    assert "--device cuda --scale gpu` is the larger run" in printed or "this run is the one-GPU scale" in printed
    assert 'More in the README, section "The two commands".' in printed
    assert "goal" not in printed


def assert_no_raw_logs(captured) -> None:
    """The Trainer's log dicts go to training_log.jsonl, never to the terminal."""
    for stream in (captured.out, captured.err):
        assert "{'loss'" not in stream and "'train_runtime'" not in stream and "'grad_norm'" not in stream


def test_demo_rejects_bad_settings(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage line, then the error, status 2
        cli(["demo", "--max-steps", "0", "--output-dir", str(tmp_path / "d")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "spidr-hf demo: error: argument --max-steps: must be a positive integer, got '0'"
    )
    assert not (tmp_path / "d").exists()
