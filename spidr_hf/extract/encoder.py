"""The model side of extraction: load a model, run it on standardised waveforms, return frame representations."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from safetensors import SafetensorError

from ..model_dir import check_model_source, from_pretrained
from ..modeling import FrameGeometry, SpidRForPreTraining, SpidRModel
from ..runs import UntrustedPickleError, resolve_device
from ..units import encoder_of, frame_mask_of, resolve_layer, select_layer
from .batching import pad_batch
from .options import DTYPES
from .windows import plan_windows

FrameKey = tuple[int, str]  # (1-based layer, representation)


def load_model(
    model_dir: str | os.PathLike, device: str | None = None, dtype: str = "fp32", pretraining: bool = False
) -> torch.nn.Module:
    """The encoder, or with ``pretraining`` the pretraining model (heads, codebooks), in eval mode.

    ``device`` defaults to CUDA when available; only the encoder runs in ``dtype``: heads and
    codebooks are tiny, and bf16 codewords would move units.
    """
    device = resolve_device(device)
    source = check_model_source(model_dir)
    cls = SpidRForPreTraining if pretraining else SpidRModel
    try:
        model, info = from_pretrained(cls, source, dtype=torch.float32, output_loading_info=True)
    except UntrustedPickleError:  # names the file and the fix already
        raise
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # a cut-short file, weights of another shape
        raise ValueError(f"cannot load the model in {model_dir}: {err}") from err
    if info["missing_keys"]:  # from_pretrained would fill them with random numbers
        missing = sorted(info["missing_keys"])
        what = ("prediction heads and codebooks (an encoder-only checkpoint: use --units kmeans, or a "
                "pretraining checkpoint)" if pretraining and any(k.startswith("heads.") for k in missing)
                else "weights")  # fmt: skip
        raise ValueError(f"model {model_dir} lacks {what}: {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}.")
    encoder_of(model).to(DTYPES[dtype])
    return model.to(device).eval()


class FrameEncoder:
    """Runs a SpidR model on standardised waveforms and returns the requested frame representations.

    ``keys`` are ``(layer, representation)`` pairs; every result is a dict ``key -> (frames, hidden)``
    tensor on the model's device, trimmed to the input's own frames.
    """

    def __init__(self, model: torch.nn.Module, keys: Sequence[FrameKey], max_batch_samples: int):
        self.model = model
        self.encoder = encoder_of(model)
        self.keys = list(dict.fromkeys(keys))
        num_layers = self.encoder.config.num_hidden_layers
        for layer, representation in self.keys:
            resolve_layer(num_layers, layer, representation)
        # the last layer's post-LN output is last_hidden_state: no need to keep every layer's output
        self.keep_all = any(key != (num_layers, "hidden_state") for key in self.keys)
        self.max_batch_samples = max_batch_samples

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def geometry(self) -> FrameGeometry:
        """Where the model's frames fall in the audio (its own conv stack)."""
        return self.encoder.config.frame_geometry

    @torch.no_grad()
    def encode(self, waves: Sequence[np.ndarray | torch.Tensor]) -> list[dict[FrameKey, torch.Tensor]]:
        """One padded forward pass over standardised ``waves``; per wave its frames, unpadded."""
        values, mask = pad_batch(waves)
        values = values.to(self.device, self.encoder.dtype)
        # without padding the mask changes nothing but costs masking work (and sdpa's masked path)
        mask = None if bool(mask.all()) else mask.to(self.device)
        output = self.encoder(values, attention_mask=mask, output_hidden_states=self.keep_all)
        selected = {key: select_layer(output, *key) for key in self.keys}
        lengths = frame_mask_of(output, selected[self.keys[0]]).sum(-1).tolist()
        return [
            {key: tensor[row, :length] for key, tensor in selected.items()}
            for row, length in enumerate(lengths)
        ]

    def encode_windowed(
        self,
        wave: np.ndarray | torch.Tensor,
        window_frames: int,
        context_frames: int,
        store_dtype: torch.dtype,
    ) -> dict[FrameKey, torch.Tensor]:
        """Frames of one long standardised wave, computed window by window (:mod:`.windows`), on the CPU."""
        total = self.geometry.num_frames(len(wave))
        stitched = {key: None for key in self.keys}
        windows = plan_windows(total, window_frames, context_frames, self.geometry)
        span = windows[0].samples[1] - windows[0].samples[0]
        per_batch = max(1, self.max_batch_samples // span)
        for start in range(0, len(windows), per_batch):
            group = windows[start : start + per_batch]
            outputs = self.encode([wave[w.samples[0] : w.samples[1]] for w in group])
            for window, frames in zip(group, outputs, strict=True):
                offset = window.first - window.start
                for key, tensor in frames.items():
                    if stitched[key] is None:  # allocated once the hidden size is known
                        stitched[key] = torch.empty(total, tensor.shape[-1], dtype=store_dtype)
                    stitched[key][window.first : window.last] = tensor[
                        offset : offset + window.last - window.first
                    ].cpu()
        return stitched

    def encode_file(
        self, wave: np.ndarray, max_whole_seconds: float, window_seconds: float, context_seconds: float,
        store_dtype: torch.dtype,
    ) -> dict[FrameKey, torch.Tensor]:  # fmt: skip
        """Frames of one standardised file: whole, or in windows when longer than ``max_whole_seconds``."""
        if len(wave) <= max_whole_seconds * self.geometry.sampling_rate:
            return self.encode([wave])[0]
        seconds = self.geometry.seconds_to_frames
        return self.encode_windowed(wave, seconds(window_seconds), seconds(context_seconds), store_dtype)
