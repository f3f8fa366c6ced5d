"""`spidr-hf extract`: outputs equal the model's, bad files are reported, reruns resume, long files are windowed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from spidr_hf.modeling import num_frames

from spidr_hf import SpidRConfig, SpidRForPreTraining
from spidr_hf.audio import load_audio, standardize
from spidr_hf.cli import main
from spidr_hf.extract import (
    WINDOWED_RELATIVE_TOLERANCE,
    FrameEncoder,
    length_batches,
    plan_windows,
    sample_frames,
)
from spidr_hf.sources import collect_inputs
from spidr_hf.units import KMeansQuantizer, layer_features, predict_units

ATOL = 1e-5
GOOD = {"a": 1.2, "sub/b": 2.5, "stereo": 1.0, "rate8k": 1.5}
LONG_SECONDS = 60.0


def _tone(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(150 + 60 * np.sin(2 * np.pi * 0.3 * t)) / rate
    gate = 0.2 + 0.8 * (np.sin(2 * np.pi * 2.5 * t) > 0)
    return (gate * 0.3 * np.sin(phase) + 0.03 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = SpidRConfig(
        conv_dim=[16] * 7, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        num_conv_pos_embedding_groups=4, num_codebooks=2, codebook_size=8,
        hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, codebook_backend="torch",
    )  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "tiny"
    SpidRForPreTraining(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir) -> SpidRForPreTraining:
    return SpidRForPreTraining.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    (root / "sub").mkdir()
    sf.write(root / "a.wav", _tone(GOOD["a"], seed=1), 16000)
    sf.write(root / "sub" / "b.flac", _tone(GOOD["sub/b"], seed=2), 16000)
    sf.write(
        root / "stereo.wav", np.stack([_tone(1.0, seed=3), _tone(1.0, seed=4)], 1), 16000, subtype="FLOAT"
    )
    sf.write(root / "rate8k.wav", _tone(GOOD["rate8k"], rate=8000, seed=5), 8000, subtype="FLOAT")
    sf.write(root / "long.flac", _tone(LONG_SECONDS, seed=6), 16000)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    (root / "notes.txt").write_text("not audio: ignored")
    return root


def _model_features(model, path: Path, layer: int, representation: str) -> torch.Tensor:
    """The model's features for one file, whole, without the extraction code path."""
    wave = torch.from_numpy(standardize(load_audio(path)))[None]
    features, _ = layer_features(model, wave, None, layer, representation)
    return features[0]


def _run(*args) -> int:
    return main(["extract", *map(str, args), "--num-workers", "0", "--quiet"])


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_features_of_a_folder(model_dir, model, audio_dir, tmp_path, capsys):
    out = tmp_path / "features"
    args = [model_dir, audio_dir, "--output-dir", out, "--layers", "2,3", "--representation", "before_residual",
            "--max-whole-s", "30"]  # fmt: skip
    assert _run(*args) == 0
    printed = capsys.readouterr().out
    assert "5 file(s) written" in printed and "1 failed" in printed and "corrupt.wav" in printed
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [Path(f["path"]).name for f in failures] == ["corrupt.wav"]

    files = {"a": "a.wav", "sub/b": "sub/b.flac", "stereo": "stereo.wav", "rate8k": "rate8k.wav"}
    for file_id, name in files.items():
        saved = load_file(out / f"{file_id}.safetensors")
        assert sorted(saved) == ["layer2", "layer3"]
        for layer in (2, 3):
            expected = _model_features(model, audio_dir / name, layer, "before_residual")
            torch.testing.assert_close(saved[f"layer{layer}"], expected, atol=ATOL, rtol=0)
    with safe_open(out / "a.safetensors", framework="pt") as f:
        assert f.metadata()["representation"] == "before_residual"

    # the 60 s file was windowed (20 s + 5 s of context): same frames, within the documented difference
    long = load_file(out / "long.safetensors")["layer3"]
    whole = _model_features(model, audio_dir / "long.flac", 3, "before_residual")
    assert long.shape == whole.shape == (num_frames(int(LONG_SECONDS * 16000)), 32)
    assert _relative_error(long, whole) < WINDOWED_RELATIVE_TOLERANCE

    # a rerun skips every finished file and retries only the bad one
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert _run(*args) == 0
    assert "0 file(s) written" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before

    # other options into the same folder are refused rather than mixed in
    assert _run(model_dir, audio_dir, "--output-dir", out, "--layers", "1") == 2
    assert "holds outputs of another extraction" in capsys.readouterr().err


def test_padded_batches_equal_single_files(model_dir, model, audio_dir, tmp_path):
    out = tmp_path / "batched"
    names = ["a.wav", "sub/b.flac", "stereo.wav", "rate8k.wav"]
    # 4 files of at most 2.5 s fit one padded batch of 200k samples
    assert (
        _run(model_dir, *(audio_dir / n for n in names), "--output-dir", out, "--max-batch-samples", "200000")
        == 0
    )
    for name in names:
        saved = load_file(out / f"{Path(name).stem}.safetensors")["layer3"]
        torch.testing.assert_close(
            saved, _model_features(model, audio_dir / name, 3, "hidden_state"), atol=ATOL, rtol=0
        )


def test_reference_decoding_downmixes_and_resamples(audio_dir):
    """What the comparisons above call "the model's" input: the channel mean, resampled with torchaudio."""
    import torchaudio.functional as AF

    stereo, _ = sf.read(audio_dir / "stereo.wav", dtype="float32")
    np.testing.assert_allclose(load_audio(audio_dir / "stereo.wav"), stereo.mean(1), atol=1e-7)
    low, _ = sf.read(audio_dir / "rate8k.wav", dtype="float32")
    expected = AF.resample(torch.from_numpy(low), 8000, 16000).numpy()
    np.testing.assert_allclose(load_audio(audio_dir / "rate8k.wav"), expected, atol=1e-6)


def test_npy_and_fp16(model_dir, model, audio_dir, tmp_path):
    out = tmp_path / "npy"
    assert _run(model_dir, audio_dir / "a.wav", "--output-dir", out, "--format", "npy", "--fp16") == 0
    array = np.load(out / "a.npy")
    assert array.dtype == np.float16
    expected = _model_features(model, audio_dir / "a.wav", 3, "hidden_state")
    np.testing.assert_allclose(array.astype(np.float32), expected.numpy(), atol=2e-3, rtol=2e-3)


def test_bf16_compute(model_dir, model, audio_dir, tmp_path):
    out = tmp_path / "bf16"
    assert _run(model_dir, audio_dir / "sub" / "b.flac", "--output-dir", out, "--dtype", "bf16") == 0
    features = load_file(out / "b.safetensors")["layer3"]
    expected = _model_features(model, audio_dir / "sub" / "b.flac", 3, "hidden_state")
    assert features.dtype == torch.float32 and _relative_error(features, expected) < 0.05


def test_head_units_jsonl_and_resume(model_dir, model, audio_dir, tmp_path):
    out = tmp_path / "units"
    assert _run(model_dir, audio_dir, "--output-dir", out, "--units", "head", "--layer", "3") == 0
    lines = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    by_id = {line["id"]: line for line in lines}
    assert sorted(by_id) == ["a", "long", "rate8k", "stereo", "sub/b"]
    for file_id, name in {"a": "a.wav", "sub/b": "sub/b.flac"}.items():
        wave = torch.from_numpy(standardize(load_audio(audio_dir / name)))[None]
        expected = predict_units(model, wave, layer=3)[0].tolist()
        assert by_id[file_id]["units"] == expected
        assert by_id[file_id]["num_frames"] == len(expected)
        assert by_id[file_id]["path"] == str(audio_dir / name)

    # a crash mid-line: the partial line is dropped, the file is redone, nothing is duplicated
    text = (out / "units.jsonl").read_text()
    kept = [line for line in text.splitlines() if json.loads(line)["id"] != "a"]
    (out / "units.jsonl").write_text("\n".join(kept) + '\n{"id": "a", "path": "x", "uni')
    assert _run(model_dir, audio_dir, "--output-dir", out, "--units", "head", "--layer", "3") == 0
    redone = [json.loads(line) for line in (out / "units.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in redone) == sorted(by_id)
    assert next(line for line in redone if line["id"] == "a")["units"] == by_id["a"]["units"]


def test_codeword_and_kmeans_units(model_dir, model, audio_dir, tmp_path):
    wave = torch.from_numpy(standardize(load_audio(audio_dir / "sub" / "b.flac")))[None]
    features, _ = layer_features(model, wave, None, 2, "before_residual")
    frames = sample_frames(model, [audio_dir / "sub", audio_dir / "a.wav"], layer=2, max_frames=150)
    assert frames.shape == (150, 32)  # b.flac (124 frames) and a.wav (59) in some order, cut at 150
    kmeans_dir = tmp_path / "kmeans"
    KMeansQuantizer.fit(frames, 4, layer=2, seed=0).save_pretrained(kmeans_dir)
    kmeans_file = next(kmeans_dir.iterdir())
    for kind, extra in (("codeword", ["--layer", "2"]), ("kmeans", ["--kmeans", kmeans_file])):
        out = tmp_path / kind
        assert _run(model_dir, audio_dir / "sub", "--output-dir", out, "--units", kind, *extra) == 0
        line = json.loads((out / "units.jsonl").read_text())
        assert line["id"] == "b" and line["num_frames"] == features.shape[1]
        assert min(line["units"]) >= 0
    quantizer = KMeansQuantizer.load(kmeans_file)
    assert line["units"] == quantizer(features[0]).tolist()


def test_fit_kmeans_cli_saves_units_that_extract_finds(model_dir, model, audio_dir, tmp_path, capsys):
    import shutil

    own_dir = tmp_path / "model"  # fit-kmeans writes into the model directory
    shutil.copytree(model_dir, own_dir)
    inputs = [audio_dir / "sub", audio_dir / "a.wav"]
    fit = ["fit-kmeans", own_dir, *inputs, "--layer", "2", "--max-frames", "150", "--device", "cpu"]
    assert main([*map(str, fit), "--clusters", "4"]) == 0
    assert "150 frames" in capsys.readouterr().out
    saved = KMeansQuantizer.from_pretrained(own_dir, layer=2)
    assert (saved.k, saved.layer, saved.representation) == (4, 2, "before_residual")
    want = KMeansQuantizer.fit(sample_frames(model, inputs, layer=2, max_frames=150), 4, layer=2, seed=0)
    torch.testing.assert_close(saved.centroids, want.centroids)

    out = tmp_path / "units"
    assert _run(own_dir, audio_dir / "sub", "--output-dir", out, "--units", "kmeans", "--layer", "2") == 0
    wave = torch.from_numpy(standardize(load_audio(audio_dir / "sub" / "b.flac")))[None]
    features, _ = layer_features(model, wave, None, 2, "before_residual")
    assert json.loads((out / "units.jsonl").read_text())["units"] == saved(features[0]).tolist()

    assert main([*map(str, fit), "--clusters", "1000"]) == 2
    assert "k must be between 1 and the number of frames (150)" in capsys.readouterr().err


def test_exit_codes(model_dir, audio_dir, tmp_path, capsys):
    """Every mistake or unusable input is one line and status 2 (status 1 used to mean "all failed" or --strict)."""
    corrupt = audio_dir / "corrupt.wav"
    assert _run(model_dir, corrupt, "--output-dir", tmp_path / "bad") == 2  # everything failed
    assert "spidr-hf extract: error: no input could be processed: all 1 failed" in capsys.readouterr().err
    assert _run(model_dir, audio_dir / "a.wav", corrupt, "--output-dir", tmp_path / "strict", "--strict") == 2
    assert "--strict: stopping at the first failure" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run(model_dir, audio_dir, "--output-dir", tmp_path / "x", "--units", "head")  # no --layer


def test_manifests_datasets_and_shards(model_dir, audio_dir, tmp_path):
    (tmp_path / "list.csv").write_text(f"path\n{audio_dir / 'a.wav'}\n{audio_dir / 'sub' / 'b.flac'}\n")
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": str(audio_dir / "stereo.wav")}) + "\n")
    (tmp_path / "list.tsv").write_text(f"{audio_dir}\nsub/b.flac\t40000\n")
    ids = [item.id for item in collect_inputs([tmp_path / "list.tsv"]).items]
    assert ids == ["sub/b"]
    csv_ids = [item.id for item in collect_inputs([tmp_path / "list.csv"]).items]
    assert csv_ids == [str(audio_dir.relative_to("/") / "a"), str(audio_dir.relative_to("/") / "sub" / "b")]

    import datasets

    dataset = datasets.Dataset.from_dict(
        {"audio": [str(audio_dir / "a.wav"), str(audio_dir / "corrupt.wav")], "id": ["utt1", "utt2"]}
    ).cast_column("audio", datasets.Audio(decode=False))
    dataset.save_to_disk(tmp_path / "ds")
    out = tmp_path / "units"
    for shard in ("0/2", "1/2"):
        _run(model_dir, tmp_path / "ds", tmp_path / "list.jsonl", "--output-dir", out, "--units", "head",
             "--layer", "3", "--shard", shard)  # fmt: skip
    lines = [
        json.loads(line)
        for p in sorted(out.glob("units.*-of-2.jsonl"))
        for line in p.read_text().splitlines()
    ]
    # a manifest path outside the manifest's folder keeps its whole path (without the root) as id
    assert sorted(line["id"] for line in lines) == [str(audio_dir.relative_to("/") / "stereo"), "utt1"]
    failed = [json.loads(line) for p in out.glob("failures.*.jsonl") for line in p.read_text().splitlines()]
    assert [f["path"] for f in failed] == [f"{tmp_path / 'ds'}#1"]


def test_windows_with_full_context_are_exact(model):
    wave = standardize(_tone(7.3, seed=9))
    encoder = FrameEncoder(model, [(2, "hidden_state"), (3, "before_residual")], max_batch_samples=10**7)
    whole = encoder.encode([wave])[0]
    total = num_frames(len(wave))
    windowed = encoder.encode_windowed(
        wave, window_frames=70, context_frames=total, store_dtype=torch.float32
    )
    for key, tensor in whole.items():
        assert windowed[key].shape == tensor.shape
        torch.testing.assert_close(windowed[key], tensor, atol=ATOL, rtol=0)


def test_windows_follow_the_models_own_conv_stack(tmp_path):
    """A model whose conv stack is not SpidR's (hop 160) is windowed on its own frame grid."""
    torch.manual_seed(0)
    config = SpidRConfig(
        conv_dim=[16] * 6, conv_kernel=[10, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2], hidden_size=32,
        num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, num_conv_pos_embedding_groups=4,
        num_codebooks=2, codebook_size=8, hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
    )  # fmt: skip
    geometry = config.frame_geometry
    assert (geometry.hop, geometry.frame_rate) == (160, 100) and geometry.receptive_field != 400
    model_dir = tmp_path / "model"
    SpidRForPreTraining(config).save_pretrained(model_dir)
    sf.write(tmp_path / "speech.wav", _tone(7.0, seed=11), 16000)

    outputs = {}
    for name, window in {"whole": [], "windowed": ["--max-whole-s", "2", "--window-s", "1", "--context-s", "2"],
                         "full_context": ["--max-whole-s", "2", "--window-s", "1", "--context-s", "10"]}.items():  # fmt: skip
        out = tmp_path / name
        assert _run(model_dir, tmp_path / "speech.wav", "--output-dir", out, *window) == 0
        outputs[name] = load_file(out / "speech.safetensors")["layer3"]
        with safe_open(out / "speech.safetensors", framework="pt") as f:
            assert f.metadata()["frame_rate"] == "100"
    model = SpidRForPreTraining.from_pretrained(model_dir).eval()
    expected = _model_features(model, tmp_path / "speech.wav", 3, "hidden_state")
    assert expected.shape[0] == geometry.num_frames(7 * 16000)
    torch.testing.assert_close(outputs["whole"], expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(outputs["full_context"], expected, atol=ATOL, rtol=0)  # every window sees it all
    assert outputs["windowed"].shape == expected.shape
    assert _relative_error(outputs["windowed"], expected) < WINDOWED_RELATIVE_TOLERANCE


def test_window_plan_covers_every_frame_once():
    windows = plan_windows(total_frames=1003, window_frames=100, context_frames=25)
    kept = [t for w in windows for t in range(w.first, w.last)]
    assert kept == list(range(1003))
    assert all(w.start == max(0, w.first - 25) and w.stop == min(1003, w.last + 25) for w in windows)
    first, last = windows[1].samples
    assert (first, last) == (320 * 75, 320 * (225 - 1) + 400) and num_frames(last - first) == 150


def test_length_batches_respect_the_budget():
    lengths = [100, 400, 250, 90, 400, 30]
    batches = length_batches(lengths, 800)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) * max(lengths[i] for i in b) <= 800 for b in batches)
    assert length_batches([5000], 800) == [[0]]  # a file over the budget still gets its own batch


def test_decoding_workers_default_to_the_spare_cores(monkeypatch):
    from spidr_hf.extract import default_num_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert default_num_workers(torch.device("cpu")) == 0  # the model has every core
    monkeypatch.setattr(torch, "get_num_threads", lambda: 14)
    assert default_num_workers(torch.device("cpu")) == 2
    assert default_num_workers(torch.device("cuda")) == 4
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_num_workers(torch.device("cuda")) == 1


# ------------------------------------------------------------------------------ hostile inputs
def test_folder_problems_are_reported_as_failures(model_dir, audio_dir, tmp_path, capsys):
    """A dangling link or a symlink loop used to be neither processed nor reported."""
    folder = tmp_path / "linked"
    folder.mkdir()
    (folder / "a.wav").symlink_to(audio_dir / "a.wav")
    (folder / "gone.wav").symlink_to(tmp_path / "gone.wav")
    (folder / "loop").symlink_to(folder)
    out = tmp_path / "out"
    assert _run(model_dir, folder, "--output-dir", out) == 0
    failures = {Path(f["path"]).name: f["error"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}
    assert failures.keys() == {"gone.wav", "loop"}
    assert "dangling symbolic link" in failures["gone.wav"] and "symbolic link loop" in failures["loop"]
    assert "1 file(s) written" in capsys.readouterr().out and (out / "a.safetensors").is_file()


def test_nothing_is_written_before_the_inputs_are_checked(model_dir, audio_dir, tmp_path, capsys):
    """A run refused for a bad input path used to write extraction.json, and then refuse the corrected rerun."""
    out = tmp_path / "out"
    assert _run(model_dir, tmp_path / "typo.wav", "--output-dir", out) == 2
    assert "input " + str(tmp_path / "typo.wav") + " does not exist" in capsys.readouterr().err
    assert not out.exists()
    assert _run(model_dir, audio_dir / "a.wav", "--output-dir", out, "--layers", "1") == 0
    # a folder whose options were recorded but which holds no output does not block other options
    (out / "a.safetensors").unlink()
    assert _run(model_dir, audio_dir / "a.wav", "--output-dir", out, "--layers", "2") == 0
    assert sorted(load_file(out / "a.safetensors")) == ["layer2"]


def test_a_second_writer_of_a_shard_is_refused(model_dir, audio_dir, tmp_path, capsys):
    """Two unsharded runs into one folder used to write every unit line twice."""
    from spidr_hf.runs import exclusive_writer

    out = tmp_path / "out"
    out.mkdir()
    with exclusive_writer(out, "extract", "outputs"):  # another run, busy with the same shard
        assert _run(model_dir, audio_dir / "a.wav", "--output-dir", out, "--units", "head", "--layer", "3") == 2
        assert f"another process is writing outputs into {out}" in capsys.readouterr().err
        with exclusive_writer(out, "extract.1-of-2", "shard 1/2"):  # other shards are not blocked
            assert _run(model_dir, audio_dir, "--output-dir", out, "--units", "head", "--layer", "3",
                        "--shard", "0/2") == 0  # fmt: skip
    capsys.readouterr()
    # a whole run beside the shards would write their ids again: refused (tests/test_hostile.py)
    assert _run(model_dir, audio_dir / "a.wav", "--output-dir", out, "--units", "head", "--layer", "3") == 2
    assert "holds outputs of another layout (units.0-of-2.jsonl)" in capsys.readouterr().err


def test_outputs_are_byte_identical_across_runs(model_dir, audio_dir, tmp_path):
    """safetensors wrote its metadata in a random order: the same features were different bytes."""
    for name in ("first", "second"):
        assert _run(model_dir, audio_dir / "sub", audio_dir / "a.wav", "--output-dir", tmp_path / name) == 0
    first = {p.relative_to(tmp_path / "first"): p.read_bytes() for p in (tmp_path / "first").rglob("*") if p.is_file()}
    second = {p.relative_to(tmp_path / "second"): p.read_bytes() for p in (tmp_path / "second").rglob("*") if p.is_file()}
    assert first == second and any(p.suffix == ".safetensors" for p in first)


def test_options_are_checked_by_the_library(tmp_path):
    from spidr_hf.extract import ExtractionOptions

    for bad, message in [
        (dict(max_batch_samples=0), "max_batch_samples must be a positive integer"),
        (dict(max_whole_seconds=-1.0), "max_whole_seconds must be a positive number"),
        (dict(window_seconds=float("inf")), "window_seconds must be a positive number"),
        (dict(context_seconds=-0.5), "context_seconds must be a non-negative number"),
        (dict(num_workers=-1), "num_workers must be a non-negative integer"),
        (dict(shard=(3, 3)), "shard must be i/n with 0 <= i < n"),
        (dict(store_dtype="fp8"), "store_dtype must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExtractionOptions(output_dir=str(tmp_path), **bad)


@pytest.mark.slow  # a fresh Python process importing torch
def test_decoding_workers_die_with_the_process_that_started_them(tmp_path):
    """After kill -9 of an extraction, its decoding workers used to stay alive, holding their memory."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import time, torch\n"
        "from spidr_hf.extract.batching import decoding_loader\n"
        "class Slow(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 100\n"
        "    def __getitem__(self, i): time.sleep(60)\n"
        "loader = iter(decoding_loader(Slow(), num_workers=2))\n"
        "import multiprocessing; time.sleep(2)\n"
        "print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(100):  # the kernel kills them at once; allow for a loaded machine
        if not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers):
            break
        time.sleep(0.1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"
