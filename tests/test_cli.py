"""The command-line conventions every command shares: flag spellings, --quiet, one error path, progress in logs."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
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
    "baseline": ["audio/", "--fit", "train/", "--features", "mfcc", "--clusters", "8", "--output-dir", "b",
                 "--audio-column", "speech"],
    "demo": ["--output-dir", "d", "--max-steps", "3", "--heldout-minutes", "1", "--curve-every", "2", "--scale", "gpu",
             "--device", "cpu", "--time-budget", "60"],
    "lm-train": ["u.jsonl", "--output-dir", "lm", "--max-steps", "3", "--block-size", "16", "--num-units", "8",
                 "--resume-from-checkpoint"],
    "lm-score": ["lm", "model", "bench/", "--output-dir", "s", "--layer", "2", "--batch-size", "4"],
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


# ------------------------------------------------------------------------------ user mistakes, command by command
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """Models, audio and bad files for the table of user mistakes below."""
    import json

    import torch
    from pretrain_worker import micro_config, write_speechlike_corpus

    from spidr_hf import SpidRForPreTraining, SpidRModel

    root = tmp_path_factory.mktemp("mistakes")
    torch.manual_seed(0)
    SpidRForPreTraining(micro_config()).save_pretrained(root / "model")
    SpidRModel(micro_config()).save_pretrained(root / "encoder")
    micro_config().to_json_file(root / "micro.json")
    (root / "config_only").mkdir()
    micro_config().to_json_file(root / "config_only" / "config.json")
    (root / "bert.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    write_speechlike_corpus(root / "audio", 2)
    (root / "empty").mkdir()
    write_speechlike_corpus(root / "short", 2, seconds=(0.05, 0.1))
    (root / "file.txt").write_text("a file")
    (root / "no_path.csv").write_text("file,num_samples\na.wav,16000\n")
    (root / "missing.csv").write_text("path,num_samples\n" + "".join(f"gone/{i}.wav,16000\n" for i in range(3)))
    (root / "list.jsonl").write_text("[1, 2]\n")
    (root / "align.jsonl").write_text(json.dumps({"id": "a", "phones": ["AA", "B"]}) + "\n")
    (root / "units_dir").mkdir()
    return SimpleNamespace(**{p.name.replace(".", "_"): p for p in root.iterdir()}, root=root)


PRETRAIN = ["--report-to", "none", "--max-steps", "2", "--per-device-max-batch-samples", "32000", "--max-samples", "16000"]
MISTAKES = {  # name: (command line, the error line's message)
    "extract-missing-model": (lambda f: ["extract", f.root / "nowhere", f.audio, "--output-dir", f.root / "o1"],
                              lambda f: f"model folder {f.root / 'nowhere'} does not exist."),
    "extract-model-without-weights": (lambda f: ["extract", f.config_only, f.audio, "--output-dir", f.root / "o2"],
                                      lambda f: f"model folder {f.config_only} has no weights (model.safetensors)"),
    "extract-head-units-of-an-encoder": (lambda f: ["extract", f.encoder, f.audio, "--output-dir", f.root / "o3",
                                                    "--units", "head", "--layer", "2"],
                                         lambda f: f"model {f.encoder} lacks prediction heads and codebooks"),
    "extract-output-is-a-file": (lambda f: ["extract", f.model, f.audio, "--output-dir", f.file_txt],
                                 lambda f: f"--output-dir {f.file_txt} is a file, not a folder"),
    "extract-empty-folder": (lambda f: ["extract", f.model, f.empty, "--output-dir", f.root / "o4"],
                             lambda f: f"no audio file in {f.empty}"),
    "extract-empty-shard": (lambda f: ["extract", f.model, f.audio / "utt000.wav", "--output-dir", f.root / "o5",
                                       "--shard", "3/4"],
                            lambda f: "shard 3/4 holds no file: the inputs have 1 file(s) for 4 shards."),
    "extract-non-object-line": (lambda f: ["extract", f.model, f.list_jsonl, "--output-dir", f.root / "o6"],
                                lambda f: f"{f.list_jsonl}:1: expected a JSON object with a 'path', got list"),
    "fit-kmeans-empty-folder": (lambda f: ["fit-kmeans", f.model, f.empty, "--layer", "2", "--clusters", "2"],
                                lambda f: f"no audio file in {f.empty}."),
    "evaluate-units-folder": (lambda f: ["evaluate", "--alignments", f.align_jsonl, "--units", f.units_dir,
                                         "--output-dir", f.root / "e1"],
                              lambda f: f"{f.units_dir} is a folder, not a JSON-lines file."),
    "evaluate-non-object-line": (lambda f: ["evaluate", "--alignments", f.list_jsonl, "--units", f.align_jsonl,
                                            "--output-dir", f.root / "e2"],
                                 lambda f: f"{f.list_jsonl}:1: expected a JSON object with 'id' and 'phones', got list"),
    "baseline-empty-folder": (lambda f: ["baseline", f.empty, "--clusters", "4", "--output-dir", f.root / "b1"],
                              lambda f: f"no audio found in {f.empty}."),
    "baseline-too-few-frames": (lambda f: ["baseline", f.audio, "--clusters", "100000", "--output-dir", f.root / "b2"],
                                lambda f: "cannot fit 100000 logmel clusters on "),
    "fit-kmeans-missing-model-before-walking": (lambda f: ["fit-kmeans", f.root / "nowhere", f.root / "no-audio", "--layer", "2",
                                                          "--clusters", "2"],
                                                lambda f: f"model folder {f.root / 'nowhere'} does not exist."),
    "evaluate-missing-alignments": (lambda f: ["evaluate", "--alignments", f.root / "gone.jsonl", "--units", f.align_jsonl,
                                               "--output-dir", f.root / "e3"],
                                    lambda f: f"--alignments {f.root / 'gone.jsonl'} does not exist."),
    "demo-output-is-a-file": (lambda f: ["demo", "--output-dir", f.file_txt, "--smoke"],
                              lambda f: f"--output-dir {f.file_txt} is a file, not a folder"),
    "convert-output-is-a-file": (lambda f: ["convert", f.file_txt, f.file_txt],
                                 lambda f: f"output folder {f.file_txt} is a file, not a folder"),
    "pretrain-missing-data": (lambda f: ["pretrain", "--train-data", f.root / "nowhere", "--output-dir", f.root / "p1",
                                         "--model-config", f.micro_json, *PRETRAIN],
                              lambda f: f"training data {f.root / 'nowhere'} does not exist."),
    "pretrain-empty-folder": (lambda f: ["pretrain", "--train-data", f.empty, "--output-dir", f.root / "p2",
                                         "--model-config", f.micro_json, *PRETRAIN],
                              lambda f: f"no usable audio in {f.empty}: 0 utterance(s) found"),
    "pretrain-only-short-files": (lambda f: ["pretrain", "--train-data", f.short, "--output-dir", f.root / "p3",
                                             "--model-config", f.micro_json, *PRETRAIN],
                                  lambda f: "2 shorter than min_samples (2000 samples at 16 kHz)."),
    "pretrain-csv-without-path": (lambda f: ["pretrain", "--train-data", f.no_path_csv, "--output-dir", f.root / "p4",
                                             "--model-config", f.micro_json, *PRETRAIN],
                                  lambda f: "needs a header with a 'path' column"),
    "pretrain-missing-files": (lambda f: ["pretrain", "--train-data", f.missing_csv, "--output-dir", f.root / "p5",
                                          "--model-config", f.micro_json, *PRETRAIN],
                               lambda f: "none of the 3 training utterance(s) can be read"),
    "pretrain-unknown-model-config": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.root / "p6",
                                                 "--model-config", "huge", *PRETRAIN],
                                      lambda f: "--model_config 'huge' is neither 'base', 'tiny', a config.json"),
    "pretrain-other-model-config": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.root / "p7",
                                               "--model-config", f.bert_json, *PRETRAIN],
                                    lambda f: f"{f.bert_json} configures a 'bert' model, not a SpidR model"),
    "pretrain-unknown-override": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.root / "p8",
                                             "--model-config", f.micro_json, "--config-overrides", "hiden_size=3", *PRETRAIN],
                                  lambda f: "--config_overrides 'hiden_size=3': key hiden_size isn't in the original config dict"),
    "pretrain-bad-config": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.root / "p9",
                                       "--model-config", f.micro_json, "--config-overrides", "num_attention_heads=0",
                                       *PRETRAIN],
                            lambda f: "num_attention_heads must be a positive integer, got 0."),
    "pretrain-unknown-recipe": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.root / "p10",
                                           "--recipe", "nosuch", *PRETRAIN],
                                lambda f: "recipe 'nosuch' is neither a file nor one of"),
    "pretrain-nothing-to-resume": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.root / "p11",
                                              "--model-config", f.micro_json, "--resume-from-checkpoint", "last", *PRETRAIN],
                                   lambda f: f"no complete checkpoint in {f.root / 'p11'} to resume from."),
    "pretrain-output-is-a-file": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.file_txt,
                                             "--model-config", f.micro_json, *PRETRAIN],
                                  lambda f: f"--output-dir {f.file_txt} is a file, not a folder"),
    "pretrain-mask-prob": (lambda f: ["pretrain", "--train-data", f.audio, "--output-dir", f.root / "p12",
                                      "--mask-prob", "2", *PRETRAIN],
                           lambda f: "--mask_prob must be a number in (0, 1], got 2.0."),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_every_command_reports_a_mistake_in_one_line_with_status_2(files, case, capsys):
    argv, message = MISTAKES[case]
    argv = [str(a) for a in argv(files)]
    with torch.backends.mkldnn.flags(enabled=False):
        assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith(f"spidr-hf {argv[0]}: error: ")]
    assert len(errors) == 1 and message(files) in errors[0], err[-2000:]
    assert "Traceback" not in err


def test_a_missing_model_folder_is_reported_without_loading_anything(tmp_path, monkeypatch, capsys):
    """It used to go to the Hugging Face Hub, retry for about 30 s and print an httpx error."""
    from spidr_hf import SpidRModel
    from spidr_hf.model_dir import check_model_source

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(SpidRModel, "from_pretrained", refuse)
    assert main(["extract", "spidr-base-missing", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "model folder spidr-base-missing does not exist." in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_source(tmp_path / "nowhere")
    assert check_model_source("some-org/some-model") == "some-org/some-model"  # a Hub id still goes to the Hub


def test_numbers_are_checked_by_the_parsers(capsys):
    for name, argv, flag in [
        ("extract", ["m", "a", "--output-dir", "o", "--max-batch-samples", "0"], "--max-batch-samples"),
        ("extract", ["m", "a", "--output-dir", "o", "--max-whole-s", "-1"], "--max-whole-s"),
        ("extract", ["m", "a", "--output-dir", "o", "--context-s", "nan"], "--context-s"),
        ("fit-kmeans", ["m", "a", "--layer", "2", "--clusters", "0"], "--clusters"),
        ("evaluate", ["--output-dir", "o", "--codebook-size", "-1"], "--codebook-size"),
        ("synth-corpus", ["out", "--minutes", "0"], "--minutes"),
        ("baseline", ["a", "--clusters", "0", "--output-dir", "o"], "--clusters"),
        ("demo", ["--heldout-minutes", "-1"], "--heldout-minutes"),
        ("demo", ["--curve-every", "0"], "--curve-every"),
        ("demo", ["--time-budget", "0"], "--time-budget"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            load_command(name).build_parser().parse_args(argv)
        assert exit_info.value.code == 2
        assert f"argument {flag}: must be a " in capsys.readouterr().err
