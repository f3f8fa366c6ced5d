"""The command-line conventions every command shares: flag spellings, --quiet, one error path, progress in logs."""

from __future__ import annotations

import io

import pytest
from spidr_hf.training import parse_pretraining_args

from spidr_hf.cli import COMMANDS, load_command, main
from spidr_hf.progress import LogLines, progress_bar, set_quiet

# one call per argparse command, with every flag spelt kebab-case
KEBAB = {
    "convert": ["ckpt.pt", "out", "--model-type", "dinosr"],
    "extract": ["model", "audio/", "--output-dir", "feats", "--max-batch-samples", "8", "--store-dtype", "fp16",
                "--max-whole-s", "30", "--audio-column", "speech", "--num-workers", "0"],
    "fit-kmeans": ["model", "audio/", "--layer", "6", "--clusters", "5", "--max-frames", "10", "--output-dir", "k"],
    "evaluate": ["--alignments", "a.jsonl", "--units", "u.jsonl", "--output-dir", "e", "--codebook-size", "4",
                 "--exclude-silence", "--features-extension", ".npy"],
    "synth-corpus": ["corpus", "--minutes", "0.5", "--overwrite"],
    "demo": ["--output-dir", "d", "--max-steps", "3", "--heldout-minutes", "1", "--curve-every", "2"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(KEBAB))
def test_snake_case_spellings_of_kebab_flags_are_accepted(name):
    parser = load_command(name).build_parser()
    kebab = parser.parse_args(KEBAB[name])
    snake = parser.parse_args(["--" + t[2:].replace("-", "_") if t.startswith("--") else t for t in KEBAB[name]])
    assert vars(snake) == vars(kebab)
    assert kebab.quiet is False and parser.parse_args([*KEBAB[name], "--quiet"]).quiet is True


def test_pretrain_takes_both_spellings(tmp_path):
    kebab = parse_pretraining_args(["--output-dir", str(tmp_path), "--train-data", "a/", "--max-steps", "5",
                                    "--per-device-max-batch-samples", "400000", "--model-config", "tiny"])  # fmt: skip
    snake = parse_pretraining_args(["--output_dir", str(tmp_path), "--train_data", "a/", "--max_steps", "5",
                                    "--per_device_max_batch_samples", "400000", "--model_config", "tiny"])  # fmt: skip
    assert kebab.to_dict() == snake.to_dict() and kebab.max_steps == 5 and kebab.train_data == "a/"


def test_every_command_takes_quiet_and_debug():
    for name in COMMANDS:
        text = _help(name)
        assert "--quiet" in text and "--debug" in text, name


def _help(name: str) -> str:
    if name == "pretrain":
        from spidr_hf.commands import pretrain

        return pretrain.__doc__
    return load_command(name).build_parser().format_help()


def test_user_mistakes_end_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    assert main(["convert", missing, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"spidr-hf convert: error: No checkpoint at {missing}.\n"
    assert main(["pretrain", "--output-dir", str(tmp_path / "run"), "--report-to", "none"]) == 2
    assert capsys.readouterr().err.endswith("spidr-hf pretrain: error: --train-data (a folder or manifest of audio) is required.\n")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        main(["convert", missing, str(tmp_path / "out"), "--debug"])
    monkeypatch.setenv("SPIDR_HF_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        main(["convert", missing, str(tmp_path / "out")])


def test_progress_off_a_terminal_is_a_line_every_few_percent():
    log = io.StringIO()
    with LogLines(total=1000, desc="work", file=log) as bar:
        for _ in range(1000):
            bar.update(1)
            bar.set_postfix(done=bar.n)
    lines = log.getvalue().splitlines()
    assert 20 <= len(lines) <= 23 and "\r" not in log.getvalue()
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%")


def test_quiet_silences_every_bar(capsys):
    set_quiet(True)
    try:
        with progress_bar(10, desc="hidden") as bar:
            bar.update(10)
    finally:
        set_quiet(False)
    assert capsys.readouterr().err == ""
    with progress_bar(10, desc="shown") as bar:  # stderr is captured here: not a terminal
        bar.update(10)
    assert "shown: 100%" in capsys.readouterr().err



def test_quiet_pretraining_prints_its_result_only(tmp_path, capsys):
    from pretrain_worker import micro_config, write_speechlike_corpus

    data = write_speechlike_corpus(tmp_path / "data", 2)[0].parent
    micro_config().to_json_file(tmp_path / "micro.json")
    argv = ["pretrain", "--model-config", str(tmp_path / "micro.json"), "--train-data", str(data),
            "--output-dir", str(tmp_path / "out"), "--max-steps", "2", "--logging-steps", "1", "--report-to", "none",
            "--per-device-max-batch-samples", "32000", "--max-samples", "16000", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"Wrote {tmp_path / 'out'}: model.safetensors, config.json, "
                                         "preprocessor_config.json, README.md, remote code."]  # fmt: skip
    assert "pretrain:" not in captured.err and "loss" not in captured.err
