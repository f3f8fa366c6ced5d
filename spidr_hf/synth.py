"""Phone-aligned synthetic speech corpus rendered with espeak-ng.

The corpus gives the project real speech-like audio with *exact* phone timings, so unit
quality (phone purity, PNMI, ABX) can be measured without downloading LibriSpeech.

Timings come from espeak-ng itself (:mod:`spidr_hf.espeak`): each phoneme event carries the
sample at which that phoneme starts, so each phone segment runs from its event to the next one.
Nothing here is estimated or forced-aligned.

Layout written by :func:`synthesize_corpus` (``OUT`` is the output directory)::

    OUT/audio/<speaker>/<utt>.wav   16 kHz mono PCM-16 WAV
    OUT/manifest.tsv                fairseq: first line = absolute OUT/audio, then "<speaker>/<utt>.wav\\t<num_samples>"
    OUT/manifest.jsonl              {"id", "path" (relative to OUT), "num_samples", "speaker", "voice", "text"}
    OUT/alignments.jsonl            {"id", "phones": [one label per 20 ms encoder frame]}
    OUT/phones.txt                  phone inventory, one per line ("SIL" first, then vowels, then consonants)
    OUT/phones.item                 ZeroSpeech-style ABX item file (phones with non-silent neighbours)
    OUT/stats.json                  minutes, utterances, speakers, phones, seed, espeak-ng version
    OUT/README.md                   the same description for whoever finds the folder

Utterance ids are paths relative to ``OUT/audio`` without extension, e.g. ``en-us-m1/utt00003``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import shutil
from collections import Counter
from collections.abc import Container, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .audio import resample
from .espeak import EspeakError, check_voices, espeak_version, synthesize
from .modeling import SAMPLING_RATE, FrameGeometry, num_frames
from .progress import progress_bar
from .runs import atomic_write_text, die_with_parent, prepare_output_dir

logger = logging.getLogger(__name__)

SILENCE = "SIL"

# Alignments label the frames of the default conv stack: frame t covers [t * hop, t * hop + receptive field).
FRAMES = FrameGeometry()

# American and British English x espeak-ng voice variants (pitch, formants, breathiness):
# six speakers over two accents keeps the phone inventory near 50. Klatt variants are left
# out: they draw noise from libc rand(), reproducible only thanks to the reseeding in
# EspeakSession.synthesize. Other accents (en-gb-scotland, en-029, ...) work via voices=.
DEFAULT_VOICES: tuple[str, ...] = (
    "en-us+m1",
    "en-us+f2",
    "en-us+m3",
    "en-us+f4",
    "en+m2",
    "en+f3",
)

# Speaking rate range in words per minute, drawn per utterance for prosodic variety.
RATE_RANGE = (150, 195)

# IPA letters that start a vowel (monophthongs, diphthongs, r-coloured and syllabic vowels).
IPA_VOWELS = frozenset("aeiouyæɑɐɒɔəɘɚɛɜɝɞɤɨɪɯɵɶʉʊʌʏøœᵻ")


# --------------------------------------------------------------------------- alignment


def frame_centers(count: int) -> np.ndarray:
    """Centre time in seconds of encoder frames ``0..count-1``: ``(t * 320 + 200) / 16000``."""
    return (np.arange(count) * FRAMES.hop + FRAMES.receptive_field / 2) / SAMPLING_RATE


def frame_alignment(segments: list[tuple[str, float, float]], num_samples: int) -> list[str]:
    """One phone label per encoder frame: the segment covering the frame centre, else ``SIL``."""
    centers = frame_centers(num_frames(num_samples))
    starts = np.array([start for _, start, _ in segments], dtype=np.float64)
    index = np.searchsorted(starts, centers, side="right") - 1
    labels = []
    for center, i in zip(centers, index, strict=True):
        inside = i >= 0 and center < segments[i][2]
        labels.append(segments[i][0] if inside else SILENCE)
    return labels


def phone_segments(
    events: list[tuple[int, str]], num_samples: int, sample_rate: int
) -> list[tuple[str, float, float]]:
    """Turn phoneme start events into contiguous segments tiling ``[0, num_samples / sample_rate]``.

    Each phone lasts until the next event; audio before the first event, pauses (empty
    names) and runs of them become one ``SIL`` segment; zero-length segments are dropped.
    """
    starts = [min(max(sample, 0), num_samples) for sample, _ in events]
    if starts != sorted(starts):
        raise EspeakError("espeak-ng phoneme events are not in time order")
    bounds = [0, *starts, num_samples]
    names = [SILENCE] + [name.strip() or SILENCE for _, name in events]
    segments: list[tuple[str, int, int]] = []
    for name, start, end in zip(names, bounds[:-1], bounds[1:], strict=True):
        if end <= start:
            continue
        if segments and name == SILENCE and segments[-1][0] == SILENCE:
            segments[-1] = (SILENCE, segments[-1][1], end)  # merge consecutive pauses
        else:
            segments.append((name, start, end))
    return [(name, start / sample_rate, end / sample_rate) for name, start, end in segments]


def _to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """int16 samples at ``sample_rate`` -> float32 in [-1, 1] at 16 kHz."""
    wave = resample(audio.astype(np.float32) / 32768.0, sample_rate, SAMPLING_RATE)
    return np.clip(wave, -1.0, 1.0)  # resampling can overshoot full scale slightly


def render(
    text: str, voice: str = DEFAULT_VOICES[0], rate: int | None = None, seed: int = 0
) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Synthesize ``text``: (16 kHz mono float32 wave, [(phone, start_s, end_s)] tiling the audio).

    Phones are espeak-ng's IPA names; pauses and leading/trailing silence are ``SIL``.
    """
    audio, events, sample_rate = synthesize(text, voice, rate=rate, seed=seed)
    if audio.size == 0:
        raise EspeakError(f"espeak-ng produced no audio for {text!r} with voice {voice!r}")
    wave = _to_16k(audio, sample_rate)
    segments = phone_segments(events, audio.size, sample_rate)
    # the resampled wave is a fraction of a sample longer or shorter: end the last segment with it
    name, start, _ = segments[-1]
    segments[-1] = (name, start, wave.size / SAMPLING_RATE)
    return wave, segments


# --------------------------------------------------------------------------- sentences

_DETERMINERS = ["the", "a", "every", "some", "my", "your", "this", "that", "one", "no", "her", "our"]
_ADJECTIVES = [
    "big", "small", "yellow", "purple", "quiet", "loud", "thick", "thin", "cheap", "huge", "smooth",
    "rough", "shiny", "fuzzy", "young", "ancient", "warm", "cold", "bright", "gloomy", "strange",
    "usual", "joyful", "jagged", "vivid", "hollow", "brave", "awkward", "wise", "lazy", "eager",
]  # fmt: skip
_NOUNS = [
    "cat", "dog", "boy", "girl", "judge", "teacher", "farmer", "singer", "child", "doctor", "thief",
    "pilot", "zebra", "goat", "horse", "fish", "bird", "mouse", "garage", "treasure", "book", "chair",
    "bottle", "engine", "window", "church", "ship", "voice", "song", "letter", "orange", "bridge",
    "village", "mountain", "river", "measure", "thread", "jacket", "whistle", "rhythm", "oyster",
    "kitchen", "violin", "cushion", "puzzle", "vision", "wheel", "shoe", "king", "queen",
]  # fmt: skip
_VERBS_PAST = [
    "saw", "found", "pushed", "pulled", "washed", "fixed", "chased", "watched", "judged", "thanked",
    "bought", "caught", "threw", "joined", "moved", "used", "showed", "enjoyed", "measured", "painted",
    "carried", "touched", "visited", "borrowed", "questioned", "admired", "followed", "hugged",
]  # fmt: skip
_VERBS_BASE = [
    "see", "find", "push", "pull", "wash", "fix", "chase", "watch", "thank", "buy", "catch", "throw",
    "join", "move", "use", "show", "enjoy", "paint", "carry", "touch", "visit", "borrow", "follow",
]  # fmt: skip
_PREPOSITIONS = ["near", "behind", "under", "with", "beside", "through", "across", "toward", "over", "inside"]
_ADVERBS = ["quickly", "slowly", "gently", "yesterday", "again", "happily", "loudly", "often", "together"]
_SUBJECTS = ["she", "he", "they", "we", "you", "nobody", "everyone", "the judge", "my uncle", "our teacher"]


def _noun_phrase(rng: random.Random) -> str:
    words = [rng.choice(_DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJECTIVES))
    words.append(rng.choice(_NOUNS))
    return " ".join(words)


def make_sentence(rng: random.Random) -> str:
    """One random sentence from a small English grammar (statements, questions, compounds)."""
    form = rng.randrange(5)
    if form == 0:
        body = f"{_noun_phrase(rng)} {rng.choice(_VERBS_PAST)} {_noun_phrase(rng)} {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng)}."
    elif form == 1:
        body = f"{_noun_phrase(rng)} {rng.choice(_VERBS_PAST)} {_noun_phrase(rng)}, and {rng.choice(_SUBJECTS)} {rng.choice(_VERBS_PAST)} it {rng.choice(_ADVERBS)}."
    elif form == 2:
        body = f"why did {_noun_phrase(rng)} {rng.choice(_VERBS_BASE)} {_noun_phrase(rng)}?"
    elif form == 3:
        body = (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS_PAST)} {_noun_phrase(rng)} {rng.choice(_ADVERBS)}."
        )
    else:
        body = f"{rng.choice(_PREPOSITIONS)} {_noun_phrase(rng)}, {_noun_phrase(rng)} {rng.choice(_VERBS_PAST)} {_noun_phrase(rng)}."
    return body[0].upper() + body[1:]


def make_text(rng: random.Random) -> str:
    """One utterance: one or two sentences."""
    count = 1 if rng.random() < 0.6 else 2
    return " ".join(make_sentence(rng) for _ in range(count))


# --------------------------------------------------------------------------- corpus


def speaker_name(voice: str) -> str:
    """Directory-safe speaker name of an espeak voice (``en-us+m1`` -> ``en-us-m1``)."""
    return voice.replace("+", "-").replace("/", "-")


def is_vowel(phone: str) -> bool:
    """Whether an IPA phone label is a vowel (it starts with a vowel letter)."""
    return bool(phone) and phone[0] in IPA_VOWELS


def phone_inventory(phones: set[str] | list[str]) -> list[str]:
    """Order phones as ``SIL``, vowels, consonants (each alphabetical) for tables and plots."""
    unique = set(phones) - {SILENCE}
    vowels = sorted(p for p in unique if is_vowel(p))
    consonants = sorted(p for p in unique if not is_vowel(p))
    return [SILENCE, *vowels, *consonants]


@dataclass
class RenderedUtterance:
    """One rendered utterance of the corpus."""

    id: str
    speaker: str
    voice: str
    text: str
    num_samples: int
    segments: list[tuple[str, float, float]]
    phones: list[str]  # one label per encoder frame


@dataclass
class CorpusInfo:
    """What :func:`synthesize_corpus` wrote."""

    root: Path
    seed: int
    voices: list[str]
    utterances: list[RenderedUtterance] = field(repr=False)
    phones: list[str]
    espeak_version: str

    @property
    def num_samples(self) -> int:
        return sum(u.num_samples for u in self.utterances)

    @property
    def minutes(self) -> float:
        return self.num_samples / SAMPLING_RATE / 60

    @property
    def speakers(self) -> list[str]:
        """Speakers with at least one utterance, in voice order (a short corpus may not reach them all)."""
        used = {u.speaker for u in self.utterances}
        return [s for s in map(speaker_name, self.voices) if s in used]


def _utterance_seed(seed: int, index: int) -> int:
    """A per-utterance libc seed that depends on the corpus seed and the utterance index."""
    return (seed * 1_000_003 + index) & 0xFFFFFFFF


@dataclass(frozen=True)
class UtterancePlan:
    """What utterance ``index`` of a corpus says and how: drawn in order from the corpus's ``random.Random``."""

    index: int
    text: str
    voice: str
    rate: int
    seed: int  # libc seed of its rendering

    @classmethod
    def draw(
        cls, index: int, rng: random.Random, voice: str, seed: int, exclude_texts: Container[str] = ()
    ) -> UtterancePlan:
        """Draw the text (none of ``exclude_texts``) and rate of utterance ``index`` from ``rng``."""
        text = make_text(rng)
        while text in exclude_texts:
            text = make_text(rng)
        return cls(index, text, voice, rng.randint(*RATE_RANGE), _utterance_seed(seed, index))

    def render(self) -> tuple[RenderedUtterance, np.ndarray]:
        """Render it: the utterance's record and its 16 kHz wave (the same in any process)."""
        wave, segments = render(self.text, self.voice, rate=self.rate, seed=self.seed)
        return _rendered_utterance(self, wave, segments), wave


def render_utterance(
    index: int, rng: random.Random, voice: str, seed: int, exclude_texts: Container[str] = ()
) -> tuple[RenderedUtterance, np.ndarray]:
    """Draw the text (none of ``exclude_texts``) and rate of utterance ``index`` from ``rng`` and render it."""
    return UtterancePlan.draw(index, rng, voice, seed, exclude_texts).render()


def _rendered_utterance(
    plan: UtterancePlan, wave: np.ndarray, segments: list[tuple[str, float, float]]
) -> RenderedUtterance:
    speaker = speaker_name(plan.voice)
    return RenderedUtterance(
        id=f"{speaker}/utt{plan.index:05d}",
        speaker=speaker,
        voice=plan.voice,
        text=plan.text,
        num_samples=int(wave.size),
        segments=segments,
        phones=frame_alignment(segments, wave.size),
    )


def item_rows(utt: RenderedUtterance) -> list[str]:
    """ZeroSpeech item lines (``#file onset offset #phone prev-phone next-phone speaker``) for one utterance.

    Only phones whose neighbours are phones (not ``SIL``) and that span at least one 50 Hz
    feature frame inside the encoder output are kept, as fastabx needs non-empty slices.
    """
    rows = []
    total_frames = num_frames(utt.num_samples)
    for (prev, _, _), (phone, onset, offset), (nxt, _, _) in zip(
        utt.segments, utt.segments[1:], utt.segments[2:], strict=False
    ):
        if SILENCE in (prev, phone, nxt):
            continue
        # the slice fastabx takes for [onset, offset] at 50 Hz
        first = int(np.ceil(onset * FRAMES.frame_rate - 0.5))
        last = int(np.floor(offset * FRAMES.frame_rate - 0.5)) + 1
        if last <= first or last > total_frames:
            continue
        rows.append(f"{utt.id} {onset:.4f} {offset:.4f} {phone} {prev} {nxt} {utt.speaker}")
    return rows


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def _corpus_stats(info: CorpusInfo) -> dict:
    """Summary numbers for stats.json."""
    voice_of = {speaker_name(v): v for v in info.voices}
    per_speaker = {s: {"voice": voice_of[s], "utterances": 0, "seconds": 0.0} for s in info.speakers}
    frame_counts: Counter[str] = Counter()
    for utt in info.utterances:
        per_speaker[utt.speaker]["utterances"] += 1
        per_speaker[utt.speaker]["seconds"] += utt.num_samples / SAMPLING_RATE
        frame_counts.update(utt.phones)
    for entry in per_speaker.values():
        entry["seconds"] = round(entry["seconds"], 3)
    return {
        "minutes": round(info.minutes, 4),
        "utterances": len(info.utterances),
        "speakers": per_speaker,
        "phones": len(info.phones),
        "phone_frame_counts": {p: frame_counts[p] for p in info.phones},
        "frames": sum(frame_counts.values()),
        "sample_rate": SAMPLING_RATE,
        "frame_rate": FRAMES.frame_rate,
        "seed": info.seed,
        "espeak_ng_version": info.espeak_version,
    }


_README = """# Synthetic phone-aligned speech corpus

Rendered by `spidr-hf synth-corpus` with espeak-ng {version} (seed {seed}): {utterances} utterances,
{minutes:.2f} minutes, voices {voices}. Phone timings are espeak-ng's own phoneme events (exact
sample offsets of the synthesizer), not a forced alignment. Phones are espeak-ng IPA names; pauses
and edges are `SIL`.

- `audio/<speaker>/<utt>.wav`: 16 kHz mono PCM-16.
- `manifest.tsv`: fairseq manifest (first line: root dir; then `<speaker>/<utt>.wav<TAB>num_samples`).
- `manifest.jsonl`: one object per utterance: `id`, `path` (relative to this folder), `num_samples`, `speaker`, `voice`, `text`.
- `alignments.jsonl`: `{{"id", "phones"}}`, one phone per 20 ms SpidR encoder frame
  (`floor((num_samples - 400) / 320) + 1` frames; frame t labelled by the phone at `(t * 320 + 200) / 16000` s).
- `phones.txt`: phone inventory (`SIL`, vowels, consonants).
- `phones.item`: ZeroSpeech-style ABX item file (`#file onset offset #phone prev-phone next-phone speaker`).
- `stats.json`: corpus statistics.
"""


def write_corpus_files(info: CorpusInfo) -> None:
    """Write the manifests, alignments, inventory, item file, stats and README of a rendered corpus."""
    root = info.root
    audio_root = (root / "audio").resolve()
    with (root / "manifest.tsv").open("w", encoding="utf-8") as f:
        f.write(f"{audio_root}\n")
        f.writelines(f"{u.id}.wav\t{u.num_samples}\n" for u in info.utterances)
    _write_jsonl(
        root / "manifest.jsonl",
        [
            {
                "id": u.id,
                "path": f"audio/{u.id}.wav",
                "num_samples": u.num_samples,
                "speaker": u.speaker,
                "voice": u.voice,
                "text": u.text,
            }
            for u in info.utterances
        ],
    )
    _write_jsonl(root / "alignments.jsonl", [{"id": u.id, "phones": u.phones} for u in info.utterances])
    atomic_write_text(root / "phones.txt", "".join(f"{p}\n" for p in info.phones))
    item_lines = ["#file onset offset #phone prev-phone next-phone speaker"]
    for utt in info.utterances:
        item_lines.extend(item_rows(utt))
    atomic_write_text(root / "phones.item", "\n".join(item_lines) + "\n")
    stats = _corpus_stats(info)
    atomic_write_text(root / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    readme = _README.format(
        version=info.espeak_version,
        seed=info.seed,
        utterances=len(info.utterances),
        minutes=info.minutes,
        voices=", ".join(info.voices),
    )
    atomic_write_text(root / "README.md", readme)


def _prepare_output(root: Path, overwrite: bool) -> None:
    """Refuse to mix two corpora in one folder; with ``overwrite``, drop the old audio first."""
    prepare_output_dir(root, create=False)
    audio = root / "audio"
    if audio.exists() or (root / "manifest.tsv").exists():
        if not overwrite:
            raise FileExistsError(
                f"{root} already holds a corpus; pass overwrite=True (--overwrite) to replace it"
            )
        shutil.rmtree(audio, ignore_errors=True)  # stale utterances would otherwise survive
    prepare_output_dir(root)


_PLANS_PER_WORKER = 8  # utterances per worker and round: few enough that little is rendered past the target


@contextmanager
def _render_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """Processes that render utterances (none for one worker); they die with this process."""
    if workers == 1:
        yield None
        return
    # forkserver: workers fork from a clean process that imported this module once (a fork of this process
    # would copy torch's threads and an espeak-ng session mid-use; spawn would import torch in every worker)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_render_worker) as pool:
        yield pool


def _start_render_worker() -> None:
    die_with_parent()
    torch.set_num_threads(1)  # one process per core already: resampling threads would only compete


def synthesize_corpus(
    out_dir: str | Path,
    minutes: float,
    seed: int = 0,
    voices: list[str] | tuple[str, ...] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    exclude_texts: Container[str] = (),
    workers: int = 1,
) -> CorpusInfo:
    """Render about ``minutes`` of speech (at least one utterance) into ``out_dir``.

    Voices take turns utterance by utterance; texts and speaking rates come from
    ``random.Random(seed)``, so the same seed gives byte-identical audio and alignments.
    ``exclude_texts`` (e.g. another corpus's texts, for held-out speech) are never rendered.
    An existing corpus in ``out_dir`` is an error unless ``overwrite`` (then its audio is removed).
    With ``workers`` > 1, utterances render in that many processes; the texts are still drawn in
    order and the files written in order, so the corpus is byte-identical to a serial render.
    """
    if minutes <= 0:
        raise ValueError(f"minutes must be positive, got {minutes}")
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be a positive integer (processes that render), got {workers!r}")
    voices = list(voices or DEFAULT_VOICES)
    speakers = [speaker_name(v) for v in voices]
    if len(set(speakers)) != len(speakers):
        raise ValueError(f"voices must be distinct, got {voices}")
    check_voices(voices)  # fail on a bad voice name before writing anything
    root = Path(out_dir)
    _prepare_output(root, overwrite)
    target_samples = int(minutes * 60 * SAMPLING_RATE)
    rng = random.Random(seed)
    utterances: list[RenderedUtterance] = []
    total = 0
    # progress in seconds of audio; each utterance advances it by its duration
    bar = progress_bar(
        target_samples,
        unit_scale=1 / SAMPLING_RATE,
        desc="synthesizing",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio [{elapsed}<{remaining}{postfix}]",
        disable=not progress,
    )
    with bar, _render_pool(workers) as pool:
        while total < target_samples:
            # a round of plans drawn in order; what a round renders past the target is not kept
            first = len(utterances)
            plans = [
                UtterancePlan.draw(index, rng, voices[index % len(voices)], seed, exclude_texts)
                for index in range(first, first + (1 if pool is None else workers * _PLANS_PER_WORKER))
            ]
            rendered = map(UtterancePlan.render, plans) if pool is None else pool.map(UtterancePlan.render, plans)
            for utt, wave in rendered:
                if total >= target_samples:
                    break
                path = root / "audio" / f"{utt.id}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, wave, SAMPLING_RATE, subtype="PCM_16")
                utterances.append(utt)
                total += utt.num_samples
                bar.update(min(utt.num_samples, target_samples - bar.n))
                bar.set_postfix(utterances=len(utterances))
    phones = phone_inventory({p for u in utterances for p, _, _ in u.segments})
    info = CorpusInfo(
        root=root,
        seed=seed,
        voices=voices,
        utterances=utterances,
        phones=phones,
        espeak_version=espeak_version(),
    )
    write_corpus_files(info)
    logger.info(
        "wrote %d utterances (%.2f min, %d phones) to %s", len(utterances), info.minutes, len(phones), root
    )
    return info
