"""Hostile inputs and faults, one policy per class (README, "Command line"), in every command that shares the code.

(a) outputs of another layout in the output folder: refused before any work, naming the files;
(b) weights pickles that ``weights_only`` refuses: one line naming the file and how to re-save it;
(c) sizes: config bounds, the parameter bytes a config asks for, unit ids beyond any codebook;
(d) resume files: a line that is not a complete record is reported with its number, only its file redone;
(e) OS errors on write: one line naming the path, exit 2, a rerun resumes; a name too long fails its file;
(f) sampling rates below 1 kHz fail their file.
The sweep at the end runs every command on a table of such inputs through ``spidr_hf.cli.main``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import SafetensorError, safe_open

import spidr_hf.runs
from spidr_hf import SpidRConfig, SpidRForPreTraining
from spidr_hf.audio import AudioDecodeError, load_audio
from spidr_hf.cli import main
from spidr_hf.evaluation import count_frames, load_features
from spidr_hf.extract.writers import read_done_ids
from spidr_hf.model_dir import check_model_fits

MICRO = dict(
    conv_dim=[16] * 7, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
    num_conv_pos_embedding_groups=4, num_codebooks=2, codebook_size=8, codebook_backend="torch",
)  # fmt: skip
MARKER = "pwned.txt"  # what the malicious pickle would create if it ever ran


class _Evil:
    """A pickle that runs code when loaded without ``weights_only``: it writes MARKER into the current folder."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "micro"
    SpidRForPreTraining(SpidRConfig(**MICRO)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def evil_model_dir(tmp_path_factory) -> Path:
    """A model folder whose only weights are a malicious ``pytorch_model.bin``."""
    path = tmp_path_factory.mktemp("evil") / "model"
    SpidRConfig(**MICRO).save_pretrained(path)
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil()))
    return path


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        sf.write(root / f"{name}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    return root


def _huge_config(tmp_path: Path, **values) -> Path:
    """A config.json of MICRO with ``values``, written as a user would (no validation)."""
    data = {**SpidRConfig(**MICRO).to_dict(), **values}
    path = tmp_path / "huge" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _cli(capsys, *argv) -> tuple[int, str, str]:
    """Run a command in-process; assert the policy every command keeps: no traceback, exit 2 is one line."""
    code = main([*map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"spidr-hf {argv[0]}: error: "), err
    return code, out, err


def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _extract(model_dir, audio_dir, out, *flags) -> list:
    return ["extract", model_dir, audio_dir, "--output-dir", out, "--num-workers", "0", "--quiet", *flags]


# ------------------------------------------------------------------------------ (a) output layouts
def test_units_beside_shards_of_another_count_are_refused_before_any_work(model_dir, audio_dir, tmp_path, capsys):
    out = tmp_path / "units"
    for shard in ("0/2", "1/2"):
        assert _cli(capsys, *_extract(model_dir, audio_dir, out, "--units", "head", "--layer", "3", "--shard", shard))[0] == 0
    before = _listing(out)
    code, _, err = _cli(capsys, *_extract(model_dir, audio_dir, out, "--units", "head", "--layer", "3"))
    assert code == 2 and "units.0-of-2.jsonl, units.1-of-2.jsonl" in err and "units.jsonl (a whole run)" in err
    assert "--output-dir" in err  # the fix
    code, _, err = _cli(capsys, *_extract(model_dir, audio_dir, out, "--units", "head", "--layer", "3", "--shard", "0/3"))
    assert code == 2 and "shard 0 of 3" in err
    assert _listing(out) == before

    whole = tmp_path / "whole"
    assert _cli(capsys, *_extract(model_dir, audio_dir, whole, "--units", "head", "--layer", "3"))[0] == 0
    code, _, err = _cli(capsys, *_extract(model_dir, audio_dir, whole, "--units", "head", "--layer", "3", "--shard", "1/2"))
    assert code == 2 and "(units.jsonl)" in err and not (whole / "units.1-of-2.jsonl").exists()


def test_features_units_and_npy_layers_do_not_mix(model_dir, audio_dir, tmp_path, capsys):
    out = tmp_path / "feats"
    assert _cli(capsys, *_extract(model_dir, audio_dir, out, "--format", "npy", "--layers", "2,3"))[0] == 0
    (out / "extraction.json").unlink()  # the layout is read from the file names, not only from the record
    before = _listing(out)
    code, _, err = _cli(capsys, *_extract(model_dir, audio_dir, out, "--format", "npy", "--layers", "2"))
    assert code == 2 and "a.layer2.npy" in err
    code, _, err = _cli(capsys, *_extract(model_dir, audio_dir, out, "--units", "head", "--layer", "3"))
    assert code == 2 and "a.layer2.npy" in err
    assert _listing(out) == before


def test_a_foreign_extraction_json_is_refused_not_replaced(model_dir, audio_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "extraction.json").write_text("my notes, not JSON")
    code, _, err = _cli(capsys, *_extract(model_dir, audio_dir, out))
    assert code == 2 and "extraction.json is not the record of an extraction" in err
    assert (out / "extraction.json").read_text() == "my notes, not JSON"


# ------------------------------------------------------------------------------ (b) untrusted weights
def test_a_malicious_pickle_is_named_never_run(evil_model_dir, audio_dir, tmp_path, capsys, monkeypatch, recwarn):
    monkeypatch.chdir(tmp_path)
    commands = [
        _extract(evil_model_dir, audio_dir, tmp_path / "out"),
        ["fit-kmeans", evil_model_dir, audio_dir, "--layer", "2", "--clusters", "2", "--quiet"],
        ["pretrain", "--model-config", evil_model_dir, "--train-data", audio_dir, "--output-dir", tmp_path / "run",
         "--max-steps", "1", "--quiet"],
    ]  # fmt: skip
    for argv in commands:
        code, _, err = _cli(capsys, *argv)
        assert code == 2, err
        assert f"{evil_model_dir / 'pytorch_model.bin'} is a pickle that torch.load(weights_only=True) refuses" in err
        assert "safe_serialization=True" in err and "spidr-hf convert" in err
    assert not (tmp_path / MARKER).exists()
    pt = tmp_path / "features.pt"
    pt.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError, match="features.pt is a pickle that torch.load"):
        load_features(pt)
    assert not (tmp_path / MARKER).exists()
    # torch's "Detected pickle protocol 4" warning would print above the one line
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)], [str(w.message) for w in recwarn]


@pytest.mark.slow
def test_pretrain_checkpoints_on_a_full_disk_and_pickled_states(tmp_path, capsys, monkeypatch):
    from pretrain_worker import micro_config, write_speechlike_corpus  # tests/ is on sys.path under pytest

    monkeypatch.chdir(tmp_path)
    data = write_speechlike_corpus(tmp_path / "data", 2)[0].parent
    micro_config().to_json_file(tmp_path / "micro.json")
    common = ["pretrain", "--model-config", tmp_path / "micro.json", "--train-data", data, "--output-dir",
              tmp_path / "out", "--save-steps", "1", "--report-to", "none", "--per-device-max-batch-samples", "32000",
              "--max-samples", "16000", "--quiet"]  # fmt: skip
    assert _cli(capsys, *common, "--max-steps", "1")[0] == 0
    real_save = torch.save

    def full_disk_at_checkpoint_2(obj, path, *args, **kwargs):
        if "checkpoint-2" in str(path):
            raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save says on a full disk
        return real_save(obj, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", full_disk_at_checkpoint_2)
        code, _, err = _cli(capsys, *common, "--max-steps", "2", "--resume-from-checkpoint", "last")
    assert code == 2 and "checkpoint-2: torch.save failed" in err and "rerun to resume" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-1"]

    assert _cli(capsys, *common, "--max-steps", "2", "--resume-from-checkpoint", "last")[0] == 0  # resumes
    assert json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2

    real_save({"state": _Evil()}, tmp_path / "out" / "checkpoint-2" / "optimizer.pt")
    code, _, err = _cli(capsys, *common, "--max-steps", "3", "--resume-from-checkpoint", "last")
    assert code == 2 and "checkpoint-2: one of its states" in err and "weights_only=True) refuses" in err
    assert not (tmp_path / MARKER).exists()


# ------------------------------------------------------------------------------ (c) sizes
@pytest.mark.parametrize(
    ("field", "value"), [("hidden_size", 2**31), ("num_hidden_layers", 10**7), ("codebook_size", 10**12)]
)
def test_absurd_configs_are_refused_by_their_bound(field, value):
    with pytest.raises(ValueError, match=f"{field} must be at most"):
        SpidRConfig(**{**MICRO, field: value})


def test_a_config_too_big_for_the_memory_is_refused_with_its_bytes(tmp_path, capsys):
    big = SpidRConfig(**{**MICRO, "hidden_size": 2**14, "num_attention_heads": 16, "intermediate_size": 2**16,
                         "num_hidden_layers": 512})  # fmt: skip
    asked = 4 * big.estimated_num_parameters()
    with pytest.raises(ValueError, match=f"asks for {asked:,} bytes"):
        check_model_fits(big, memory_bytes=asked - 1)
    assert check_model_fits(big, memory_bytes=asked) is big
    # the estimate is what building allocates, within a few percent
    micro = SpidRConfig(**MICRO)
    built = SpidRForPreTraining(micro)
    actual = sum(t.numel() for t in (*built.parameters(), *built.buffers()))
    assert abs(micro.estimated_num_parameters() - actual) / actual < 0.05


def test_unit_ids_beyond_any_codebook_are_refused_before_counting():
    with pytest.raises(ValueError, match=r"unit ids up to 999999999999 ask for a count table of 24,000,000,000,000 bytes"):
        count_frames([("u", ["a", "b"], [0, 10**12 - 1])])


# ------------------------------------------------------------------------------ (d) resume files
def test_every_incomplete_record_is_reported_by_line_and_only_it_is_redone(tmp_path, caplog):
    path = tmp_path / "units.jsonl"
    good = [json.dumps({"id": name, "units": [1]}) + "\n" for name in "abcdef"]
    path.write_text(good[0] + '{"id": "b", "uni\n' + good[2] + "[1, 2]\n" + good[3] + '{"units": [1]}\n' + good[4]
                    + '{"id": "f", "un')  # fmt: skip
    with caplog.at_level("WARNING"):
        assert read_done_ids(path) == {"a", "c", "d", "e"}
    reported = caplog.text
    for number, why in [(2, "not JSON"), (4, "a JSON list"), (6, "an object without a string 'id'"), (8, "cut short")]:
        assert f"line {number} is not a complete record ({why}" in reported
    assert path.read_text() == good[0] + good[2] + good[3] + good[4]
    path.write_text(good[0] + good[1][:-3])  # only a cut last line: truncated in place
    assert read_done_ids(path) == {"a"} and path.read_text() == good[0]


def test_a_resumed_extraction_redoes_only_the_bad_lines(model_dir, audio_dir, tmp_path, capsys):
    out = tmp_path / "units"
    assert _cli(capsys, *_extract(model_dir, audio_dir, out, "--units", "head", "--layer", "3"))[0] == 0
    lines = (out / "units.jsonl").read_text().splitlines(keepends=True)
    (out / "units.jsonl").write_text('"a string"\n' + lines[1] + lines[2])  # a's record replaced by junk
    code, out_text, _ = _cli(capsys, *_extract(model_dir, audio_dir, out, "--units", "head", "--layer", "3"))
    assert code == 0 and "1 file(s) written" in out_text and "2 already done" in out_text
    assert sorted(json.loads(line)["id"] for line in (out / "units.jsonl").read_text().splitlines()) == ["a", "b", "c"]


# ------------------------------------------------------------------------------ (e) write errors
def _full_disk_after(calls: int, monkeypatch, module=spidr_hf.runs, name="save_file", error=None):
    """Make ``module.name`` write ``calls`` times, then fail as a full disk does."""
    real, count = getattr(module, name), [0]

    def write(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise error or SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, write)


def test_a_full_disk_stops_the_run_in_one_line_and_a_rerun_resumes(model_dir, audio_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "feats"
    with monkeypatch.context() as patch:
        _full_disk_after(1, patch)
        code, _, err = _cli(capsys, *_extract(model_dir, audio_dir, out))
    assert code == 2 and f"cannot write {out / 'b.safetensors'}: no space left on the device" in err
    assert "rerun to resume" in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".extract")) == ["a.safetensors", "extraction.json"]
    code, out_text, _ = _cli(capsys, *_extract(model_dir, audio_dir, out))
    assert code == 0 and "2 file(s) written" in out_text and "1 already done" in out_text


def test_a_name_too_long_fails_its_file_not_the_run(model_dir, tmp_path, capsys):
    audio = tmp_path / "audio"
    audio.mkdir()
    wave = (0.1 * np.random.default_rng(1).standard_normal(8000)).astype(np.float32)
    long_name = "x" * 245
    for name in ("ok", long_name):
        sf.write(audio / f"{name}.wav", wave, 16000)
    out = tmp_path / "feats"
    code, out_text, _ = _cli(capsys, *_extract(model_dir, audio, out))
    assert code == 0 and "1 file(s) written" in out_text and "1 failed" in out_text
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures[0]["path"].endswith(f"{long_name}.wav") and "file name is too long" in failures[0]["error"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


# ------------------------------------------------------------------------------ (f) sampling rates
def test_a_sampling_rate_below_1khz_fails_its_file(model_dir, audio_dir, tmp_path, capsys):
    slow = tmp_path / "slow.wav"
    sf.write(slow, np.zeros(2, np.float32), 1)
    with pytest.raises(AudioDecodeError, match="sampling rate of 1 Hz, below 1000 Hz"):
        load_audio(slow)
    argv = _extract(model_dir, audio_dir / "a.wav", tmp_path / "out", "--units", "head", "--layer", "3")
    code, out_text, _ = _cli(capsys, *argv[:3], slow, *argv[3:])
    assert code == 0 and "1 failed" in out_text and "below 1000 Hz" in out_text


def test_missing_audio_and_link_loops_are_named_as_such(tmp_path):
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    with pytest.raises(AudioDecodeError, match="loop.wav is a loop of symbolic links"):
        load_audio(loop)
    with pytest.raises(AudioDecodeError, match="nope.wav does not exist"):  # libsndfile said "System error"
        load_audio(tmp_path / "nope.wav")


# ------------------------------------------------------------------------------ the sweep: every command
@dataclass
class Case:
    """A hostile input or fault for one command: the exit status and a phrase the message must hold."""

    name: str
    argv: Callable[[dict[str, Path], Path], list]  # (shared inputs, this case's folder) -> the command line
    code: int
    says: str
    setup: Callable[[dict[str, Path], Path], None] | None = None
    fault: Callable[[pytest.MonkeyPatch], None] | None = None
    rerun_says: str | None = None  # without the fault, a rerun exits 0 and says this (it resumed)


def _shards(env, here):
    for shard in ("0/2", "1/2"):
        assert main(list(map(str, _extract(env["model"], env["audio"], here / "out", "--units", "head", "--layer", "3",
                                           "--shard", shard)))) == 0  # fmt: skip


def _units_with_junk(env, here):
    assert main(list(map(str, _extract(env["model"], env["audio"], here / "out", "--units", "head", "--layer", "3")))) == 0
    lines = (here / "out" / "units.jsonl").read_text().splitlines(keepends=True)
    (here / "out" / "units.jsonl").write_text(lines[0] + "[1, 2]\n" + lines[2])


def _write_file(name: str, text: str):
    def setup(env, here):
        (here / name).parent.mkdir(parents=True, exist_ok=True)
        (here / name).write_text(text)

    return setup


def _full_disk(calls: int, error: OSError | None = None):
    return lambda patch: _full_disk_after(calls, patch, error=error)


def _units_file(unit: int):
    return _write_file("units.jsonl", json.dumps({"id": "u", "units": [0, unit]}) + "\n")


def _config_file(**values):
    return lambda env, here: _huge_config(here, **values)


def _with_tokenizer(model: str):
    """A copy of the sweep's `model` folder with a CTC tokenizer of its vocab_size saved beside it."""

    def setup(env, here):
        from spidr_hf.downstream import build_tokenizer

        shutil.copytree(env[model], here / model)
        vocab_size = json.loads((here / model / "config.json").read_text())["vocab_size"]
        build_tokenizer([[f"p{i}" for i in range(vocab_size - 2)]], "phones").save_pretrained(here / model)

    return setup


def _pretrain(*flags):
    return lambda env, here: ["pretrain", *flags, "--train-data", env["audio"], "--output-dir", here / "run",
                              "--max-steps", "1", "--quiet"]  # fmt: skip


def _units(*flags):
    return lambda env, here: _extract(env["model"], env["audio"], here / "out", "--units", "head", "--layer", "3", *flags)


EXTRACT_CASES = [
    Case("missing model", lambda env, here: _extract(here / "nope", env["audio"], here / "out"), 2, "does not exist"),
    Case("malicious pickle", lambda env, here: _extract(env["evil"], env["audio"], here / "out"), 2, "weights_only=True"),
    Case("absurd config", lambda env, here: _extract(here / "huge", env["audio"], here / "out"), 2,
         "hidden_size must be at most", setup=_config_file(hidden_size=2**31)),
    Case("whole run beside shards", _units(), 2, "another layout", setup=_shards),
    Case("other shard count", _units("--shard", "0/3"), 2, "another layout", setup=_shards),
    Case("foreign extraction.json", lambda env, here: _extract(env["model"], env["audio"], here / "out"), 2,
         "not the record of an extraction", setup=_write_file("out/extraction.json", "[]")),
    Case("symlink loop", lambda env, here: _extract(env["model"], env["loop"], here / "out"), 2, "loop of symbolic links"),
    Case("1 Hz file", lambda env, here: _extract(env["model"], env["bad_audio"], here / "out", "--units", "head",
                                                  "--layer", "3"), 0, "below 1000 Hz"),  # fmt: skip
    Case("name too long", lambda env, here: _extract(env["model"], env["bad_audio"], here / "out"), 0, "too long"),
    Case("disk full", lambda env, here: _extract(env["model"], env["audio"], here / "out"), 2, "no space left",
         fault=_full_disk(1), rerun_says="1 already done"),
    Case("quota exceeded", lambda env, here: _extract(env["model"], env["audio"], here / "out"), 2, "disk quota",
         fault=_full_disk(0, OSError(errno.EDQUOT, "Disk quota exceeded")), rerun_says="0 already done"),
    Case("read-only", lambda env, here: _extract(env["model"], env["audio"], here / "out"), 2, "read-only",
         fault=_full_disk(2, OSError(errno.EROFS, "Read-only file system")), rerun_says="2 already done"),
    Case("junk resume line", _units(), 0, "1 file(s) written", setup=_units_with_junk),
]
OTHER_CASES = [
    Case("fit-kmeans: malicious pickle", lambda env, here: ["fit-kmeans", env["evil"], env["audio"], "--layer", "2",
         "--clusters", "2"], 2, "weights_only=True"),  # fmt: skip
    Case("fit-kmeans: absurd config", lambda env, here: ["fit-kmeans", here / "huge", env["audio"], "--layer", "2",
         "--clusters", "2"], 2, "num_hidden_layers must be at most", setup=_config_file(num_hidden_layers=10**7)),  # fmt: skip
    Case("fit-kmeans: symlink loop", lambda env, here: ["fit-kmeans", env["model"], env["loop"], "--layer", "2",
         "--clusters", "2"], 2, "loop of symbolic links"),  # fmt: skip
    Case("fit-kmeans: disk full", lambda env, here: ["fit-kmeans", env["model"], env["audio"], "--layer", "2",
         "--clusters", "2", "--output-dir", here / "km", "--quiet"], 2, "no space left", fault=_full_disk(0),
         rerun_says="k-means"),  # fmt: skip
    Case("baseline: symlink loop", lambda env, here: ["baseline", env["loop"], "--clusters", "2", "--output-dir",
         here / "out"], 2, "loop of symbolic links"),  # fmt: skip
    Case("baseline: 1 Hz file", lambda env, here: ["baseline", env["bad_audio"] / "slow.wav", "--clusters", "2",
         "--output-dir", here / "out"], 2, "below 1000 Hz"),  # fmt: skip
    Case("baseline: disk full", lambda env, here: ["baseline", env["audio"], "--clusters", "2", "--output-dir",
         here / "out"], 2, "no space left", fault=_full_disk(0), rerun_says="units of 3 file(s)"),  # fmt: skip
    Case("evaluate: unit id 10**12", lambda env, here: ["evaluate", "--alignments", here / "alignments.jsonl",
         "--units", here / "units.jsonl", "--output-dir", here / "eval"], 2, "count table of",
         setup=lambda env, here: (_units_file(10**12)(env, here), _write_file(
             "alignments.jsonl", json.dumps({"id": "u", "phones": ["a", "b"]}) + "\n")(env, here))),  # fmt: skip
    Case("evaluate: symlink loop units", lambda env, here: ["evaluate", "--alignments", env["loop"], "--units",
         env["loop"], "--output-dir", here / "eval"], 2, "loop of symbolic links"),  # fmt: skip
    Case("pretrain: 10**7 layers", _pretrain("--model-config", "CONFIG"), 2, "num_hidden_layers must be at most",
         setup=_config_file(num_hidden_layers=10**7)),
    Case("pretrain: hidden_size 2**31", _pretrain("--model-config", "CONFIG"), 2, "hidden_size must be at most",
         setup=_config_file(hidden_size=2**31)),
    Case("pretrain: codebook_size 10**12", _pretrain("--model-config", "CONFIG"), 2, "codebook_size must be at most",
         setup=_config_file(codebook_size=10**12)),
    Case("pretrain: more bytes than the machine", _pretrain("--model-config", "CONFIG"), 2, "bytes",
         setup=_config_file(hidden_size=2**16, num_attention_heads=16, intermediate_size=2**18, num_hidden_layers=1024,
                            num_conv_pos_embedding_groups=16)),  # fmt: skip
    Case("pretrain: malicious pickle", lambda env, here: _pretrain("--model-config", env["evil"])(env, here), 2,
         "weights_only=True"),
    Case("convert: malicious pickle", lambda env, here: ["convert", env["evil"] / "pytorch_model.bin", here / "out"], 2,
         "safe_serialization=True"),
    Case("convert: symlink loop", lambda env, here: ["convert", env["loop"], here / "out"], 2, "loop of symbolic links"),
    Case("probe-phones: malicious pickle", lambda env, here: ["probe-phones", env["evil"], env["loop"], env["loop"],
         "--output-dir", here / "probe"], 2, "weights_only=True"),  # fmt: skip
    Case("probe-phones: absurd config", lambda env, here: ["probe-phones", here / "huge", env["loop"], env["loop"],
         "--output-dir", here / "probe"], 2, "hidden_size must be at most", setup=_config_file(hidden_size=2**31)),  # fmt: skip
    Case("probe-phones: symlink loop", lambda env, here: ["probe-phones", env["model"], env["loop"], env["loop"],
         "--output-dir", here / "probe"], 2, "loop of symbolic links"),  # fmt: skip
    Case("finetune-ctc: absurd config", lambda env, here: ["finetune-ctc", here / "huge", env["loop"], "--output-dir",
         here / "ctc"], 2, "num_hidden_layers must be at most", setup=_config_file(num_hidden_layers=10**7)),  # fmt: skip
    Case("finetune-ctc: symlink loop", lambda env, here: ["finetune-ctc", env["model"], env["loop"], "--output-dir",
         here / "ctc"], 2, "loop of symbolic links"),  # fmt: skip
    Case("transcribe: no tokenizer", lambda env, here: ["transcribe", env["model"], env["audio"], "--output-dir",
         here / "t"], 2, "has no CTC tokenizer"),  # fmt: skip
    Case("transcribe: malicious pickle", lambda env, here: ["transcribe", here / "evil", env["audio"], "--output-dir",
         here / "t"], 2, "weights_only=True", setup=_with_tokenizer("evil")),  # fmt: skip
    Case("transcribe: symlink loop", lambda env, here: ["transcribe", here / "model", env["loop"], "--output-dir",
         here / "t"], 2, "loop of symbolic links", setup=_with_tokenizer("model")),  # fmt: skip
    Case("transcribe: unknown device", lambda env, here: ["transcribe", here / "model", env["audio"], "--output-dir",
         here / "t", "--device", "banana"], 2, "is not a torch device", setup=_with_tokenizer("model")),  # fmt: skip
    Case("transcribe: no GPU", lambda env, here: ["transcribe", here / "model", env["audio"], "--output-dir",
         here / "t", "--device", "cuda:0"], 2, "no CUDA device is visible here", setup=_with_tokenizer("model"),
         fault=lambda patch: patch.setattr("torch.cuda.is_available", lambda: False)),  # fmt: skip
    Case("extract: unknown device", lambda env, here: _extract(env["model"], env["audio"], here / "out", "--device",
         "banana"), 2, "is not a torch device"),  # fmt: skip
    Case("synth-corpus: output is a file", lambda env, here: ["synth-corpus", here / "file", "--minutes", "0.01"], 2,
         "file", setup=_write_file("file", "x")),
    Case("demo: output is a file", lambda env, here: ["demo", "--output-dir", here / "file", "--smoke"], 2, "file",
         setup=_write_file("file", "x")),
]
CASES = EXTRACT_CASES + OTHER_CASES


def _complete_outputs(folder: Path) -> None:
    """Nothing half-written: no temporary file, every safetensors/JSON/JSONL output reads whole."""
    for path in folder.rglob("*"):
        assert ".tmp" not in path.name, f"a temporary file was left: {path}"
        if path.is_symlink() or not path.is_file():
            continue
        if path.suffix == ".safetensors":
            safe_open(str(path), "pt").keys()
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)


@pytest.fixture(scope="module")
def sweep_inputs(model_dir, evil_model_dir, audio_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "loop").symlink_to(root / "loop")
    bad = root / "bad_audio"
    bad.mkdir()
    wave = (0.1 * np.random.default_rng(2).standard_normal(8000)).astype(np.float32)
    sf.write(bad / "ok.wav", wave, 16000)
    sf.write(bad / f"{'x' * 245}.wav", wave, 16000)
    sf.write(bad / "slow.wav", np.zeros(2, np.float32), 1)
    return {"model": model_dir, "evil": evil_model_dir, "audio": audio_dir, "bad_audio": bad, "loop": root / "loop"}


@pytest.mark.slow
def test_every_command_holds_on_hostile_inputs(sweep_inputs, tmp_path, capsys, monkeypatch):
    """Each case: no traceback, exit 2 in one line (or 0 with the failure listed), nothing half-written, and
    where a fault stopped the run, a rerun without it resumes."""
    monkeypatch.chdir(tmp_path)  # where the malicious pickle would write its marker
    for number, case in enumerate(CASES):
        here = tmp_path / f"case{number}"
        here.mkdir()
        if case.setup is not None:
            case.setup(sweep_inputs, here)
            capsys.readouterr()
        argv = [here / "huge" if arg == "CONFIG" else arg for arg in case.argv(sweep_inputs, here)]
        with monkeypatch.context() as patch:
            if case.fault is not None:
                case.fault(patch)
            code, out, err = _cli(capsys, *argv)
        assert (code, case.says in out + err) == (case.code, True), f"{case.name}: exit {code}\n{out}\n{err}"
        _complete_outputs(here)
        if case.rerun_says is not None:
            code, out, err = _cli(capsys, *argv)
            assert code == 0 and case.rerun_says in out + err, f"{case.name} (rerun): exit {code}\n{out}\n{err}"
            _complete_outputs(here)
    assert not (tmp_path / MARKER).exists()
    assert len(CASES) >= 30
