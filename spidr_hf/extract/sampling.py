"""Frames of one layer sampled from many files, to fit k-means on (``spidr-hf fit-kmeans``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from ..audio import AudioDecodeError, standardize
from ..sources import AudioInputs, collect_inputs
from .encoder import FrameEncoder

logger = logging.getLogger(__name__)


@torch.no_grad()
def sample_frames(
    model: torch.nn.Module,
    inputs: Sequence[str | os.PathLike] | AudioInputs,
    layer: int,
    representation: str = "before_residual",
    max_frames: int = 200_000,
    seed: int = 0,
    max_whole_seconds: float = 60.0,
    window_seconds: float = 20.0,
    context_seconds: float = 5.0,
) -> torch.Tensor:
    """Frames ``(N, hidden)`` of one layer from files in a seeded random order, to fit k-means on.

    Whole files are taken until ``max_frames`` is reached (the last one truncated), computed
    as :func:`~spidr_hf.extract.extract` computes them (files over ``max_whole_seconds`` in
    windows); files that cannot be decoded are skipped with a warning. Example::

        frames = sample_frames(model, ["train/"], layer=6)
        KMeansQuantizer.fit(frames, k=500, layer=6).save_pretrained(model_dir)
    """
    if isinstance(inputs, AudioInputs):  # the caller collected them and reported what it could not read
        collected = inputs
    else:
        collected = collect_inputs(inputs)
        collected.warn_unreadable()
    encoder = FrameEncoder(model, [(layer, representation)], max_batch_samples=1)
    order = np.random.default_rng(seed).permutation(len(collected.items))
    chunks, total = [], 0
    for index in order:
        item = collected.items[index]
        try:
            wave = standardize(collected.decode(item))
        except (AudioDecodeError, ValueError) as err:
            logger.warning("skipping %s: %s", item.path, err)
            continue
        frames = encoder.encode_file(wave, max_whole_seconds, window_seconds, context_seconds, torch.float32)
        chunks.append(frames[(layer, representation)].float().cpu()[: max_frames - total])
        total += chunks[-1].shape[0]
        if total >= max_frames:
            break
    if not chunks:
        raise ValueError("no input could be decoded: no frames to sample.")
    return torch.cat(chunks)
