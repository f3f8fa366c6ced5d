"""The synthetic LM benchmark (spidr-hf synth-corpus --benchmark): ZeroSpeech 2021 layout, minimal pairs that
differ as promised, byte-for-byte reproducible."""

from __future__ import annotations

import csv
import random

import pytest

from spidr_hf.cli import main
from spidr_hf.espeak import espeak_available
from spidr_hf.lm.benchmarks import find_benchmarks
from spidr_hf.lm.synthetic_benchmark import pseudo_word, violation

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")


def test_pseudo_words_change_one_consonant_within_its_class():
    rng = random.Random(0)
    for phones in ("k'at", "b'3:d", "g3r'A:Z", "tr'EZ3"):
        pseudo = pseudo_word(phones, rng, {phones})
        changed = [(a, b) for a, b in zip(phones, pseudo, strict=True) if a != b]
        assert len(changed) == 1 and any(set(changed[0]) <= set(c) for c in ("pbtdkg", "fvszSZ", "mn")), (phones, pseudo)
    assert pseudo_word("'aI", rng, set()) is None  # no consonant: no pseudo-word
    assert pseudo_word("m'i:", rng, {"n'i:"}) is None  # the only change is a word already


def test_violations_swap_words_or_break_determiner_agreement():
    rng = random.Random(0)
    kinds = set()
    for _ in range(50):
        sentence = "This big cat saw a dog near the river"
        kind, wrong = violation(sentence, rng)
        kinds.add(kind)
        if kind == "word_order":
            assert sorted(wrong.split()) == sorted(sentence.split()) and wrong != sentence
        else:
            assert wrong.split()[0] == "These" or " these dog " in wrong
    assert kinds == {"word_order", "determiner_agreement"}


@needs_espeak
@pytest.mark.slow
def test_synthetic_benchmark_is_zerospeech_layout_and_reproducible(tmp_path):
    args = ["--benchmark", "--words", "4", "--sentences", "2", "--seed", "3", "--quiet"]
    assert main(["synth-corpus", str(tmp_path / "a"), *args]) == 0
    assert main(["synth-corpus", str(tmp_path / "b"), *args]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 10
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    found = {b.name: b for b in find_benchmarks(tmp_path / "a")}
    assert sorted(found) == ["lexical/dev", "syntactic/dev"]
    assert len(found["syntactic/dev"].pairs) == 2 * 2  # sentences x voices
    with (tmp_path / "a" / "lexical" / "dev" / "gold.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["voice"] for r in rows} == {"en-us-m5", "en-f5"}  # voices the corpus and the demo never use
    assert main(["synth-corpus", str(tmp_path / "a"), *args]) == 2  # no silent overwrite


@needs_espeak
@pytest.mark.slow
def test_demo_lm_stage_scores_every_codebook_layer_beside_its_pnmi(tmp_path, tiny_config):
    import torch

    from spidr_hf import SpidRForPreTraining
    from spidr_hf.lm.demo_stage import LMStageSettings, lm_table, run_lm_stage
    from spidr_hf.synth import synthesize_corpus
    from spidr_hf.unit_scores import AlignedCorpus

    synthesize_corpus(tmp_path / "corpus", 0.1, progress=False)
    torch.manual_seed(0)
    SpidRForPreTraining(tiny_config).save_pretrained(tmp_path / "model")
    layers = list(tiny_config.codebook_layers)
    rows = [{"model": "baseline", "units": "logmel k-means", "layer": None, "pnmi": 0.3}]
    rows += [{"model": m, "units": "head", "layer": layer, "pnmi": 0.1 * layer} for m in ("initial", "trained") for layer in layers]
    settings = LMStageSettings(words=3, sentences=1, max_steps=2, all_layers=True)
    models = {"initial": tmp_path / "model", "trained": tmp_path / "model"}
    lm_rows = run_lm_stage(tmp_path, AlignedCorpus.load(tmp_path / "corpus"), models, rows, tiny_config.codebook_size, settings)
    assert [(r["model"], r["layer"]) for r in lm_rows] == [("baseline", None)] + [(m, layer) for m in models for layer in layers]
    assert [r["pnmi"] for r in lm_rows] == [r["pnmi"] for r in rows]  # each beside its own units' PNMI
    assert all(0 <= r["lexical"] <= 1 and 0 <= r["syntactic"] <= 1 for r in lm_rows)
    assert len(lm_table(lm_rows).splitlines()) == 2 + len(lm_rows)
    n = lm_rows[0]["lexical_ids"], lm_rows[0]["syntactic_ids"]  # the table says how many items each accuracy is over
    assert all(n) and f"{n[0]} lexical and {n[1]} syntactic items" in lm_table(lm_rows).splitlines()[0]
