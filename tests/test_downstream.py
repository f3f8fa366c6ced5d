"""The downstream commands on CPU: the phone probe end to end (and what it learns on features whose
layers are known), CTC fine-tuning that learns, and bad input as one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrain_worker import micro_model

from spidr_hf.cli import main as cli
from spidr_hf.downstream import ProbeSettings, error_rate, greedy_ctc, load_transcribed
from spidr_hf.downstream.ctc_data import char_transcript, phone_transcript
from spidr_hf.downstream.probe import train_probe, transcribe
from spidr_hf.espeak import espeak_available
from spidr_hf.model_dir import save_pretrained_with_code

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Three minutes of training speech and held-out speech (other sentences, the same six voices: a probe
    trained on six voices does not carry over to an unseen one)."""
    from spidr_hf.synth import synthesize_corpus

    root = tmp_path_factory.mktemp("corpora")
    train = synthesize_corpus(root / "train", 3, seed=0, progress=False)
    synthesize_corpus(root / "test", 0.5, seed=1, progress=False, exclude_texts={u.text for u in train.utterances})
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "micro"
    save_pretrained_with_code(micro_model(seed=0, num_hidden_layers=3, num_attention_heads=4), folder)
    return folder


@pytest.fixture(scope="module")
def pretrained_dir(corpora, tmp_path_factory):
    """The tiny SpidR after 400 steps of the CPU recipe on the training speech (about a minute here): what
    fine-tuning starts from in practice, a pretrained encoder."""
    out = tmp_path_factory.mktemp("pretrained") / "tiny"
    assert cli(["pretrain", "--recipe", "tiny_cpu", "--train-data", str(corpora / "train"), "--output-dir", str(out),
                "--max-steps", "400", "--save-steps", "400", "--seed", "0", "--quiet"]) == 0  # fmt: skip
    return out


def test_transcripts_and_error_rate():
    assert phone_transcript(["SIL", "SIL", "k", "k", "æ", "t", "t", "SIL", "t"]) == ["k", "æ", "t", "t"]
    assert char_transcript("The  cat sat") == list("the|cat|sat")
    logits = torch.full((6, 4), -1.0)
    for frame, token in enumerate([2, 2, 0, 2, 3, 0]):
        logits[frame, token] = 1.0
    assert greedy_ctc(logits, 6) == [2, 2, 3] and greedy_ctc(logits, 2) == [2]
    assert error_rate([[1, 2], [3]], [[1, 2, 4], [3]]) == pytest.approx(1 / 4)


def test_probe_finds_the_layer_that_carries_the_phones():
    """Layer 1 of 3 holds each frame's phone (one-hot plus noise); the others only noise."""
    generator = torch.Generator().manual_seed(0)
    stacks, labels = [], []
    for _ in range(24):
        phones = torch.randint(1, 6, (8,), generator=generator)
        frames = phones.repeat_interleave(3)  # each phone for 3 frames
        stack = torch.randn(3, len(frames), 6, generator=generator)
        stack[1] = torch.nn.functional.one_hot(frames, 6).float() * 4 + 0.3 * stack[1]
        stacks.append(stack)
        labels.append(torch.unique_consecutive(phones).tolist())
    probe, _ = train_probe(stacks[:16], labels[:16], 6, ProbeSettings(steps=150, learning_rate=2e-2), "test")
    weights = probe.normalised_weights
    assert weights[1] > 0.6 and weights[1] > 3 * max(weights[0], weights[2])
    assert error_rate(transcribe(probe, stacks[16:]), labels[16:]) < 0.1


@needs_espeak
def test_transcripts_from_a_saved_dataset(corpora, tmp_path):
    import datasets

    records = [json.loads(line) for line in (corpora / "test" / "manifest.jsonl").read_text().splitlines()][:2]
    dataset = datasets.Dataset.from_dict({
        "id": [r["id"] for r in records],
        "audio": [str(corpora / "test" / r["path"]) for r in records],
        "text": [r["text"] for r in records],
        "phones": [" ".join(p) for p in load_transcribed(corpora / "test").transcripts[:2]],
    }).cast_column("audio", datasets.Audio(sampling_rate=16_000))  # fmt: skip
    dataset.save_to_disk(tmp_path / "saved")
    chars = load_transcribed(tmp_path / "saved", "chars")
    assert chars.ids == [r["id"] for r in records]
    assert chars.transcripts == [char_transcript(r["text"]) for r in records]
    assert load_transcribed(tmp_path / "saved", "phones").transcripts == load_transcribed(corpora / "test").transcripts[:2]
    with pytest.raises(ValueError, match=r"no transcript column 'words' for chars targets; its columns are"):
        load_transcribed(tmp_path / "saved", "chars", text_column="words")
    in_memory = load_transcribed(dataset, "phones")  # the Dataset object itself, not saved
    assert in_memory.ids == chars.ids and in_memory.transcripts == load_transcribed(corpora / "test").transcripts[:2]
    assert all(np.array_equal(a, b) for a, b in zip(in_memory.waves, chars.waves, strict=True))
    with pytest.raises(TypeError, match="expected a map-style datasets.Dataset"):
        load_transcribed(dataset.to_iterable_dataset())


@needs_espeak
@pytest.mark.slow
def test_probe_phones_end_to_end(corpora, model_dir, tmp_path, capsys):
    out = tmp_path / "probe"
    assert cli(["probe-phones", str(model_dir), str(corpora / "train"), str(corpora / "test"),
                "--output-dir", str(out), "--quiet"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    rows = {row["features"]: row for row in results["rows"]}
    assert set(rows) == {"spidr", "logmel"}
    # emitting nothing scores PER 1: both probes recognise phones, log-mel measured 0.69-0.71 over two seeds
    assert rows["logmel"]["per"] < 0.85 and rows["spidr"]["per"] < 1.0, rows
    assert len(rows["spidr"]["layer_weights"]) == 4 and sum(rows["spidr"]["layer_weights"]) == pytest.approx(1)
    assert list(results["layer_weights"]) == ["0", "1", "2", "3"] and rows["logmel"]["layer_weights"] == [1.0]
    assert results["test"]["utterances"] == len(load_transcribed(corpora / "test"))
    assert (out / "layer_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"spidr      {rows['spidr']['per']:>7.3f}" in printed and "logmel" in printed


def _cli_error(argv: list[str], capsys) -> str:
    """The error line of a command that must fail (stderr may hold transformers' weight-loading bar above it)."""
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err.splitlines()[-1]


@needs_espeak
def test_corpus_without_transcripts_is_one_line_error(corpora, model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.jsonl").write_text((corpora / "test" / "manifest.jsonl").read_text())
    out = tmp_path / "out"
    err = _cli_error(["probe-phones", str(model_dir), str(corpora / "train"), str(bare), "--output-dir", str(out)], capsys)
    assert err == f"spidr-hf probe-phones: error: {bare} is not an aligned corpus: it has no alignments.jsonl (see spidr-hf synth-corpus)."
    lines = [json.loads(line) for line in (corpora / "test" / "manifest.jsonl").read_text().splitlines()]
    del lines[1]["text"]
    (bare / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    err = _cli_error(["finetune-ctc", str(model_dir), str(bare), "--targets", "chars", "--output-dir", str(out)], capsys)
    assert err.startswith(f"spidr-hf finetune-ctc: error: {bare / 'manifest.jsonl'}:2: utterance ") and "no 'text'" in err
    assert not out.exists()


@needs_espeak
def test_labels_longer_than_the_audio_are_one_line_error(corpora, model_dir, tmp_path, capsys):
    short = tmp_path / "short"
    short.mkdir()
    (short / "audio").symlink_to(corpora / "test" / "audio")
    first = (corpora / "test" / "manifest.jsonl").read_text().splitlines()[0]
    (short / "manifest.jsonl").write_text(first + "\n")
    record = json.loads(first)
    frames = (record["num_samples"] - 400) // 320 + 1
    alignment = {"id": record["id"], "phones": ["a", "b"] * (frames // 2) + ["a"] * (frames % 2)}  # a new phone every frame
    alignment["phones"][-1] = "c"  # ... plus one phone more than the frames can hold: frames + 1 phones
    alignment["phones"].append("d")
    (short / "alignments.jsonl").write_text(json.dumps(alignment) + "\n")
    out = tmp_path / "out"
    err = _cli_error(["probe-phones", str(model_dir), str(short), str(corpora / "test"), "--output-dir", str(out)], capsys)
    assert err.startswith(f"spidr-hf probe-phones: error: {short}: utterance {record['id']!r} has {frames + 1} phones")
    assert "remove it or fix its transcript" in err and not out.exists()


@needs_espeak
@pytest.mark.slow
def test_finetuning_lowers_the_phone_error_rate(corpora, pretrained_dir, tmp_path, capsys):
    out = tmp_path / "ctc"
    argv = ["finetune-ctc", str(pretrained_dir), str(corpora / "train"), "--test-corpus", str(corpora / "test"),
            "--output-dir", str(out), "--batch-size", "4", "--learning-rate", "1e-3", "--head-learning-rate", "3e-2",
            "--warmup-steps", "20", "--save-steps", "100", "--quiet"]  # fmt: skip
    assert cli([*argv, "--max-steps", "300"]) == 0
    rate = json.loads((out / "results.json").read_text())["error_rate"]
    assert rate["metric"] == "PER"
    # the fresh head inserts phones (PER > 1); emitting nothing scores 1.0. Measured with pretraining seeds 0 / 1:
    # 1.980 -> 0.698 and 2.182 -> 0.659 (the untrained micro model: 0.978 -> 0.858 in 200 steps, 0.933 in 600)
    assert rate["initial"] > 1.0 and rate["final"] < 0.8, rate
    card = (out / "model" / "README.md").read_text()  # the model card says what it is and how well it did
    assert "pipeline_tag: automatic-speech-recognition" in card and "spidr-hf transcribe" in card
    assert f"{rate['initial']:.3f} with the fresh head, {rate['final']:.3f} after fine-tuning" in card
    from spidr_hf.audio import load_audio
    from spidr_hf.downstream import speech_recognizer

    first = sorted((corpora / "test" / "audio").rglob("*.wav"))[0]
    wave = load_audio(first)  # transformers decodes files with ffmpeg
    assert isinstance(speech_recognizer(out / "model")(wave, chunk_length_s=2)["text"], str)
    check_transcribe(out / "model", corpora / "test", first, tmp_path, capsys)
    # the run goes on from its last checkpoint, and a second run into the same folder is refused
    assert cli([*argv, "--max-steps", "310", "--resume"]) == 0
    assert json.loads((out / "checkpoints" / "checkpoint-310" / "trainer_state.json").read_text())["global_step"] == 310
    err = _cli_error([*argv, "--max-steps", "300"], capsys)
    assert "already holds a fine-tuning run" in err and "--resume" in err


def check_transcribe(model: Path, corpus: Path, first: Path, tmp_path: Path, capsys) -> None:
    """`spidr-hf transcribe` on a fine-tuned model: a line per file, what the pipeline says, a bad file
    listed (the others transcribed), a rerun skips what is done."""
    from spidr_hf.audio import load_audio
    from spidr_hf.downstream import speech_recognizer

    audio = tmp_path / "audio"
    audio.mkdir()
    files = sorted((corpus / "audio").rglob("*.wav"))[:3]
    for path in files:
        (audio / path.name).symlink_to(path)
    (audio / "broken.wav").write_bytes(b"RIFF, not really")
    out = tmp_path / "transcripts"
    assert cli(["transcribe", str(model), str(audio), "--output-dir", str(out), "--chunk-length-s", "2", "--quiet"]) == 0
    lines = {(r := json.loads(line))["id"]: r for line in (out / "transcripts.jsonl").read_text().splitlines()}
    assert sorted(lines) == sorted(path.stem for path in files)
    wave = load_audio(first)
    chunking = {"chunk_length_s": 2} if wave.size > 2 * 16_000 else {}  # as the command chunks
    expected = speech_recognizer(model)(wave, **chunking)["text"]
    line = lines[first.stem]
    assert line["text"] == expected and line["seconds"] == pytest.approx(wave.size / 16_000, abs=1e-3)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [Path(f["path"]).name for f in failures] == ["broken.wav"]
    printed = capsys.readouterr().out
    assert "3 file(s) written" in printed and "1 failed" in printed
    (audio / "broken.wav").unlink()
    assert cli(["transcribe", str(model), str(audio), "--output-dir", str(out), "--quiet"]) == 0
    assert "0 file(s) written" in capsys.readouterr().out and not (out / "failures.jsonl").exists()


@needs_espeak
def test_transcribe_needs_a_model_with_its_tokenizer(corpora, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    err = _cli_error(["transcribe", str(model_dir), str(corpora / "test" / "audio"), "--output-dir", str(out)], capsys)
    assert err == (
        f"spidr-hf transcribe: error: model folder {model_dir} has no CTC tokenizer (tokenizer_config.json, vocab.json "
        "missing): save one there with Wav2Vec2Processor(feature_extractor, tokenizer).save_pretrained(folder), "
        "as spidr-hf finetune-ctc does."
    )
    assert not out.exists()
