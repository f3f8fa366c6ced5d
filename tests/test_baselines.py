"""Classical baselines (log-mel / MFCC k-means units), held-out unit scoring and the `baseline` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file
from spidr_hf.modeling import FrameGeometry

from spidr_hf.baselines import FEATURES, BaselineQuantizer, frame_features
from spidr_hf.espeak import espeak_available

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")


def tone(freq: float, seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(("kind", "dims"), [("logmel", 40), ("mfcc", 39)])
@pytest.mark.parametrize("geometry", [FrameGeometry(), FrameGeometry((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 1))], ids=["default", "hop160"])
def test_features_sit_on_the_model_frame_grid_and_are_normalised(kind, dims, geometry):
    wave = np.random.default_rng(0).standard_normal(16_123).astype(np.float32)
    features = frame_features(wave, kind, geometry)
    assert features.shape == (geometry.num_frames(wave.size), dims)
    assert features.mean(0).abs().max() < 1e-4
    assert torch.allclose(features.std(0, correction=0), torch.ones(dims), atol=1e-3)


def test_feature_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown baseline features 'spectrogram'.*logmel, mfcc"):
        frame_features(np.zeros(16_000, np.float32), "spectrogram")
    with pytest.raises(ValueError, match=r"1-D \(mono\).*\(2, 8000\)"):
        frame_features(np.zeros((2, 8000), np.float32), "logmel")
    with pytest.raises(ValueError, match="300 samples is shorter than one frame \\(400 samples\\)"):
        frame_features(np.zeros(300, np.float32), "mfcc")


@pytest.mark.parametrize("kind", FEATURES)
def test_quantizer_separates_two_sounds_and_round_trips(kind, tmp_path):
    wave = np.concatenate([tone(300, 1.0), tone(3000, 1.0)])
    quantizer = BaselineQuantizer.fit([wave], kind, k=2, seed=0)
    units = quantizer(wave)
    assert units.dtype == torch.int64 and units.shape == (FrameGeometry().num_frames(wave.size),)
    half = len(units) // 2  # one unit for the low tone, the other for the high one (frames at the switch aside)
    assert len(set(units[: half - 2].tolist())) == 1 and len(set(units[half + 2 :].tolist())) == 1
    assert units[0] != units[-1]

    path = quantizer.save(tmp_path)
    loaded = BaselineQuantizer.load(path)
    assert loaded.kind == kind and torch.equal(loaded.centroids, quantizer.centroids)
    assert torch.equal(loaded(wave), units)
    assert quantizer.save(tmp_path / "again").read_bytes() == path.read_bytes()  # byte-identical across saves


def test_loading_another_safetensors_file_says_what_it_is_not(tmp_path):
    save_file({"centroids": torch.zeros(2, 3)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="is not a baseline quantizer"):
        BaselineQuantizer.load(tmp_path / "other.safetensors")


def test_too_few_frames_for_k_is_an_error_naming_both_numbers():
    with pytest.raises(ValueError, match="cannot fit 64 logmel clusters on 49 frames: give more audio or fewer clusters"):
        BaselineQuantizer.fit([tone(440, 1.0)], "logmel", k=64)


# --------------------------------------------------------------------------- on speech


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    from spidr_hf.synth import synthesize_corpus

    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    root = tmp_path_factory.mktemp("speech")
    train = synthesize_corpus(root / "train", 0.5, seed=0, progress=False)
    synthesize_corpus(root / "heldout", 0.3, seed=1, voices=["en-us+m7", "en+f3"], progress=False,
                      exclude_texts={u.text for u in train.utterances})  # fmt: skip
    return root / "train", root / "heldout"


@needs_espeak
def test_heldout_corpus_has_other_sentences(corpora):
    train, heldout = corpora
    texts = {json.loads(line)["text"] for line in (train / "manifest.jsonl").read_text().splitlines()}
    held = [json.loads(line)["text"] for line in (heldout / "manifest.jsonl").read_text().splitlines()]
    assert held and not texts & set(held)


@needs_espeak
def test_logmel_units_carry_phone_information_on_heldout_speech(corpora):
    from spidr_hf.unit_scores import AlignedCorpus, score_baseline

    train, heldout = AlignedCorpus.load(corpora[0]), AlignedCorpus.load(corpora[1])
    logmel, _ = score_baseline("logmel", train, heldout, k=32)
    assert 0.25 < logmel["pnmi"] < 1.0  # far above chance: a baseline worth beating
    assert logmel["codebook_size"] == 32 and logmel["num_frames"] == heldout.num_frames


@needs_espeak
def test_model_scores_cover_every_codebook_head_and_layer(corpora, tiny_config):
    from spidr_hf.modeling import SpidRForPreTraining

    from spidr_hf.unit_scores import AlignedCorpus, UnitQualityCallback, score_model

    torch.manual_seed(0)
    model = SpidRForPreTraining(tiny_config).eval()
    train, heldout = AlignedCorpus.load(corpora[0], max_minutes=0.2), AlignedCorpus.load(corpora[1])
    scores = score_model(model, train, heldout, k=8)
    assert sorted(scores["head"]) == tiny_config.codebook_layers
    assert sorted(scores["kmeans"]) == list(range(1, tiny_config.num_hidden_layers + 1))
    assert all(m["num_frames"] == heldout.num_frames for m in [*scores["head"].values(), *scores["kmeans"].values()])
    assert all(m["active_codewords"] <= 8 for m in scores["kmeans"].values())

    callback = UnitQualityCallback(train, heldout, k=8, every=5, kmeans_layers=[1])
    entry = callback.score(model, step=5)
    assert entry["step"] == 5 and set(entry["head"]) == set(tiny_config.codebook_layers) and list(entry["kmeans"]) == [1]
    assert entry["kmeans"][1] == pytest.approx(scores["kmeans"][1]["pnmi"])  # seeded: the same k-means
    with pytest.raises(ValueError, match="positive number of steps"):
        UnitQualityCallback(train, heldout, k=8, every=0)


@needs_espeak
def test_baseline_command_writes_units_that_evaluate_scores(corpora, tmp_path, capsys):
    from spidr_hf.cli import main

    train, heldout = corpora
    out = tmp_path / "logmel"
    assert main(["baseline", str(heldout / "manifest.tsv"), "--fit", str(train / "manifest.tsv"),
                 "--features", "mfcc", "--clusters", "16", "--output-dir", str(out), "--quiet"]) == 0  # fmt: skip
    assert (out / "kmeans_mfcc_k16.safetensors").is_file()
    assert main(["evaluate", "--alignments", str(heldout / "alignments.jsonl"), "--units", str(out / "units.jsonl"),
                 "--output-dir", str(out / "eval"), "--codebook-size", "16"]) == 0  # fmt: skip
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["num_utterances"] == len((heldout / "manifest.jsonl").read_text().splitlines())
    assert metrics["pnmi"] > 0.2


@needs_espeak
def test_baseline_command_too_few_frames_is_one_line_and_writes_nothing(corpora, tmp_path, capsys):
    from spidr_hf.cli import main

    wave = tmp_path / "short.wav"
    sf.write(wave, tone(440, 0.5), 16_000)
    out = tmp_path / "out"
    assert main(["baseline", str(corpora[1] / "manifest.tsv"), "--fit", str(wave), "--clusters", "64",
                 "--output-dir", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spidr-hf baseline: error: cannot fit 64 logmel clusters on 24 frames: give more audio or fewer clusters."]
    assert not out.exists()


def test_baseline_command_bad_inputs(tmp_path, capsys):
    from spidr_hf.cli import main

    assert main(["baseline", str(tmp_path / "missing"), "--clusters", "4", "--output-dir", str(tmp_path / "o")]) == 2
    assert "spidr-hf baseline: error: input" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["baseline", str(tmp_path), "--clusters", "4", "--output-dir", str(tmp_path / "file")]) == 2
    assert "--output-dir " + str(tmp_path / "file") + " is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_baseline_command_reports_what_the_folder_walk_could_not_read(tmp_path, caplog):
    from spidr_hf.cli import main

    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", np.concatenate([tone(300, 1.0), tone(3000, 1.0)]), 16_000)
    (audio / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)  # a dangling link
    with caplog.at_level("WARNING", logger="spidr_hf.sources"):
        assert main(["baseline", str(audio), "--clusters", "2", "--output-dir", str(tmp_path / "out")]) == 0
    assert any(r.getMessage().startswith(f"skipping {audio / 'gone'}") for r in caplog.records), caplog.text
    assert len((tmp_path / "out" / "units.jsonl").read_text().splitlines()) == 1


def test_evaluate_with_mismatched_ids_writes_nothing(tmp_path, capsys):
    from spidr_hf.cli import main

    (tmp_path / "alignments.jsonl").write_text(json.dumps({"id": "a", "phones": ["x", "y"]}) + "\n")
    (tmp_path / "units.jsonl").write_text(json.dumps({"id": "b", "units": [0, 1]}) + "\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "--alignments", str(tmp_path / "alignments.jsonl"), "--units",
                 str(tmp_path / "units.jsonl"), "--output-dir", str(out)]) != 0  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spidr-hf evaluate: error: 1 ids have alignments but no units: 'a'")
    assert not out.exists()
