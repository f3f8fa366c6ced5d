"""Evaluation on alignments and units as users have them: gzip-compressed JSON lines, ids under ``name``,
Montreal Forced Aligner TextGrids, 10 ms phones against 20 ms units (the SpidR paper's pairing), the paper's
own files, and the one-line errors for each bad input."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from spidr_hf import evaluation as ev
from spidr_hf.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
PAPER_UNITS = Path(os.environ.get("SPIDR_FIXTURES", REPO.parent / "shared" / "fixtures")) / "paper-units"


def write_jsonl(path: Path, records: list[dict], compress: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(text, mtime=0) if compress else text)
    return path


def write_textgrid(path: Path, tiers: dict[str, list[tuple[float, float, str]]], end: float) -> Path:
    from praatio import textgrid

    grid = textgrid.Textgrid()
    for name, intervals in tiers.items():
        grid.addTier(textgrid.IntervalTier(name, intervals, 0.0, end))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(str(path), format="long_textgrid", includeBlankSpaces=True)  # MFA writes "" between phones
    return path


def evaluate_fails(argv: list[str], out: Path, capsys) -> str:
    """Run `spidr-hf evaluate` expecting a user error: its one stderr line (exit 2, no output folder)."""
    assert cli(["evaluate", *argv, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("spidr-hf evaluate: error: "), err
    assert not out.exists()  # every input is checked before the output folder is made
    return err


# 10 ms phones of two utterances, and the 20 ms units that cover them (phones 0-2 frames longer, as in the paper)
PHONES = {"u1": ["SIL"] * 4 + ["a"] * 6 + ["b"] * 4 + ["SIL"] * 3, "u2": ["b"] * 5 + ["a"] * 5}
UNITS = {"u1": [0, 0, 1, 1, 2, 3, 3, 0], "u2": [3, 3, 2, 1, 1]}


# --------------------------------------------------------------------------- reading


def test_gzip_files_and_name_ids_read_as_plain_jsonl(tmp_path: Path) -> None:
    records = [{"name": k, "units": v} for k, v in UNITS.items()]
    plain = write_jsonl(tmp_path / "units.jsonl", [{"id": k, "units": v} for k, v in UNITS.items()])
    compressed = write_jsonl(tmp_path / "units.jsonl.gz", records, compress=True)
    assert ev.read_units(plain) == ev.read_units(compressed) == UNITS
    both = write_jsonl(tmp_path / "both.jsonl", [{"id": "x", "name": "y", "units": [1]}])
    assert ev.read_units(both) == {"x": [1]}  # "id" wins over "name"
    with pytest.raises(ValueError, match=r"expected keys 'id' \(or 'name'\) and 'units'"):
        ev.read_units(write_jsonl(tmp_path / "no-id.jsonl", [{"utt": "x", "units": [1]}]))
    with pytest.raises(ValueError, match="list of int"):
        ev.read_units(write_jsonl(tmp_path / "bool.jsonl", [{"id": "x", "units": [1, True]}]))


def test_textgrid_phone_tier_to_frames_at_any_rate(tmp_path: Path) -> None:
    # a gap (MFA's empty interval) and "sil" both read as SIL, as the synthetic corpus labels silence
    phones = [(0.0, 0.1, "AH0"), (0.15, 0.3, "B"), (0.3, 0.4, "sil")]
    write_textgrid(tmp_path / "grids" / "spk" / "utt1.TextGrid", {"words": [(0.0, 0.3, "ab")], "phones": phones}, 0.5)
    at_100 = ev.read_alignments(tmp_path / "grids")
    assert list(at_100) == ["spk/utt1"]  # the path relative to the folder, as spidr-hf extract names units
    assert at_100["spk/utt1"] == ["AH0"] * 10 + ["SIL"] * 5 + ["B"] * 15 + ["SIL"] * 20
    at_50 = ev.read_alignments(tmp_path / "grids", rate=50)["spk/utt1"]  # centres 0.01, 0.03, ...
    assert at_50 == ["AH0"] * 5 + ["SIL"] * 2 + ["B"] * 8 + ["SIL"] * 10
    assert ev.read_alignments(tmp_path / "grids", tier="words", rate=20)["spk/utt1"] == ["ab"] * 6 + ["SIL"] * 4
    with pytest.raises(ValueError, match=r"no tier 'phone' \(its tiers: 'words', 'phones'\).*--phone-tier"):
        ev.read_alignments(tmp_path / "grids", tier="phone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .TextGrid files"):
        ev.read_alignments(tmp_path / "empty")


# --------------------------------------------------------------------------- pairing at twice the units' rate


def test_each_unit_counts_against_both_phone_frames_it_covers() -> None:
    assert ev.infer_frames_per_unit(PHONES, UNITS) == 2
    assert ev.infer_frames_per_unit({"u": ["a"] * 7}, {"u": [0] * 6}) == 1
    pairs = ev.pair_frames(PHONES, UNITS, frames_per_unit=2)
    # u1: 17 phone frames, 8 units -> the 17th frame dropped; u2: 10 phone frames, 5 units -> all kept
    assert [(i, len(p), len(u)) for i, p, u in pairs] == [("u1", 16, 8), ("u2", 10, 5)]
    frames = ev.count_frames(pairs, phones=["SIL", "a", "b"], frames_per_unit=2)
    # u1: units 0 0 0 0 1 1 1 1 2 2 3 3 3 3 0 0 over SIL SIL SIL SIL a a a a a a b b b b SIL SIL
    # u2: units 3 3 3 3 2 2 1 1 1 1 over b b b b b a a a a a
    expected = np.array([[6, 0, 0, 0], [0, 8, 3, 0], [0, 0, 1, 8]])
    np.testing.assert_array_equal(frames.counts, expected)
    np.testing.assert_array_equal(frames.unit_counts, [3, 4, 2, 4])  # the units' own 13 frames
    assert frames.num_frames == 13 and frames.dedup_units == 5 + 3
    metrics = ev.metrics_from_counts(frames)
    assert metrics["bitrate"] == pytest.approx(2 * 8 * 50 / 13)  # log2(4) bits x 8 units in 13 frames of 20 ms
    assert metrics["num_phone_frames"] == 26 and metrics["alignment_frames_per_unit"] == 2
    # a phone frame short: the last unit pairs with the one phone frame it still covers
    short = ev.pair_frames({"u": ["a", "a", "b"]}, {"u": [4, 5]}, frames_per_unit=2)
    assert short == [("u", ["a", "a", "b"], [4, 5])]
    assert ev.count_frames(short, frames_per_unit=2).counts.tolist() == [[0] * 4 + [2, 0], [0] * 5 + [1]]


def test_inconsistent_rate_ratio_names_an_utterance_and_both_lengths() -> None:
    phones = {**PHONES, "u3": ["a"] * 10}  # u3 at the units' own rate
    units = {**UNITS, "u3": [1] * 10}
    with pytest.raises(ValueError, match=r"'u3': 10 phone frames but 10 unit frames, not 2 phone frame\(s\)"):
        ev.evaluate_units(phones, units, frames_per_unit=None)
    with pytest.raises(ValueError, match=r"'u1': 17 phone frames but 8 unit frames, not 1 phone frame"):
        ev.evaluate_units(PHONES, UNITS)  # the library's default stays one phone frame per unit frame


# --------------------------------------------------------------------------- the command line


def test_cli_infers_or_forces_the_alignment_rate(tmp_path: Path, capsys) -> None:
    alignments = write_jsonl(tmp_path / "phones.jsonl.gz", [{"name": k, "phones": v} for k, v in PHONES.items()], True)
    units = write_jsonl(tmp_path / "units.jsonl", [{"id": k, "units": v} for k, v in UNITS.items()])
    argv = ["evaluate", "--alignments", str(alignments), "--units", str(units)]
    assert cli([*argv, "--output-dir", str(tmp_path / "inferred")]) == 0
    printed = capsys.readouterr().out
    assert "alignments at 100 Hz: 2 phone frame(s) per 50 Hz unit frame (inferred from the lengths" in printed
    metrics = json.loads((tmp_path / "inferred" / "metrics.json").read_text())
    assert metrics["num_phone_frames"] == 26 and metrics["num_frames"] == 13
    assert metrics["phone_purity"] == pytest.approx((6 + 8 + 3 + 8) / 26)
    assert cli([*argv, "--alignment-rate", "100", "--output-dir", str(tmp_path / "forced")]) == 0
    assert "(--alignment-rate)" in capsys.readouterr().out
    assert json.loads((tmp_path / "forced" / "metrics.json").read_text()) == metrics
    err = evaluate_fails(argv[1:] + ["--alignment-rate", "50"], tmp_path / "at50", capsys)
    assert "'u1': 17 phone frames but 8 unit frames" in err


def test_cli_scores_textgrids_against_units(tmp_path: Path, capsys) -> None:
    grids = tmp_path / "mfa"
    write_textgrid(grids / "u1.TextGrid", {"phones": [(0.0, 0.2, "a"), (0.2, 0.4, "b")]}, 0.4)
    units = write_jsonl(tmp_path / "units.jsonl", [{"id": "u1", "units": [1] * 10 + [2] * 9}])  # 19 frames
    argv = ["evaluate", "--alignments", str(grids), "--units", str(units), "--output-dir", str(tmp_path / "e")]
    assert cli(argv) == 0
    assert "alignments at 100 Hz" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["num_phone_frames"] == 38 and metrics["phone_purity"] == pytest.approx(1.0)
    assert cli([*argv, "--alignment-rate", "50"]) == 0  # one phone frame per unit frame
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["num_phone_frames"] == 19


# --------------------------------------------------------------------------- bad input: one line, exit 2, nothing written


@pytest.fixture
def good_units(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "units.jsonl", [{"id": k, "units": v} for k, v in UNITS.items()])


def test_corrupt_gzip_is_one_line_naming_the_file(tmp_path: Path, good_units: Path, capsys) -> None:
    whole = gzip.compress(b"".join(json.dumps({"id": k, "phones": v}).encode() + b"\n" for k, v in PHONES.items()))
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    garbled = tmp_path / "garbled.jsonl.gz"
    garbled.write_bytes(whole[:10] + bytes(range(256)) + whole[-8:])
    for path in (truncated, garbled):
        err = evaluate_fails(["--alignments", str(path), "--units", str(good_units)], tmp_path / "out", capsys)
        assert f"{path}: a damaged gzip file" in err and f"gzip -t {path}" in err
    misnamed = tmp_path / "gzipped-but-named.jsonl"
    misnamed.write_bytes(whole)
    err = evaluate_fails(["--alignments", str(misnamed), "--units", str(good_units)], tmp_path / "out", capsys)
    assert f"{misnamed} is gzip-compressed but not named .gz: rename it to gzipped-but-named.jsonl.gz" in err
    plain_gz = tmp_path / "plain.jsonl.gz"
    plain_gz.write_text(json.dumps({"id": "u1", "phones": PHONES["u1"]}) + "\n")
    err = evaluate_fails(["--alignments", str(plain_gz), "--units", str(good_units)], tmp_path / "out", capsys)
    assert f"{plain_gz} is named .gz but is not gzip-compressed" in err
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps({"id": "u1", "phones": ["é"]}, ensure_ascii=False).encode("latin-1"))
    err = evaluate_fails(["--alignments", str(latin1), "--units", str(good_units)], tmp_path / "out", capsys)
    assert f"{latin1}: not UTF-8 text" in err


def test_textgrid_without_the_tier_or_unparseable(tmp_path: Path, good_units: Path, capsys) -> None:
    write_textgrid(tmp_path / "mfa" / "u1.TextGrid", {"words": [(0.0, 0.2, "a")], "phonemes": [(0.0, 0.2, "a")]}, 0.2)
    err = evaluate_fails(["--alignments", str(tmp_path / "mfa"), "--units", str(good_units)], tmp_path / "out", capsys)
    assert f"{tmp_path / 'mfa' / 'u1.TextGrid'} has no tier 'phones' (its tiers: 'words', 'phonemes')" in err
    assert "--phone-tier" in err
    (tmp_path / "mfa" / "u2.TextGrid").write_text("not a TextGrid\n")
    argv = ["--alignments", str(tmp_path / "mfa"), "--units", str(good_units), "--phone-tier", "phonemes"]
    err = evaluate_fails(argv, tmp_path / "out", capsys)
    assert f"{tmp_path / 'mfa' / 'u2.TextGrid'}: not a readable TextGrid" in err


def test_rate_that_is_not_an_integer_multiple(tmp_path: Path, good_units: Path, capsys) -> None:
    alignments = write_jsonl(tmp_path / "a.jsonl", [{"id": k, "phones": v} for k, v in PHONES.items()])
    argv = ["--alignments", str(alignments), "--units", str(good_units)]
    err = evaluate_fails([*argv, "--alignment-rate", "75"], tmp_path / "out", capsys)
    assert "--alignment-rate 75 is not an integer multiple of the units' 50 frames per second" in err
    at_1_5 = write_jsonl(tmp_path / "b.jsonl", [{"id": k, "phones": ["a"] * (3 * len(v) // 2)} for k, v in UNITS.items()])
    err = evaluate_fails(["--alignments", str(at_1_5), "--units", str(good_units)], tmp_path / "out", capsys)
    assert "'u1': 12 phone frames but 8 unit frames, not 1 phone frame(s) per unit frame" in err
    assert "integer multiple" in err


# --------------------------------------------------------------------------- the paper's row


@pytest.mark.slow
def test_paper_files_give_the_papers_row(tmp_path: Path, capsys) -> None:
    if not (PAPER_UNITS / "units-quality-spidr-codebooks-l6.csv").is_file():
        pytest.skip(f"the SpidR paper's unit files are not at {PAPER_UNITS} (they live in ../shared, next to the repo)")
    with open(PAPER_UNITS / "units-quality-spidr-codebooks-l6.csv", newline="") as f:
        paper = {row["metric"]: float(row["score"]) for row in csv.DictReader(f)}
    assert cli(["evaluate", "--alignments", str(PAPER_UNITS / "phoneme-dev-clean-and-other.jsonl.gz"),
                "--units", str(PAPER_UNITS / "units-codebooks-spidr-l6-dev-clean-and-other.jsonl.gz"),
                "--output-dir", str(tmp_path / "paper")]) == 0  # fmt: skip
    assert "alignments at 100 Hz: 2 phone frame(s) per 50 Hz unit frame" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "paper" / "metrics.json").read_text())
    assert set(paper) == {"phone_purity", "cluster_purity", "pnmi", "codebook_perplexity", "active_codewords", "bitrate"}
    for name, value in paper.items():
        assert metrics[name] == pytest.approx(value, abs=1e-4), name
    assert metrics["num_utterances"] == 5567
