"""Tests of spidr_hf.audio: decoding, down-mixing, resampling, standardisation, file discovery."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spidr_hf.audio import (
    AUDIO_EXTENSIONS,
    AudioDecodeError,
    find_audio_files,
    load_audio,
    resampled_length,
    standardize,
    walk_audio_files,
)


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine wave."""
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(wave: np.ndarray, rate: int) -> float:
    """Frequency of the largest FFT bin."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("ext", "fmt", "atol"), [("wav", "WAV", 1e-4), ("flac", "FLAC", 1e-4), ("ogg", "OGG", 0.1)]
)
def test_load_formats(tmp_path, ext, fmt, atol):
    wave = sine(440, 16_000, 0.5)
    path = tmp_path / f"a.{ext}"
    sf.write(path, wave, 16_000, format=fmt)
    loaded = load_audio(path)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert len(loaded) == len(wave)
    np.testing.assert_allclose(loaded, wave, atol=atol)  # Vorbis is lossy


def test_load_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support (needs >= 1.1)")
    wave = sine(440, 16_000, 0.5)
    sf.write(tmp_path / "a.mp3", wave, 16_000, format="MP3")
    loaded = load_audio(tmp_path / "a.mp3")
    assert abs(len(loaded) - len(wave)) < 1200  # an MP3 encoder may pad a frame
    assert abs(peak_frequency(loaded, 16_000) - 440) < 5


def test_load_from_file_object(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, sine(440, 16_000, 0.1), 16_000, format="FLAC")
    buffer.seek(0)
    assert len(load_audio(buffer)) == 1600


def test_stereo_downmix_and_error(tmp_path):
    left, right = sine(440, 16_000, 0.2), sine(440, 16_000, 0.2, amplitude=0.1)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16_000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="2 channels"):
        load_audio(tmp_path / "s.wav", mono="error")


@pytest.mark.parametrize("rate", [8_000, 44_100])
def test_resampling_keeps_a_sine(tmp_path, rate):
    sf.write(tmp_path / "r.wav", sine(440, rate, 1.0), rate, subtype="FLOAT")
    loaded = load_audio(tmp_path / "r.wav", sampling_rate=16_000)
    assert len(loaded) == resampled_length(rate, rate, 16_000) == 16_000
    assert abs(peak_frequency(loaded, 16_000) - 440) <= 1.0
    middle = slice(1000, 15_000)  # away from the filter's edge effects
    np.testing.assert_allclose(loaded[middle], sine(440, 16_000, 1.0)[middle], atol=0.02)


def test_resampled_length_matches_torchaudio(tmp_path):
    sf.write(tmp_path / "odd.wav", np.zeros(12_345, np.float32), 44_100)
    assert len(load_audio(tmp_path / "odd.wav")) == resampled_length(12_345, 44_100, 16_000)


def test_window_is_at_target_rate(tmp_path):
    wave = np.arange(16_000, dtype=np.float32) / 16_000
    sf.write(tmp_path / "w.wav", wave, 16_000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "w.wav", start=100, stop=600), wave[100:600])
    sf.write(tmp_path / "w8.wav", sine(440, 8_000, 0.5), 8_000, subtype="FLOAT")
    full = load_audio(tmp_path / "w8.wav")
    np.testing.assert_array_equal(load_audio(tmp_path / "w8.wav", start=50, stop=250), full[50:250])


def test_corrupt_file_raises_decode_error(tmp_path):
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF\x00\x00garbage that is not audio" * 10)
    with pytest.raises(AudioDecodeError, match="bad.wav"):
        load_audio(path)
    with pytest.raises(AudioDecodeError, match="missing.flac"):
        load_audio(tmp_path / "missing.flac")


def test_empty_files_raise_decode_error(tmp_path):
    (tmp_path / "zero_bytes.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="zero_bytes.wav"):
        load_audio(tmp_path / "zero_bytes.wav")
    sf.write(tmp_path / "no_frames.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(AudioDecodeError, match="no samples"):
        load_audio(tmp_path / "no_frames.wav")
    assert issubclass(AudioDecodeError, ValueError)


def test_non_finite_samples_raise(tmp_path):
    wave = np.zeros(100, np.float32)
    wave[3] = np.nan
    sf.write(tmp_path / "nan.wav", wave, 16_000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_standardize_matches_wav2vec2_formula():
    wave = np.random.default_rng(0).normal(3.0, 0.2, 8000).astype(np.float32)
    out = standardize(wave)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7), rtol=1e-6)
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-3
    assert np.all(standardize(np.zeros(10, np.float32)) == 0)  # silence stays finite


def test_find_audio_files(tmp_path):
    for name in ["b/z.wav", "a.FLAC", "b/c/y.mp3", "x.ogg", "notes.txt", "b/skip.wav.bak"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert found == ["a.FLAC", "b/c/y.mp3", "b/z.wav", "x.ogg"]
    assert set(AUDIO_EXTENSIONS) == {".wav", ".flac", ".mp3", ".ogg"}
    with pytest.raises(NotADirectoryError):
        find_audio_files(tmp_path / "nope")


def test_folder_walks_report_what_they_cannot_read(tmp_path, monkeypatch):
    """Symlink loops, dangling links and unreadable folders used to be skipped without a word."""
    import os

    root = tmp_path / "audio"
    for name in ["a.wav", "sub/b.wav", "locked/c.wav"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "d.wav").write_bytes(b"")
    os.symlink("..", root / "sub" / "loop")  # back to an enclosing folder
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a linked folder is followed ...
    os.symlink(tmp_path / "elsewhere", root / "linked_again")  # ... once
    os.symlink(tmp_path / "nowhere.wav", root / "dangling.wav")
    scandir = os.scandir

    def locked_scandir(path):  # the tests run as root: chmod would not lock a folder
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked_scandir)
    files, problems = walk_audio_files(root)
    assert [p.relative_to(root).as_posix() for p in files] == ["a.wav", "linked/d.wav", "sub/b.wav"]
    reasons = {Path(path).relative_to(root).as_posix(): reason for path, reason in problems}
    assert reasons["dangling.wav"].startswith("dangling symbolic link")
    assert reasons["locked"] == "cannot list this folder: Permission denied"
    assert reasons["sub/loop"].startswith("symbolic link loop (to the enclosing folder")
    assert reasons["linked_again"] == f"a second link to the folder {root / 'linked'}: skipped"
    assert len(problems) == 4
