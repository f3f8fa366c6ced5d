"""Unit-quality metrics against hand computations, pairing errors, plots, ABX glue and the CLI."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from spidr_hf import evaluation as ev

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# --------------------------------------------------------------------------- metrics on count matrices


@pytest.mark.parametrize(
    "counts",
    [
        np.diag([5, 3, 2]),  # unit i <-> phone i
        np.array([[0, 5, 0], [3, 0, 0], [0, 0, 2]]),  # one-to-one under a permutation
    ],
)
def test_one_to_one_mapping_is_perfect(counts: np.ndarray) -> None:
    assert ev.phone_purity(counts) == pytest.approx(1.0)
    assert ev.cluster_purity(counts) == pytest.approx(1.0)
    assert ev.pnmi(counts) == pytest.approx(1.0)


def test_independent_phone_and_unit_have_zero_pnmi() -> None:
    counts = np.outer([1, 2], [3, 1, 2])  # p(y, z) = p(y) p(z)
    assert ev.pnmi(counts) == pytest.approx(0.0, abs=1e-12)
    # each unit's best phone is the more frequent phone (2/3); each phone's best unit is unit 0 (1/2)
    assert ev.phone_purity(counts) == pytest.approx(2 / 3)
    assert ev.cluster_purity(counts) == pytest.approx(1 / 2)


def test_asymmetric_matrix_matches_hand_computation() -> None:
    counts = np.array([[4, 1, 1], [0, 2, 0]])  # 8 frames: p(y,z) = [[1/2, 1/8, 1/8], [0, 1/4, 0]]
    # phone purity: column maxima 1/2 + 1/4 + 1/8; cluster purity: row maxima 1/2 + 1/4
    assert ev.phone_purity(counts) == pytest.approx(0.875)
    assert ev.cluster_purity(counts) == pytest.approx(0.75)
    # p(y) = [3/4, 1/4], p(z) = [1/2, 3/8, 1/8]
    mi = (
        0.5 * math.log2(0.5 / (0.75 * 0.5))
        + 0.125 * math.log2(0.125 / (0.75 * 0.375))
        + 0.125 * math.log2(0.125 / (0.75 * 0.125))
        + 0.25 * math.log2(0.25 / (0.25 * 0.375))
    )
    phone_entropy = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert ev.mutual_information_bits(counts) == pytest.approx(mi)
    assert ev.pnmi(counts) == pytest.approx(mi / phone_entropy)
    assert ev.pnmi(counts) == pytest.approx(0.575533, abs=1e-6)


def test_pnmi_is_nan_with_a_single_phone_and_empty_counts_are_an_error() -> None:
    assert math.isnan(ev.pnmi(np.array([[3, 4]])))
    with pytest.raises(ValueError, match="at least one count"):
        ev.phone_purity(np.zeros((2, 2)))


# --------------------------------------------------------------------------- unit-only metrics


@pytest.mark.parametrize(
    ("unit_counts", "expected_perplexity", "expected_active"),
    [([2, 2, 0, 0], 2.0, 2), ([1, 1, 1, 1], 4.0, 4), ([5, 0, 0], 1.0, 1), ([2, 1, 1], 2 ** (1.5), 3)],
)
def test_perplexity_and_active_codewords(unit_counts, expected_perplexity, expected_active) -> None:
    assert ev.perplexity(np.array(unit_counts)) == pytest.approx(expected_perplexity)
    assert ev.active_codewords(np.array(unit_counts)) == expected_active


def test_bitrate_of_deduplicated_sequences() -> None:
    # dedup: [1, 2, 3] and [3, 0] -> 5 units in 10 frames (0.2 s) -> 25 units/s x log2(4) bits
    assert ev.sequences_bitrate([[1, 1, 2, 2, 2, 3], [3, 3, 0, 0]], codebook_size=4) == pytest.approx(50.0)
    # repeats across an utterance boundary are not merged
    assert ev.sequences_bitrate([[7, 7], [7, 7]], codebook_size=8) == pytest.approx(3 * 2 * 50 / 4)
    assert ev.bitrate(dedup_units=50, num_frames=50, codebook_size=256) == pytest.approx(400.0)


@pytest.mark.parametrize(
    ("units", "expected"), [([], []), ([4], [4]), ([3, 3, 5, 5, 5, 3], [3, 5, 3]), ([1, 2, 1], [1, 2, 1])]
)
def test_deduplicate(units: list[int], expected: list[int]) -> None:
    assert ev.deduplicate(units) == expected


# --------------------------------------------------------------------------- pairing and counting


def test_pairing_truncates_small_mismatches() -> None:
    pairs = ev.pair_frames({"a": ["x", "y", "z", "z"]}, {"a": [1, 2]})
    assert pairs == [("a", ["x", "y"], [1, 2])]


def test_pairing_rejects_large_mismatch_naming_the_utterance() -> None:
    with pytest.raises(ValueError, match=r"'spk/utt7': 5 phone frames but 2 unit frames"):
        ev.pair_frames({"spk/utt7": ["x"] * 5}, {"spk/utt7": [0, 0]})


def test_pairing_rejects_ids_missing_on_either_side() -> None:
    with pytest.raises(ValueError, match=r"alignments but no units: 'b'"):
        ev.pair_frames({"a": ["x"], "b": ["x"]}, {"a": [0]})
    with pytest.raises(ValueError, match=r"units but no alignments: 'audio/a'"):
        ev.pair_frames({"a": ["x"]}, {"a": [0], "audio/a": [0]})


def test_count_frames_and_codebook_checks() -> None:
    pairs = [("u1", ["SIL", "a", "a", "b"], [0, 1, 1, 2]), ("u2", ["b", "SIL"], [2, 0])]
    frames = ev.count_frames(pairs, phones=["SIL", "b", "a"])
    assert frames.phones == ["SIL", "b", "a"] and frames.codebook_size == 3
    np.testing.assert_array_equal(frames.counts, [[2, 0, 0], [0, 0, 2], [0, 2, 0]])
    np.testing.assert_array_equal(frames.unit_counts, [2, 2, 2])
    assert frames.dedup_units == 3 + 2 and frames.num_frames == 6
    assert ev.count_frames(pairs, codebook_size=8).counts.shape == (3, 8)
    with pytest.raises(ValueError, match="outside the codebook of size 2"):
        ev.count_frames(pairs, codebook_size=2)
    with pytest.raises(ValueError, match="non-negative"):
        ev.count_frames([("u", ["a"], [-1])])


def test_evaluate_units_oracle_random_and_silence_exclusion() -> None:
    rng = np.random.default_rng(0)
    inventory = ["SIL", "a", "i", "s", "t"]
    alignments = {f"u{i}": [inventory[k] for k in rng.integers(0, 5, size=200)] for i in range(4)}
    oracle = {uid: [inventory.index(p) for p in phones] for uid, phones in alignments.items()}
    metrics = ev.evaluate_units(alignments, oracle, codebook_size=8)
    assert metrics["pnmi"] == pytest.approx(1.0) and metrics["phone_purity"] == pytest.approx(1.0)
    assert metrics["active_codewords"] == 5 and metrics["codebook_size"] == 8
    assert metrics["num_frames"] == metrics["num_phone_frames"] == 800
    random_units = {uid: rng.integers(0, 8, size=len(p)).tolist() for uid, p in alignments.items()}
    assert ev.evaluate_units(alignments, random_units)["pnmi"] < 0.05
    no_sil = ev.evaluate_units(alignments, oracle, exclude_silence=True)
    silence_frames = sum(p == "SIL" for ph in alignments.values() for p in ph)
    assert no_sil["num_phone_frames"] == 800 - silence_frames and no_sil["num_phones"] == 4
    assert no_sil["num_frames"] == 800 and no_sil["excluded_silence"] is True
    assert no_sil["codebook_perplexity"] == pytest.approx(metrics["codebook_perplexity"])


def test_unit_order_sorts_units_by_most_likely_phone() -> None:
    counts = np.array([[0, 9, 0, 1, 0], [5, 0, 0, 4, 0], [0, 1, 0, 0, 3]])
    # unit 2 is unused; unit 1 -> phone 0; units 0 (1.0) and 3 (0.8) -> phone 1; unit 4 -> phone 2
    assert ev.unit_order(counts).tolist() == [1, 0, 3, 4]


# --------------------------------------------------------------------------- plots


def test_plots_are_valid_pngs(tmp_path: Path) -> None:
    counts = np.array([[4, 1, 0, 1], [0, 2, 0, 5], [3, 0, 0, 0]])
    assert_png(ev.plot_phone_unit_matrix(counts, ["SIL", "ə", "θ"], tmp_path / "matrix.png"))
    assert_png(ev.plot_codebook_usage(counts.sum(axis=0), tmp_path / "usage.png"))
    assert_png(ev.plot_loss_curve([(0, 5.1), (10, 4.2), (20, 3.9)], tmp_path / "sub" / "loss.png"))
    with pytest.raises(ValueError, match="no"):
        ev.plot_loss_curve([], tmp_path / "empty.png")


# --------------------------------------------------------------------------- ABX glue


def test_abx_without_fastabx_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "fastabx", None)  # makes `import fastabx` fail
    with pytest.raises(ImportError, match=r"pip install spidr-hf\[abx\]"):
        ev.abx_error_rates(tmp_path / "x.item", tmp_path)


def test_load_features_formats(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    features = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    save_file({"layer6": features}, tmp_path / "one.safetensors")
    save_file({"layer6": features, "layer8": features * 2}, tmp_path / "two.safetensors")
    np.save(tmp_path / "a.npy", features.numpy().astype(np.float16))
    torch.save(features, tmp_path / "a.pt")
    torch.testing.assert_close(ev.load_features(tmp_path / "one.safetensors"), features)
    torch.testing.assert_close(ev.load_features(tmp_path / "two.safetensors", "layer8"), features * 2)
    with pytest.raises(ValueError, match="layer6"):
        ev.load_features(tmp_path / "two.safetensors")
    torch.testing.assert_close(ev.load_features(tmp_path / "a.npy"), features)
    torch.testing.assert_close(ev.load_features(tmp_path / "a.pt"), features)


def test_abx_glue_calls_zerospeech_abx_per_speaker_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Our side of the fastabx call (its real run is the next test, where fastabx installs)."""
    from safetensors.torch import save_file

    save_file({"layer6": torch.ones(5, 2)}, tmp_path / "utt.safetensors")
    calls = []

    def zerospeech_abx(item, root, **kwargs):
        calls.append((item, root, kwargs))
        loaded = kwargs["feature_maker"](Path(root) / "utt.safetensors")
        assert loaded.shape == (5, 2)
        return 0.125 if kwargs["speaker"] == "within" else 0.25

    monkeypatch.setitem(sys.modules, "fastabx", types.SimpleNamespace(zerospeech_abx=zerospeech_abx))
    result = ev.abx_error_rates(tmp_path / "phones.item", tmp_path, feature_key="layer6")
    assert result == {"abx_within_speaker": 0.125, "abx_across_speaker": 0.25}
    assert [c[2]["speaker"] for c in calls] == ["within", "across"]
    expected = {
        "max_size_group": 10,
        "max_x_across": 5,
        "context": "within",
        "distance": "angular",
        "frequency": 50,
    }
    assert all(c[2].items() >= expected.items() and c[2]["extension"] == ".safetensors" for c in calls)


def test_abx_with_fastabx_separates_distinct_phones(tmp_path: Path) -> None:
    pytest.importorskip(
        "fastabx", reason="fastabx is not installed (pip install spidr-hf[abx]; needs Python >= 3.12)"
    )
    rng = np.random.default_rng(0)
    direction = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
    sequence = "cacbcacbc"  # a and b both between c's: one context, so every cell has A and B
    lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for speaker in ["s1", "s2"]:
        (tmp_path / speaker).mkdir()
        for u in range(4):
            # 0.1 s (5 frames at 50 Hz) per phone, a noisy copy of the phone's direction
            frames = [np.tile(direction[p], (5, 1)) + 0.05 * rng.normal(size=(5, 3)) for p in sequence]
            torch.save(
                torch.tensor(np.concatenate(frames), dtype=torch.float32), tmp_path / speaker / f"u{u}.pt"
            )
            for k, phone in enumerate(sequence):
                if phone != "c":
                    lines.append(f"{speaker}/u{u} {k * 0.1:.4f} {(k + 1) * 0.1:.4f} {phone} c c {speaker}")
    item = tmp_path / "test.item"
    item.write_text("\n".join(lines) + "\n")
    result = ev.abx_error_rates(item, tmp_path, extension=".pt", device="cpu")
    assert result["abx_within_speaker"] < 0.05 and result["abx_across_speaker"] < 0.05


# --------------------------------------------------------------------------- CLI


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def tiny_inputs(tmp_path: Path) -> tuple[Path, Path]:
    phones = {"spk/u0": ["SIL", "a", "a", "s", "s", "SIL"], "spk/u1": ["t", "a", "a", "a", "SIL"]}
    unit_of = {"SIL": 0, "a": 3, "s": 1, "t": 1}
    alignments = write_jsonl(
        tmp_path / "alignments.jsonl", [{"id": k, "phones": v} for k, v in phones.items()]
    )
    units = write_jsonl(
        tmp_path / "units.jsonl",
        # one frame short on u1 (truncation), an extra key as spidr-hf extract writes
        [
            {"id": k, "units": [unit_of[p] for p in v][: len(v) - (k == "spk/u1")], "path": "x.wav"}
            for k, v in phones.items()
        ],
    )
    (tmp_path / "phones.txt").write_text("SIL\na\ns\nt\n", encoding="utf-8")
    return alignments, units


def test_cli_writes_metrics_and_plots(tiny_inputs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from spidr_hf.commands import evaluate

    alignments, units = tiny_inputs
    out = tmp_path / "eval"
    argv = [
        "--alignments",
        str(alignments),
        "--units",
        str(units),
        "--output-dir",
        str(out),
        "--codebook-size",
        "4",
    ]
    assert evaluate.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_frames"] == 10 and metrics["codebook_size"] == 4 and metrics["active_codewords"] == 3
    assert metrics["phone_purity"] == pytest.approx(0.9)  # unit 1 is s (2) or t (1): loses 1 of 10 frames
    assert metrics["cluster_purity"] == pytest.approx(1.0)
    assert 0.0 < metrics["pnmi"] < 1.0
    assert_png(out / "phone_unit_matrix.png")
    assert_png(out / "codebook_usage.png")
    printed = capsys.readouterr().out
    assert "phone_purity" in printed and "pnmi" in printed

    assert evaluate.main([*argv, "--exclude-silence"]) == 0
    assert json.loads((out / "metrics.json").read_text())["num_phone_frames"] == 8  # 2 SIL frames dropped


def test_cli_reports_mismatched_ids(tiny_inputs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from spidr_hf.commands import evaluate

    alignments, _ = tiny_inputs
    units = write_jsonl(tmp_path / "other.jsonl", [{"id": "spk/u0", "units": [0] * 6}])
    assert (
        evaluate.main(
            ["--alignments", str(alignments), "--units", str(units), "--output-dir", str(tmp_path / "e")]
        )
        == 2  # a user's mistake, as in every command (was 1)
    )
    assert "'spk/u1'" in capsys.readouterr().err


def test_cli_needs_something_to_do(tmp_path: Path) -> None:
    from spidr_hf.commands import evaluate

    with pytest.raises(SystemExit):
        evaluate.main(["--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        evaluate.main(["--alignments", "a.jsonl", "--output-dir", str(tmp_path)])
