"""Audio input for SpidR: decoding, down-mixing, resampling and standardisation.

Decoding goes through :mod:`soundfile` (libsndfile >= 1.1 reads WAV, FLAC, OGG/Vorbis/Opus and
MP3) and resampling through :func:`torchaudio.functional.resample`. ``torchaudio.load`` is not
used: since torchaudio 2.9 it needs ``torchcodec``, which this package does not depend on.

SpidR consumes 16 kHz mono waveforms, each standardised to zero mean and unit variance with
the same formula as transformers' ``Wav2Vec2FeatureExtractor`` (see :func:`standardize`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .modeling import SAMPLING_RATE
from .modeling import standardize as _feature_extractor_standardize
from .runs import missing_reason

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg")
"""File name endings (lower case) that :func:`find_audio_files` collects."""

AudioSource = str | os.PathLike | BinaryIO

MIN_SAMPLING_RATE = 1000
"""The lowest sampling rate accepted (Hz): below it a header is wrong, not speech, and resampling would
blow a few samples up into millions."""

logger = logging.getLogger(__name__)


class AudioDecodeError(ValueError):
    """An audio file could not be decoded, or holds no usable samples."""


def _describe(source: AudioSource) -> str:
    """A human-readable name for a path or a file object, for error messages."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return str(getattr(source, "name", "<audio bytes>"))


def resampled_length(num_samples: int, orig_rate: int, target_rate: int) -> int:
    """Length of ``num_samples`` samples at ``orig_rate`` once resampled to ``target_rate``.

    This is the length :func:`torchaudio.functional.resample` returns: ``ceil(n * target / orig)``.
    """
    if orig_rate == target_rate:
        return int(num_samples)
    return -(-int(num_samples) * int(target_rate) // int(orig_rate))


def check_sampling_rate(rate: int, name: str) -> int:
    """``rate``, or an ``AudioDecodeError`` naming ``name`` when it is below :data:`MIN_SAMPLING_RATE` (a
    per-file failure: the run goes on with the other files)."""
    if not rate >= MIN_SAMPLING_RATE:
        raise AudioDecodeError(
            f"audio file {name} has a sampling rate of {rate} Hz, below {MIN_SAMPLING_RATE} Hz: its header is wrong "
            "(speech needs several kHz); re-encode it at its real rate."
        )
    return rate


def resample(wave: np.ndarray, orig_rate: int, target_rate: int, name: str = "audio") -> np.ndarray:
    """Resample a 1-D float waveform with :func:`torchaudio.functional.resample` (windowed sinc); a rate
    below :data:`MIN_SAMPLING_RATE` is refused (``AudioDecodeError`` naming ``name``)."""
    if orig_rate == target_rate:
        return wave
    check_sampling_rate(orig_rate, name)
    resampled = torchaudio.functional.resample(
        torch.from_numpy(np.ascontiguousarray(wave)), orig_rate, target_rate
    )
    return resampled.numpy()


def to_mono(
    samples: np.ndarray, mono: Literal["mean", "error"] = "mean", *, name: str = "audio"
) -> np.ndarray:
    """Turn ``(frames, channels)`` samples into a ``(frames,)`` waveform.

    ``mono="mean"`` averages the channels (the usual down-mix for speech: for a stereo recording
    of one voice the channels are near copies); ``mono="error"`` refuses multi-channel input.
    """
    if mono not in ("mean", "error"):
        raise ValueError(f"mono must be 'mean' or 'error', got {mono!r}.")
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0]
    if mono == "error":
        raise ValueError(
            f"{name} has {samples.shape[1]} channels; SpidR needs mono audio (use mono='mean' to average them)."
        )
    return samples.mean(axis=1, dtype=np.float32)


def _read(source: AudioSource, start: int, stop: int | None) -> tuple[np.ndarray, int]:
    """Decode frames ``[start, stop)`` of ``source`` as float32 ``(frames, channels)`` and its rate."""
    try:
        return sf.read(source, dtype="float32", always_2d=True, start=start, stop=stop)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as err:
        raise AudioDecodeError(f"cannot decode audio file {_describe(source)}: {err}") from err


def _header(source: AudioSource, what: str) -> tuple[int, int]:
    """``(frames, sampling rate)`` from the header of ``source`` (a file object is rewound afterwards)."""
    if isinstance(source, str | os.PathLike) and not os.path.exists(source):  # libsndfile says "System error"
        raise AudioDecodeError(f"audio file {source} {missing_reason(source)}.")
    try:
        info = sf.info(source)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as err:
        raise AudioDecodeError(f"cannot {what} audio file {_describe(source)}: {err}") from err
    if hasattr(source, "seek"):
        source.seek(0)  # sf.info consumed the header of the file object
    return int(info.frames), check_sampling_rate(int(info.samplerate), _describe(source))


def _file_rate(source: AudioSource) -> int:
    """The sampling rate in the header of ``source``."""
    return _header(source, "decode")[1]


def audio_length(source: AudioSource, sampling_rate: int = SAMPLING_RATE) -> int:
    """Length of an audio file at ``sampling_rate``, from its header only (raises AudioDecodeError)."""
    frames, rate = _header(source, "read the header of")
    return resampled_length(frames, rate, sampling_rate)


def load_audio(
    path: AudioSource,
    sampling_rate: int = SAMPLING_RATE,
    mono: Literal["mean", "error"] = "mean",
    *,
    start: int = 0,
    stop: int | None = None,
) -> np.ndarray:
    """Decode an audio file into a mono float32 waveform at ``sampling_rate``.

    Args:
        path: a file path, or a binary file object (e.g. ``io.BytesIO`` of encoded audio).
        sampling_rate: the rate of the returned waveform; the file is resampled when it differs.
        mono: ``"mean"`` averages the channels of multi-channel audio, ``"error"`` raises a
            ``ValueError`` for it.
        start, stop: keep samples ``[start, stop)`` of the result (positions at ``sampling_rate``).
            When the file is already at ``sampling_rate`` only that window is read from disk.

    Raises:
        AudioDecodeError: the file cannot be decoded, or the requested window holds no samples,
            or it contains NaN/inf samples. The message names the file.
    """
    name = _describe(path)
    rate = _file_rate(path)
    if rate == sampling_rate:
        samples, _ = _read(path, start, stop)
        wave = to_mono(samples, mono, name=name)
    else:
        # the window is defined at the target rate, so decode everything, resample, then slice
        samples, _ = _read(path, 0, None)
        wave = resample(to_mono(samples, mono, name=name), rate, sampling_rate, name)[start:stop]
    if wave.size == 0:
        raise AudioDecodeError(f"audio file {name} contains no samples (in the window [{start}, {stop})).")
    if not np.isfinite(wave).all():
        raise AudioDecodeError(f"audio file {name} contains NaN or infinite samples.")
    return np.ascontiguousarray(wave, dtype=np.float32)


def standardize(wave: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance copy of a waveform: ``(x - mean) / sqrt(var + 1e-7)``.

    The model's own feature extractor's function (the formula of transformers'
    ``Wav2Vec2FeatureExtractor``), so training inputs match what it feeds the model at inference.
    """
    return _feature_extractor_standardize(np.asarray(wave, dtype=np.float32))


def walk_audio_files(
    root: str | os.PathLike, extensions: Iterable[str] = AUDIO_EXTENSIONS
) -> tuple[list[Path], list[tuple[str, str]]]:
    """All files under ``root`` (recursively) whose name ends with one of ``extensions``, and what could not be read.

    The match ignores case; files are sorted by path so that indexing is reproducible. Symbolic
    links to folders are followed, except a link back to an enclosing folder (a loop) or to a
    folder already listed. Each path that is skipped comes back as ``(path, reason)``: a loop, a
    second link to a folder, a dangling link, a folder that cannot be listed.
    """
    root = Path(root)
    if not root.exists():
        raise NotADirectoryError(f"audio folder {root} {missing_reason(root)}.")
    if not root.is_dir():
        raise NotADirectoryError(f"audio folder {root} is not a folder.")
    wanted = tuple(ext.lower() for ext in extensions)
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    listed: dict[tuple[int, int], str] = {}  # (device, inode) of each folder listed -> its path
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            status = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as err:
            problems.append((str(folder), f"cannot list this folder: {err.strerror or err}"))
            continue
        if (status.st_dev, status.st_ino) in listed:
            problems.append((str(folder), f"a second link to the folder {listed[status.st_dev, status.st_ino]}: skipped"))
            continue
        listed[status.st_dev, status.st_ino] = str(folder)
        here = None  # the folder's real path: only links to folders need it (realpath reads every component)
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.is_dir():
                    if entry.is_symlink():
                        here = here or os.path.realpath(folder)
                        target = os.path.realpath(path)
                        if (here + os.sep).startswith(target.rstrip(os.sep) + os.sep):
                            problems.append((str(path), f"symbolic link loop (to the enclosing folder {target}): not followed"))
                            continue
                    subfolders.append(path)
                elif entry.is_file():
                    if entry.name.lower().endswith(wanted):
                        files.append(path)
                elif entry.is_symlink():
                    problems.append((str(path), f"dangling symbolic link (to {os.readlink(path)}, which does not exist)"))
            except OSError as err:
                problems.append((str(path), f"cannot read: {err.strerror or err}"))
        folders += reversed(subfolders)  # depth first, in name order: the first of two links to a folder is read
    return sorted(files), sorted(problems)


def find_audio_files(root: str | os.PathLike, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """The files of :func:`walk_audio_files`; what it could not read is logged as a warning."""
    files, problems = walk_audio_files(root, extensions)
    for path, reason in problems:
        logger.warning("%s: %s", path, reason)
    return files
