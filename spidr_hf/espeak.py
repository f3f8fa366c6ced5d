"""espeak-ng through its C library: speech and the exact sample at which each phoneme starts.

The library (``libespeak-ng.so.1``, shipped by the Debian ``espeak-ng`` package) is driven through
:mod:`ctypes` in synchronous mode with phoneme events enabled. Every ``espeakEVENT_PHONEME``
carries the index of the sample at which that phoneme starts in the synthesized stream, so each
phone segment runs from its event to the next one (:mod:`spidr_hf.synth`). Nothing is estimated
or forced-aligned.
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
from pathlib import Path

import numpy as np

ESPEAK_INSTALL_HINT = "espeak-ng is not installed; install it: apt-get install espeak-ng"


class EspeakError(RuntimeError):
    """espeak-ng is missing or failed."""


# espeak_AUDIO_OUTPUT, espeak_EVENT_TYPE, espeak_PARAMETER and flag values from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_CHARS_UTF8 = 1
_PHONEME_INPUT = 0x100  # espeakPHONEMES: read [[...]] as phoneme mnemonics
_POS_CHARACTER = 1
_EE_OK = 0


class _EventId(ctypes.Union):
    """``espeak_EVENT.id``: a number, a name pointer, or an 8-byte phoneme name."""

    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from speak_lib.h (API revision 12)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds from the start of this message
        ("sample", ctypes.c_int),  # sample index from the start of this message
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _library_name() -> str:
    return ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"


class EspeakSession:
    """One freshly loaded libespeak-ng, initialized for synchronous synthesis with IPA phoneme events.

    espeak-ng keeps synthesis state in C statics that no API call resets (e.g. the phase of
    its pitch flutter), so the same text rendered twice in one process comes out a few
    samples different. A session loads the library afresh and unloads it on :meth:`close`
    (``dlclose`` drops the last reference, the next ``dlopen`` maps pristine statics), which
    makes every rendering independent of what was rendered before, for a few milliseconds.
    """

    def __init__(self) -> None:
        try:
            self._lib = ctypes.CDLL(_library_name())
        except OSError as error:
            raise EspeakError(ESPEAK_INSTALL_HINT) from error
        self._declare_signatures()
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options)
        if self.sample_rate <= 0:
            self._unload()
            raise EspeakError(f"espeak_Initialize failed (no espeak-ng-data?). {ESPEAK_INSTALL_HINT}")
        data_path = ctypes.c_char_p()
        self.version = self._lib.espeak_Info(ctypes.byref(data_path)).decode()
        self.data_path = Path(data_path.value.decode()) if data_path.value else None
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _SynthCallback(self._on_audio)  # kept on self: C holds only a raw pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def __enter__(self) -> EspeakSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Terminate espeak-ng and unload the library."""
        if self._lib is not None:
            self._lib.espeak_Terminate()
            self._unload()

    def _unload(self) -> None:
        _ctypes.dlclose(self._lib._handle)
        self._lib = None

    def _declare_signatures(self) -> None:
        lib = self._lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int

    def _on_audio(self, wav, num_samples: int, events) -> int:
        """SynthCallback: keep the audio block and the phoneme events of this block."""
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                # the name fills all 8 bytes when it needs to, otherwise it is NUL-terminated
                name = event.id.string.split(b"\0")[0].decode("utf-8", errors="replace")
                self._events.append((event.sample, name))
            i += 1
        return 0  # 0 = continue synthesis

    def set_voice(self, voice: str) -> None:
        """Select a voice by name, with an optional ``+variant`` (e.g. ``en-us+f2``)."""
        _, _, variant = voice.partition("+")
        # espeak-ng silently ignores an unknown variant, which would duplicate the base voice
        if variant and self.data_path and not (self.data_path / "voices" / "!v" / variant).is_file():
            raise ValueError(
                f"espeak-ng has no voice variant {variant!r} (see {self.data_path / 'voices' / '!v'})"
            )
        if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices=en`)")

    def phonemes(self, text: str, voice: str) -> str:
        """espeak-ng's phoneme mnemonics of ``text`` (its first clause) in ``voice``: ``"cat" -> "k'at"``."""
        self.set_voice(voice)
        pointer = ctypes.c_char_p(text.encode("utf-8"))
        return (self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, 0) or b"").decode().strip()

    def synthesize(
        self, text: str, voice: str, rate: int | None = None, seed: int = 0
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Speak ``text``: int16 samples at :attr:`sample_rate`, and (start sample, IPA name) per phoneme.

        Pauses come back with an empty name. ``seed`` reseeds libc's ``rand()``, which
        espeak-ng's noise sources (Klatt variants) draw from. ``[[...]]`` in ``text`` is read as
        phoneme mnemonics (those of :meth:`phonemes`).
        """
        self.set_voice(voice)
        if rate is not None:
            self._lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        _LIBC.srand(ctypes.c_uint(seed & 0xFFFFFFFF))
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _PHONEME_INPUT, None, None)
        if status != _EE_OK:
            raise EspeakError(f"espeak_Synth failed with status {status} for {text!r}")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        return audio.astype(np.int16, copy=False), list(self._events)


_LIBC = ctypes.CDLL(None)  # the process's libc, whose rand() espeak-ng uses


def synthesize(
    text: str, voice: str, rate: int | None = None, seed: int = 0
) -> tuple[np.ndarray, list[tuple[int, str]], int]:
    """Render ``text`` in a fresh espeak-ng session: (int16 audio, [(start sample, IPA name)], sample rate)."""
    with EspeakSession() as session:
        audio, events = session.synthesize(text, voice, rate=rate, seed=seed)
        return audio, events, session.sample_rate


def text_to_phonemes(text: str, voice: str) -> str:
    """espeak-ng's phoneme mnemonics of ``text`` in ``voice`` (render them back with ``synthesize("[[...]]")``)."""
    with EspeakSession() as session:
        return session.phonemes(text, voice)


def espeak_version() -> str:
    """espeak-ng's version string (raises :class:`EspeakError` if it is not installed)."""
    with EspeakSession() as session:
        return session.version


def check_voices(voices: list[str] | tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the first voice espeak-ng does not have."""
    with EspeakSession() as session:
        for voice in voices:
            session.set_voice(voice)


def espeak_available() -> bool:
    """Whether espeak-ng's library and data can be loaded here."""
    try:
        espeak_version()
    except EspeakError:
        return False
    return True
