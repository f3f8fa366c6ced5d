"""The espeak-ng synthetic corpus: alignment arithmetic, files, phone timings, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spidr_hf import espeak, synth

needs_espeak = pytest.mark.skipif(
    not espeak.espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
MINUTES = 0.3  # about 5 utterances: enough statistics, ~1 s to render


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("num_samples", [400, 401, 719, 720, 16_000, 16_399, 48_123])
def test_num_frames_matches_closed_form(num_samples: int) -> None:
    assert synth.num_frames(num_samples) == (num_samples - 400) // 320 + 1


@pytest.mark.parametrize("num_samples", [0, 1, 399])
def test_num_frames_is_zero_below_one_receptive_field(num_samples: int) -> None:
    assert synth.num_frames(num_samples) == 0


def test_frame_alignment_labels_frame_centres() -> None:
    segments = [("SIL", 0.0, 0.05), ("a", 0.05, 0.1), ("b", 0.1, 0.2)]
    # 3200 samples -> 9 frames centred at 12.5, 32.5, 52.5, ... 172.5 ms
    assert synth.frame_alignment(segments, 3200) == ["SIL", "SIL", "a", "a", "a", "b", "b", "b", "b"]


def test_frame_alignment_labels_uncovered_frames_silence() -> None:
    segments = [("a", 0.02, 0.06)]  # nothing before 20 ms nor after 60 ms
    assert synth.frame_alignment(segments, 1920) == ["SIL", "a", "a", "SIL", "SIL"]


def test_phone_segments_tile_audio_and_merge_pauses() -> None:
    events = [(100, "a"), (300, ""), (350, ""), (500, "b"), (800, "")]
    segments = synth.phone_segments(events, num_samples=800, sample_rate=1000)
    assert segments == [("SIL", 0.0, 0.1), ("a", 0.1, 0.3), ("SIL", 0.3, 0.5), ("b", 0.5, 0.8)]


def test_phone_segments_reject_events_out_of_order() -> None:
    with pytest.raises(espeak.EspeakError, match="time order"):
        synth.phone_segments([(300, "a"), (100, "b")], num_samples=800, sample_rate=1000)


def test_phone_inventory_orders_silence_vowels_consonants() -> None:
    assert synth.phone_inventory({"t", "aɪ", "SIL", "ə", "s"}) == ["SIL", "aɪ", "ə", "s", "t"]


def test_missing_library_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(espeak, "_library_name", lambda: "libdoes-not-exist.so.1")
    with pytest.raises(espeak.EspeakError, match="apt-get install espeak-ng"):
        synth.render("hello")
    assert not espeak.espeak_available()


# --------------------------------------------------------------------------- rendering


@needs_espeak
def test_render_gives_16k_float_audio_with_tiling_segments() -> None:
    wave, segments = synth.render("The quick brown fox jumps over the lazy dog.", "en-us+f2", rate=170)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert -1.0 <= wave.min() and wave.max() <= 1.0
    assert np.sqrt(np.mean(wave**2)) > 0.01  # not silent
    assert segments[0][1] == 0.0 and segments[-1][2] == pytest.approx(wave.size / synth.SAMPLING_RATE)
    for (_, _, end), (_, start, _) in zip(segments, segments[1:], strict=False):
        assert start == end  # contiguous, in order
    spoken = [p for p, _, _ in segments if p != "SIL"]
    assert spoken[:6] == ["ð", "ə", "k", "w", "ɪ", "k"]  # espeak-ng's en-us "the quick"


@needs_espeak
def test_render_is_independent_of_what_was_rendered_before() -> None:
    text = "Why did the judge enjoy the church bells?"
    first = synth.render(text, "en-us+m1", rate=170)
    synth.render("Something else entirely, at another speed.", "en+f3", rate=190)
    again = synth.render(text, "en-us+m1", rate=170)
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1]


@needs_espeak
def test_unknown_voice_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no voice 'xx-nope'"):
        synth.synthesize_corpus(tmp_path / "c", 0.01, voices=["xx-nope"], progress=False)
    with pytest.raises(ValueError, match="no voice variant 'm99'"):  # espeak-ng itself would ignore it
        synth.synthesize_corpus(tmp_path / "c", 0.01, voices=["en-us+m99"], progress=False)
    assert not (tmp_path / "c" / "audio").exists()


# --------------------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> synth.CorpusInfo:
    if not espeak.espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return synth.synthesize_corpus(tmp_path_factory.mktemp("corpus"), MINUTES, seed=0, progress=False)


def test_corpus_has_requested_duration_and_all_files(corpus: synth.CorpusInfo) -> None:
    assert MINUTES <= corpus.minutes < MINUTES + 0.2
    names = ["manifest.tsv", "manifest.jsonl", "alignments.jsonl", "phones.txt", "phones.item", "stats.json"]
    for name in [*names, "README.md"]:
        assert (corpus.root / name).is_file(), name
    stats = json.loads((corpus.root / "stats.json").read_text())
    assert stats["utterances"] == len(corpus.utterances) and stats["phones"] == len(corpus.phones)
    assert stats["minutes"] == pytest.approx(corpus.minutes, abs=1e-3)
    assert list(stats["speakers"]) == corpus.speakers
    assert set(corpus.speakers) == {u.speaker for u in corpus.utterances}
    assert sum(s["utterances"] for s in stats["speakers"].values()) == len(corpus.utterances)


def test_manifests_agree_with_audio_files(corpus: synth.CorpusInfo) -> None:
    lines = (corpus.root / "manifest.tsv").read_text().splitlines()
    audio_root = Path(lines[0])
    assert audio_root == (corpus.root / "audio").resolve()
    records = read_jsonl(corpus.root / "manifest.jsonl")
    assert len(lines) - 1 == len(records) == len(corpus.utterances)
    for line, record in zip(lines[1:], records, strict=True):
        rel, count = line.split("\t")
        assert rel == f"{record['id']}.wav" and int(count) == record["num_samples"]
        assert record["path"] == f"audio/{rel}" and record["speaker"] == record["id"].split("/")[0]
        info = sf.info(audio_root / rel)
        assert (info.samplerate, info.channels, info.frames) == (16_000, 1, record["num_samples"])
        assert record["text"]


def test_audio_is_16k_mono_in_range_and_not_silent(corpus: synth.CorpusInfo) -> None:
    for utt in corpus.utterances:
        wave, rate = sf.read(corpus.root / "audio" / f"{utt.id}.wav", dtype="float32")
        assert rate == 16_000 and wave.ndim == 1 and wave.size == utt.num_samples
        assert -1.0 <= wave.min() and wave.max() <= 1.0
        assert np.sqrt(np.mean(wave**2)) > 0.01


def test_alignments_cover_every_encoder_frame(corpus: synth.CorpusInfo) -> None:
    alignments = read_jsonl(corpus.root / "alignments.jsonl")
    assert [a["id"] for a in alignments] == [u.id for u in corpus.utterances]
    inventory = set((corpus.root / "phones.txt").read_text(encoding="utf-8").split())
    for record, utt in zip(alignments, corpus.utterances, strict=True):
        assert len(record["phones"]) == synth.num_frames(utt.num_samples)
        assert set(record["phones"]) <= inventory


def test_phones_are_plausible(corpus: synth.CorpusInfo) -> None:
    frames = [p for u in corpus.utterances for p in u.phones]
    assert np.mean([p != "SIL" for p in frames]) > 0.7  # mostly speech
    assert len(set(frames)) >= 25
    assert sum(synth.is_vowel(p) for p in frames) > 0.25 * len(frames)
    durations = np.array(
        [end - start for u in corpus.utterances for p, start, end in u.segments if p != "SIL"]
    )
    assert durations.min() > 0.005 and durations.max() < 1.0
    assert np.mean((durations >= 0.02) & (durations <= 0.4)) > 0.95
    assert 0.05 < np.median(durations) < 0.15


def test_phone_timings_are_monotone_and_inside_the_audio(corpus: synth.CorpusInfo) -> None:
    for utt in corpus.utterances:
        duration = utt.num_samples / synth.SAMPLING_RATE
        bounds = [utt.segments[0][1]] + [end for _, _, end in utt.segments]
        assert bounds[0] == 0.0 and bounds[-1] == pytest.approx(duration)
        assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))


def test_phone_timings_match_the_acoustics(corpus: synth.CorpusInfo) -> None:
    """Fricatives are noisy (high zero-crossing rate), vowels loud and voiced, pauses quiet."""
    zcr: dict[str, list[float]] = {"fricative": [], "vowel": []}
    rms: dict[str, list[float]] = {"vowel": [], "SIL": []}
    for utt in corpus.utterances:
        wave, _ = sf.read(corpus.root / "audio" / f"{utt.id}.wav", dtype="float32")
        for phone, start, end in utt.segments:
            a, b = int(start * 16_000), int(end * 16_000)
            middle = wave[a + (b - a) // 4 : b - (b - a) // 4]  # away from coarticulated edges
            if middle.size < 40:
                continue
            rate = float(np.mean(np.abs(np.diff(np.sign(middle))) > 0))
            level = float(np.sqrt(np.mean(middle**2)))
            if phone in {"s", "z", "ʃ", "f", "θ"}:
                zcr["fricative"].append(rate)
            elif synth.is_vowel(phone):
                zcr["vowel"].append(rate)
                rms["vowel"].append(level)
            elif phone == "SIL":
                rms["SIL"].append(level)
    assert np.mean(zcr["fricative"]) > 2 * np.mean(zcr["vowel"])
    assert np.mean(rms["SIL"]) < 0.25 * np.mean(rms["vowel"])


def test_item_file_lists_phones_in_context(corpus: synth.CorpusInfo) -> None:
    lines = (corpus.root / "phones.item").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#file onset offset #phone prev-phone next-phone speaker"
    ids = {u.id: u for u in corpus.utterances}
    assert len(lines) > 50
    for line in lines[1:]:
        file, onset, offset, phone, prev, nxt, speaker = line.split(" ")
        assert file in ids and speaker == ids[file].speaker
        assert 0 <= float(onset) < float(offset) <= ids[file].num_samples / 16_000
        assert "SIL" not in (phone, prev, nxt)


def test_same_seed_is_byte_identical_and_other_seed_differs(corpus: synth.CorpusInfo, tmp_path: Path) -> None:
    again = synth.synthesize_corpus(tmp_path / "again", MINUTES, seed=0, progress=False)
    assert [u.id for u in again.utterances] == [u.id for u in corpus.utterances]
    for utt in corpus.utterances:
        rel = Path("audio") / f"{utt.id}.wav"
        assert (tmp_path / "again" / rel).read_bytes() == (corpus.root / rel).read_bytes(), utt.id
    for name in ["alignments.jsonl", "manifest.jsonl", "phones.txt", "phones.item", "stats.json"]:
        assert (tmp_path / "again" / name).read_bytes() == (corpus.root / name).read_bytes(), name
    other = synth.synthesize_corpus(tmp_path / "other", 0.05, seed=1, progress=False)
    assert other.utterances[0].text != corpus.utterances[0].text
    assert (tmp_path / "other" / "audio" / f"{other.utterances[0].id}.wav").read_bytes() != (
        corpus.root / "audio" / f"{corpus.utterances[0].id}.wav"
    ).read_bytes()


def test_parallel_render_is_byte_identical_to_the_serial_one(corpus: synth.CorpusInfo, tmp_path: Path) -> None:
    """Three processes (each round renders past the target: the extra utterances must not be kept)."""
    parallel = synth.synthesize_corpus(tmp_path / "parallel", MINUTES, seed=0, progress=False, workers=3)
    files = sorted(p.relative_to(corpus.root) for p in corpus.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(parallel.root) for p in parallel.root.rglob("*") if p.is_file())
    for rel in files:
        ours, theirs = [(root / rel).read_bytes() for root in (parallel.root, corpus.root)]
        if rel.name == "manifest.tsv":  # its first line is the corpus's absolute audio folder
            ours, theirs = ours.split(b"\n", 1)[1], theirs.split(b"\n", 1)[1]
        assert ours == theirs, rel
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        synth.synthesize_corpus(tmp_path / "none", MINUTES, progress=False, workers=0)


def test_existing_corpus_needs_overwrite(corpus: synth.CorpusInfo) -> None:
    with pytest.raises(FileExistsError, match="overwrite"):
        synth.synthesize_corpus(corpus.root, 0.01, progress=False)


@needs_espeak
def test_cli_writes_a_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spidr_hf.commands import synth_corpus

    out = tmp_path / "cli"
    assert (
        synth_corpus.main([str(out), "--minutes", "0.05", "--seed", "2", "--voices", "en-us+f4", "--quiet"])
        == 0
    )
    assert "utterances" in capsys.readouterr().out
    records = read_jsonl(out / "manifest.jsonl")
    assert records and {r["speaker"] for r in records} == {"en-us-f4"}
    assert synth_corpus.main([str(out), "--minutes", "0.05"]) == 2  # refuses to overwrite (a user's mistake: status 2)
