"""The unit LM (spidr_hf.lm): tokenizer round trip, exact log-probabilities, learning an artificial language,
benchmark layouts, resume, and the one-line errors of lm-train / lm-score."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoTokenizer, set_seed

from spidr_hf.cli import main
from spidr_hf.lm.benchmarks import Pair, find_benchmarks
from spidr_hf.lm.model import build_lm
from spidr_hf.lm.scoring import benchmark_accuracy, score_items, sequence_log_probs
from spidr_hf.lm.tokenizer import build_unit_tokenizer, encode_units, num_units_of
from spidr_hf.lm.train import LMTrainingOptions, train_lm

pytest.importorskip("datasets", reason="the LM needs the 'datasets' package (pip install 'spidr-hf[lm]')")

# an artificial language: six "words" of units, sentences are one word of each class A B C in that order
WORDS = [[0, 5, 9], [1, 6, 10, 3], [2, 7, 11], [3, 8, 12, 0], [4, 13, 14], [15, 2, 6]]
CLASSES = (WORDS[:2], WORDS[2:4], WORDS[4:])
K = 16


def _sentence(rng: random.Random) -> list[list[int]]:
    return [rng.choice(words) for words in CLASSES]


def _write_units(path, sequences: dict[str, list[int]]) -> None:
    path.write_text("".join(json.dumps({"id": i, "units": u}) + "\n" for i, u in sequences.items()))


def _language_units(path, count: int = 300, seed: int = 0) -> None:
    """Frame-like units: each unit of a sentence repeated 1-3 times (deduplication undoes it)."""
    rng = random.Random(seed)
    sentences = {f"utt{i}": [u for w in _sentence(rng) for u in w for _ in range(rng.randint(1, 3))] for i in range(count)}
    _write_units(path, sentences)


def _options(out, **overrides) -> LMTrainingOptions:
    settings = {"output_dir": str(out), "max_steps": 80, "block_size": 64, "batch_size": 8, "warmup_steps": 10,
                "save_steps": 40, "device": "cpu", "progress": False, "num_units": K}  # fmt: skip
    return LMTrainingOptions(**{**settings, **overrides})


def test_tokenizer_round_trip_and_auto_tokenizer(tmp_path):
    tokenizer = build_unit_tokenizer(K)
    ids = encode_units(tokenizer, [3, 15, 0, 3])
    assert ids == [tokenizer.bos_token_id, 7, 19, 4, 7, tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True).split() == ["3", "15", "0", "3"]
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("3 15 0 3")["input_ids"] == ids and num_units_of(loaded) == K
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)


def test_scores_equal_hand_computed_log_probabilities():
    set_seed(0)
    tokenizer = build_unit_tokenizer(K)
    model = build_lm("tiny", tokenizer).eval()
    sequences = [encode_units(tokenizer, u) for u in ([3, 1, 4], [1, 5, 9, 2, 6, 5, 3], [8])]
    scored = sequence_log_probs(model, sequences, tokenizer.pad_token_id, batch_size=2)  # padded batches
    for ids, (total, count) in zip(sequences, scored, strict=True):
        expected = 0.0
        with torch.no_grad():
            for t in range(1, len(ids)):  # one unpadded forward pass per predicted token
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
                expected += torch.log_softmax(logits, -1)[ids[t]].item()
        assert count == len(ids) - 1
        assert total == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_lm_learns_an_artificial_language_and_shuffled_pairs_stay_at_chance(tmp_path):
    _language_units(tmp_path / "units.jsonl")
    record = train_lm([tmp_path / "units.jsonl"], _options(tmp_path / "lm"))
    assert record["steps"] == 80 and record["num_units"] == K
    from spidr_hf.lm.evaluate import load_lm

    model, tokenizer = load_lm(tmp_path / "lm", "cpu")
    rng = random.Random(1)
    units, grammatical, shuffled = {}, [], []
    for i in range(300):
        a, b, c = _sentence(rng)
        units[f"g{i}"], units[f"r{i}"] = a + b + c, c + b + a  # word-order violation
        grammatical.append(Pair(str(i), f"g{i}", f"r{i}"))
        x, y = a + b + c, a + b + c
        rng.shuffle(x), rng.shuffle(y)  # neither member is a sentence: no label to find
        units[f"x{i}"], units[f"y{i}"] = x, y
        shuffled.append(Pair(str(i), f"x{i}", f"y{i}"))
    log_probs = score_items(model, tokenizer, units, "test")
    assert benchmark_accuracy(grammatical, log_probs)["sum"]["accuracy"] > 0.95
    assert 0.4 < benchmark_accuracy(shuffled, log_probs)["sum"]["accuracy"] < 0.6


def test_lm_train_resumes_from_its_last_checkpoint(tmp_path):
    _language_units(tmp_path / "units.jsonl", count=40)
    out = tmp_path / "lm"
    args = ["lm-train", str(tmp_path / "units.jsonl"), "--output-dir", str(out), "--block-size", "16",
            "--batch-size", "2", "--save-steps", "2", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*args, "--max-steps", "2"]) == 0
    assert (out / "checkpoint-2").is_dir()
    assert main([*args, "--max-steps", "4"]) == 2  # an LM is there: no silent restart over it
    assert main([*args, "--max-steps", "4", "--resume-from-checkpoint"]) == 0
    assert json.loads((out / "lm_training.json").read_text())["steps"] == 4
    assert (out / "checkpoint-4").is_dir()


# --------------------------------------------------------------------------- benchmarks and lm-score
def _wav(path, seconds: float = 0.2, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32), 16000)


def _zerospeech(folder, pairs: int = 3, voices=("v1", "v2"), typed: bool = False) -> None:
    """A ZeroSpeech 2021-style folder: a wav per file and gold.csv (id, filename, correct, voice[, type])."""
    rows = []
    for i in range(pairs):
        for voice in voices:
            for correct in (1, 0):
                name = f"f{i}{voice}{correct}"
                _wav(folder / f"{name}.wav", seed=len(rows))
                rows.append({"id": str(i), "filename": name, "correct": correct, "voice": voice,
                             **({"type": "order" if i % 2 else "agreement"} if typed else {})})  # fmt: skip
    with (folder / "gold.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_benchmark_layouts_pair_by_id_and_voice(tmp_path):
    _zerospeech(tmp_path / "lexical" / "dev")
    _zerospeech(tmp_path / "syntactic" / "dev", typed=True)
    for name in ("a", "b"):
        _wav(tmp_path / "tsc" / "correct" / f"{name}.wav")
        _wav(tmp_path / "tsc" / "incorrect" / f"{name}.wav")
    found = {b.name: b for b in find_benchmarks(tmp_path)}
    assert sorted(found) == ["lexical/dev", "syntactic/dev", "tsc"]
    assert len(found["lexical/dev"].pairs) == 6 and Pair("0", "f0v11", "f0v10") in found["lexical/dev"].pairs
    assert {p.type for p in found["syntactic/dev"].pairs} == {"order", "agreement"}
    assert found["tsc"].pairs == [Pair("a", "correct/a", "incorrect/a"), Pair("b", "correct/b", "incorrect/b")]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny LM (K=16) trained for a few steps: what lm-score loads."""
    folder = tmp_path_factory.mktemp("lm")
    _language_units(folder / "units.jsonl", count=40)
    train_lm([folder / "units.jsonl"], _options(folder / "lm", max_steps=2, block_size=16, save_steps=10))
    return folder / "lm"


def _bench_units(bench, units_for=lambda name: [1, 2, 3]) -> dict[str, list[int]]:
    return {b.name + "/" + n if b.root != bench else n: units_for(n) for b in find_benchmarks(bench) for n in b.files}


def test_lm_score_writes_accuracies_and_zerospeech_score_files(tmp_path, tiny_lm):
    bench = tmp_path / "bench"
    _zerospeech(bench / "lexical" / "dev")
    _wav(bench / "tsc" / "correct" / "s.wav"), _wav(bench / "tsc" / "incorrect" / "s.wav")
    # correct members get a grammatical sentence, incorrect ones its reverse
    sentence = [0, 5, 9, 2, 7, 11, 4, 13, 14]
    units = _bench_units(bench, lambda n: sentence if n.endswith("1") or n.startswith("correct") else sentence[::-1])
    _write_units(tmp_path / "units.jsonl", units)
    out = tmp_path / "scores"
    assert main(["lm-score", str(tiny_lm), str(tmp_path / "units.jsonl"), str(bench), "--output-dir", str(out), "--quiet"]) == 0
    results = json.loads((out / "lm_scores.json").read_text())
    assert set(results["benchmarks"]) == {"lexical/dev", "tsc"}
    assert results["benchmarks"]["lexical/dev"]["sum"]["pairs"] == 6
    lines = (out / "lexical_dev.txt").read_text().splitlines()
    assert len(lines) == 12 and all(len(line.split()) == 2 for line in lines)


def test_lm_score_reads_a_baseline_quantizer(tmp_path, tiny_lm):
    from spidr_hf.baselines import BaselineQuantizer

    _zerospeech(tmp_path / "bench", pairs=1, voices=("v1",))
    waves = [sf.read(p, dtype="float32")[0] for p in sorted((tmp_path / "bench").glob("*.wav"))]
    path = BaselineQuantizer.fit(waves, "logmel", K).save(tmp_path / "q")
    out = tmp_path / "scores"
    assert main(["lm-score", str(tiny_lm), str(path), str(tmp_path / "bench"), "--output-dir", str(out), "--quiet"]) == 0
    assert json.loads((out / "lm_scores.json").read_text())["benchmarks"]["bench"]["sum"]["pairs"] == 1


def _one_line_error(capsys, argv, command, *words) -> None:
    capsys.readouterr()  # what came before (progress bars of fixtures)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"spidr-hf {command}: error: ") and "\n" not in err, err
    for word in words:
        assert word in err, err


def test_bad_inputs_are_one_line_errors_with_nothing_written(tmp_path, tiny_lm, capsys):
    out = tmp_path / "out"
    _write_units(tmp_path / "empty.jsonl", {"a": [1, 2], "b": []})
    _one_line_error(capsys, ["lm-train", str(tmp_path / "empty.jsonl"), "--output-dir", str(out)],
                    "lm-train", "empty.jsonl", "'b'", "empty unit sequence")  # fmt: skip
    bench = tmp_path / "bench"
    _zerospeech(bench, pairs=1, voices=("v1",))
    _write_units(tmp_path / "big.jsonl", _bench_units(bench, lambda n: [1, 40, 2]))
    _one_line_error(capsys, ["lm-score", str(tiny_lm), str(tmp_path / "big.jsonl"), str(bench), "--output-dir", str(out)],
                    "lm-score", "big.jsonl", "unit 40", "K=16")  # fmt: skip
    _write_units(tmp_path / "few.jsonl", {"f0v11": [1, 2]})
    _one_line_error(capsys, ["lm-score", str(tiny_lm), str(tmp_path / "few.jsonl"), str(bench), "--output-dir", str(out)],
                    "lm-score", "few.jsonl", "f0v10")  # fmt: skip
    (bench / "gold.csv").rename(tmp_path / "gold.csv")
    _one_line_error(capsys, ["lm-score", str(tiny_lm), str(tmp_path / "big.jsonl"), str(bench), "--output-dir", str(out)],
                    "lm-score", "has no gold.csv")  # fmt: skip
    rows = (tmp_path / "gold.csv").read_text().replace("f0v10", "f9v10")
    (bench / "gold.csv").write_text(rows)
    _one_line_error(capsys, ["lm-score", str(tiny_lm), str(tmp_path / "big.jsonl"), str(bench), "--output-dir", str(out)],
                    "lm-score", "f9v10.wav is not in", "do not match")  # fmt: skip
    assert not out.exists()


def test_lm_score_extracts_units_of_a_spidr_model(tmp_path, tiny_lm, tiny_config, capsys):
    from spidr_hf import SpidRForPreTraining

    torch.manual_seed(0)
    SpidRForPreTraining(tiny_config).save_pretrained(tmp_path / "model")
    _zerospeech(tmp_path / "bench", pairs=2, voices=("v1",))
    args = ["lm-score", str(tiny_lm), str(tmp_path / "model"), str(tmp_path / "bench"), "--device", "cpu", "--quiet"]
    _one_line_error(capsys, [*args, "--output-dir", str(tmp_path / "none")], "lm-score", "give --layer")
    layer = str(tiny_config.codebook_layers[0])
    assert main([*args, "--output-dir", str(tmp_path / "scores"), "--units", "head", "--layer", layer]) == 0
    extracted = [json.loads(line) for line in (tmp_path / "scores" / "units" / "units.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in extracted) == sorted(p.stem for p in (tmp_path / "bench").glob("*.wav"))
    assert json.loads((tmp_path / "scores" / "lm_scores.json").read_text())["benchmarks"]["bench"]["sum"]["pairs"] == 2
    tiny_config.codebook_size = 4 * K  # units the LM cannot know: refused before any extraction
    SpidRForPreTraining(tiny_config).save_pretrained(tmp_path / "wide")
    args[2] = str(tmp_path / "wide")
    _one_line_error(capsys, [*args, "--output-dir", str(tmp_path / "none"), "--layer", layer], "lm-score", "64 codewords", "K=16")
    assert not (tmp_path / "none").exists()
