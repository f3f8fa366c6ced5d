"""`spidr-hf evaluate --model`: every layer of a tiny model scored on a small aligned corpus in one run (features +
k-means, head units, ABX through a stand-in fastabx), the same numbers as `unit_scores`, and its mistakes."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from spidr_hf.modeling import SAMPLING_RATE, SpidRForPreTraining, num_frames

from spidr_hf.cli import main as cli
from spidr_hf.sources import collect_inputs
from spidr_hf.unit_scores import AlignedCorpus, score_model

TONES = {"SIL": 0.0, "a": 300.0, "i": 900.0, "s": 2500.0}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four utterances of tones, one per "phone", and their 20 ms and 10 ms alignments (the ids: audio paths)."""
    root = tmp_path_factory.mktemp("aligned")
    rng = np.random.default_rng(0)
    at_20, at_10 = [], []
    for index in range(4):
        phones = [str(p) for p in rng.choice(list(TONES), size=8)]
        segment = SAMPLING_RATE // 8  # 125 ms per phone
        t = np.arange(segment) / SAMPLING_RATE
        wave = np.concatenate([np.sin(2 * np.pi * TONES[p] * t) + 0.01 * rng.normal(size=segment) for p in phones])
        utt_id = f"spk{index % 2}/utt{index}"
        (root / "audio" / f"spk{index % 2}").mkdir(parents=True, exist_ok=True)
        soundfile.write(root / "audio" / f"{utt_id}.wav", wave.astype(np.float32) * 0.3, SAMPLING_RATE)
        frames = num_frames(wave.size)
        centres_20 = (np.arange(frames) * 320 + 200) / SAMPLING_RATE
        centres_10 = (np.arange(2 * frames + 1) + 0.5) / 100  # one frame more: the usual slack
        at_20.append({"id": utt_id, "phones": [phones[int(c * 8)] for c in centres_20]})
        at_10.append({"name": utt_id, "phones": [phones[min(int(c * 8), 7)] for c in centres_10]})
    (root / "alignments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in at_20))
    (root / "alignments-10ms.jsonl").write_text("".join(json.dumps(r) + "\n" for r in at_10))
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from pretrain_worker import micro_config  # tests/ is on sys.path under pytest

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    SpidRForPreTraining(micro_config(num_hidden_layers=3, num_attention_heads=4)).save_pretrained(path)
    return path


def sweep(model_dir: Path, corpus: Path, out: Path, *extra: str, alignments: str = "alignments.jsonl") -> int:
    return cli(["evaluate", "--model", str(model_dir), "--audio", str(corpus / "audio"),
                "--alignments", str(corpus / alignments), "--clusters", "6", "--output-dir", str(out), *extra])  # fmt: skip


@pytest.mark.slow
def test_sweep_scores_every_layer_as_unit_scores_does(model_dir: Path, corpus: Path, tmp_path: Path, capsys) -> None:
    assert sweep(model_dir, corpus, tmp_path / "sweep", "--layers", "1-3", "--quiet") == 0
    printed = capsys.readouterr().out
    assert "alignments at 50 Hz: 1 phone frame(s) per 50 Hz unit frame (inferred" in printed
    table = printed[printed.index("layer  "):].splitlines()
    assert "k-means PNMI" in table[0] and "head PNMI" in table[0] and "ABX" not in table[0]
    assert [line.split()[0] for line in table[1:4]] == ["1", "2", "3"] and table[1].split()[2] == "-"
    result = json.loads((tmp_path / "sweep" / "layer_sweep.json").read_text())
    rows = {row["layer"]: row for row in result["layers"]}
    assert sorted(rows) == [1, 2, 3] and result["clusters"] == 6 and result["num_utterances"] == 4
    assert rows[1]["head"] is None and rows[2]["head"]["codebook_size"] == 8  # codebook layers 2 and 3
    assert all(row["kmeans"]["codebook_size"] == 6 for row in rows.values())
    assert (tmp_path / "sweep" / "layer_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same numbers as unit_scores on the same corpus (k-means fitted on it too, seeded)
    model = SpidRForPreTraining.from_pretrained(model_dir).eval()
    aligned = AlignedCorpus.from_inputs(collect_inputs([corpus / "audio"]), {
        json.loads(line)["id"]: json.loads(line)["phones"] for line in (corpus / "alignments.jsonl").read_text().splitlines()})  # fmt: skip
    expected = score_model(model, aligned, aligned, k=6)
    for layer in (1, 2, 3):
        assert rows[layer]["kmeans"]["pnmi"] == pytest.approx(expected["kmeans"][layer]["pnmi"])
    assert rows[3]["head"]["pnmi"] == pytest.approx(expected["head"][3]["pnmi"])
    assert rows[2]["kmeans"]["pnmi"] > 0.3  # tones are easy: the units do carry the "phones"

    # 10 ms alignments: each unit counted against both phone frames it covers, the same PNMI give or take edges
    assert sweep(model_dir, corpus, tmp_path / "at10", "--layers", "2", alignments="alignments-10ms.jsonl") == 0
    assert "alignments at 100 Hz: 2 phone frame(s)" in capsys.readouterr().out
    at_10 = json.loads((tmp_path / "at10" / "layer_sweep.json").read_text())["layers"][0]["kmeans"]
    assert at_10["num_phone_frames"] == 2 * at_10["num_frames"] == 2 * rows[2]["kmeans"]["num_frames"]
    assert at_10["pnmi"] == pytest.approx(rows[2]["kmeans"]["pnmi"], abs=0.05)


def test_sweep_with_abx_per_layer(model_dir: Path, corpus: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Each layer's features reach fastabx (a stand-in here: fastabx needs Python >= 3.12) under the item's ids."""
    seen = []

    def zerospeech_abx(item, root, **kwargs):
        features = kwargs["feature_maker"](Path(root) / f"spk0/utt0{kwargs['extension']}")
        seen.append(features.shape[1])
        return 0.1 if kwargs["speaker"] == "within" else 0.2

    monkeypatch.setitem(sys.modules, "fastabx", types.SimpleNamespace(zerospeech_abx=zerospeech_abx))
    item = tmp_path / "phones.item"
    item.write_text("#file onset offset #phone prev-phone next-phone speaker\nspk0/utt0 0.2 0.3 a i s spk0\n")
    assert sweep(model_dir, corpus, tmp_path / "sweep", "--layers", "1,3", "--abx-item", str(item)) == 0
    table = capsys.readouterr().out
    assert "ABX within" in table and "ABX across" in table
    rows = json.loads((tmp_path / "sweep" / "layer_sweep.json").read_text())["layers"]
    assert [(r["layer"], r["abx_within_speaker"], r["abx_across_speaker"]) for r in rows] == [(1, 0.1, 0.2), (3, 0.1, 0.2)]
    assert seen == [32] * 4  # hidden size 32, two speaker modes x two layers


def test_sweep_mistakes_are_one_line(model_dir: Path, corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert sweep(model_dir, corpus, out, "--layers", "2-9") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"spidr-hf evaluate: error: --layers 9: the model in {model_dir} has 3 layers."
    (corpus / "missing.jsonl").write_text(json.dumps({"id": "spk0/utt0", "phones": ["a"] * 49}) + "\n")
    assert sweep(model_dir, corpus, out, alignments="missing.jsonl") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 audio files have no alignment: 'spk0/utt2', 'spk1/utt1'" in err
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        cli(["evaluate", "--model", str(model_dir), "--alignments", str(corpus / "alignments.jsonl"), "--output-dir", str(out)])
    assert exit_info.value.code == 2 and "--model needs --audio and --alignments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["evaluate", "--layers", "1", "--abx-item", "x", "--features", "y", "--output-dir", str(out)])
    assert "--layers goes with --model" in capsys.readouterr().err
