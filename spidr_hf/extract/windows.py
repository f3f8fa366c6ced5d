"""Long files in overlapping windows: memory grows linearly with a file's length, not with its square.

**Stitching rule.** Frame ``t`` of a file reads samples ``[hop t, hop t + receptive_field)`` of its
model's conv stack (:class:`~spidr_hf.modeling.FrameGeometry`), so a slice of the waveform that
starts at sample ``hop s`` yields exactly the frames ``s, s+1, ...`` of the whole file. The file's
``T`` frames are cut into *core* blocks of ``W`` frames; block ``[a, a+W)`` is computed from the
slice covering frames ``[a-C, a+W+C)`` (``C`` frames of context, clipped to ``[0, T)``) and only its
core frames are kept. The waveform is standardised once over the whole file before slicing, and
codeword units are instance-normalised over the whole stitched file, so windowing differs from
whole-file processing only through what attention sees: each kept frame sees at least ``C`` frames
of context on each side (fewer only at the file's edges, as in whole-file processing). How far the
outputs move is measured by ``python benchmarks/bench_extract.py --compare-windowing`` (README,
Performance); :data:`WINDOWED_RELATIVE_TOLERANCE` is what the tests accept.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..modeling import FrameGeometry

WINDOWED_RELATIVE_TOLERANCE = 0.03
"""Relative Frobenius difference, windowed vs whole file, that the tests accept."""


@dataclass(frozen=True)
class Window:
    """Frames ``[first, last)`` kept from input frames ``[start, stop)``, read from ``samples`` (see the stitching rule)."""

    first: int
    last: int
    start: int
    stop: int
    samples: tuple[int, int]


def plan_windows(
    total_frames: int, window_frames: int, context_frames: int, geometry: FrameGeometry | None = None
) -> list[Window]:
    """Core blocks of ``window_frames`` frames, each with up to ``context_frames`` frames on both sides.

    ``geometry`` is the model's (``config.frame_geometry``; default: SpidR's conv stack).
    """
    if window_frames <= 0 or context_frames < 0:
        raise ValueError("window_frames must be positive and context_frames non-negative.")
    geometry = geometry or FrameGeometry()
    windows = []
    for first in range(0, total_frames, window_frames):
        start, stop = max(0, first - context_frames), min(total_frames, first + window_frames + context_frames)
        windows.append(
            Window(first, min(first + window_frames, total_frames), start, stop, geometry.frame_samples(start, stop))
        )
    return windows
