"""``pipeline("feature-extraction", model=...)`` for SpidR: raw audio in, frame features out.

Registration, and why this way
------------------------------
transformers resolves a task to one pipeline class through ``PIPELINE_REGISTRY`` (the
``SUPPORTED_TASKS`` table) *before* it knows the model, and "feature-extraction" is the text
pipeline: it loads a tokenizer and tokenizes its input. The alternatives were weighed:

* ``pipeline_class=SpidRFeatureExtractionPipeline`` works, but every caller must know it;
* ``custom_pipelines`` in the model's ``config.json`` makes ``pipeline()`` import the class
  from the checkpoint folder, but only with ``trust_remote_code=True``, and not at all for a
  model passed as an object;
* replacing ``transformers.pipeline`` (a monkey-patch) misses every ``from transformers import
  pipeline`` done before ``import spidr_hf``.

So :func:`register_pipelines` swaps the registry entry's ``impl`` (and nothing else: the default
model, model classes and task type stay) for :class:`FeatureExtractionDispatcher`. For every model
that is not a SpidR model it is the class it replaced, to the letter:

* its component flags are that class's. ``pipeline()`` reads them (``_load_tokenizer`` ...) after
  it has loaded the model, so the tokenizer flag is a property of the dispatcher's metaclass that
  looks at the model ``pipeline()`` holds: off for a SpidR model (speech needs no tokenizer, and
  a fine-tuned folder's CTC tokenizer has no use here), the replaced class's own otherwise. A text model whose tokenizer cannot be loaded
  therefore fails exactly as without spidr_hf, with transformers' own error (tested);
* its ``__new__`` builds a :class:`SpidRFeatureExtractionPipeline` for a SpidR model
  (``model.config.model_type == "spidr"``) and otherwise the replaced class with exactly the
  arguments ``pipeline()`` gave, so text models get the very same object.

The registry is updated in place rather than through ``PIPELINE_REGISTRY.register_pipeline``
because that method warns on overwrite and tags the class for ``custom_pipelines`` export, neither
of which applies to a dispatcher.

Output
------
For each input, the features of one layer as ``(frames, hidden_size)``: a nested list of
floats by default (like the text pipeline's ``.tolist()``), or a float32 CPU
``torch.Tensor`` with ``return_tensors=True``. Unlike the text pipeline there is no leading
batch axis of 1: the audio pipeline never tokenizes into a batch, so that axis would only
carry the input count, which the list of results already gives. Batched calls
(``batch_size > 1``) return each input's own number of frames, never the padded length.

Inputs: 1-D numpy arrays and torch tensors (at ``sampling_rate=``, default 16 kHz), dicts
``{"array" or "raw": samples, "sampling_rate": rate}`` (the ``datasets`` Audio layout; other
rates are resampled), ``{"bytes": ..., "path": ...}`` (``datasets`` ``Audio(decode=False)``),
encoded ``bytes``, and file paths, decoded with soundfile through :mod:`spidr_hf.sources` (no
ffmpeg needed; multi-channel files are averaged to mono). An array is one mono waveform: a 2-D
array with one channel is squeezed, one with several channels is refused with how to downmix it
(never read as a batch, whose rows but the first would be dropped); errors name the input (its
index in a list). Options (at construction or per
call): ``layer`` (1-based; 0 is the transformer input for ``"hidden_state"``; default: the
last layer) and ``representation`` (``"hidden_state"``, the layer's post-LayerNorm output,
or ``"before_residual"``, its feed-forward output before the residual add, the
representation of the SpidR paper's per-layer results).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import FeatureExtractionPipeline, PreTrainedModel
from transformers.pipelines import SUPPORTED_TASKS

from .audio import load_audio
from .modeling import SpidRFeatureExtractor
from .sources import encoded_source
from .units import layer_features, resolve_layer

logger = logging.getLogger(__name__)

TASK = "feature-extraction"


class SpidRFeatureExtractionPipeline(FeatureExtractionPipeline):
    """Frame features of a [`SpidRModel`] from raw audio (see the module docstring for inputs and outputs).

    Example:

    ```python
    >>> import spidr_hf
    >>> from transformers import pipeline
    >>> extractor = pipeline("feature-extraction", model="path/to/spidr", layer=6, representation="before_residual")
    >>> features = extractor("speech.flac", return_tensors=True)  # (frames, hidden_size), 50 frames per second
    ```
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = None  # optional: a default SpidRFeatureExtractor is built when none is saved
    _load_tokenizer = False

    def __init__(
        self, model: PreTrainedModel, feature_extractor: SpidRFeatureExtractor | None = None, **kwargs
    ):
        kwargs.pop("tokenizer", None)  # speech checkpoints have none; a stray one must not be used
        if feature_extractor is None:
            feature_extractor = default_feature_extractor(model)
        super().__init__(model=model, feature_extractor=feature_extractor, **kwargs)

    def _sanitize_parameters(
        self,
        layer: int | None = None,
        representation: str | None = None,
        sampling_rate: int | None = None,
        return_tensors: bool | None = None,
        **kwargs,
    ) -> tuple[dict, dict, dict]:
        if kwargs:
            raise TypeError(
                f"Unexpected arguments for the SpidR feature-extraction pipeline: {sorted(kwargs)}."
            )
        preprocess_params = {} if sampling_rate is None else {"sampling_rate": sampling_rate}
        forward_params = {}
        if representation is not None:
            forward_params["representation"] = representation
        if layer is not None:
            forward_params["layer"] = layer
        if forward_params:  # validate early, against the defaults for whatever was left out
            resolve_layer(self.model.config.num_hidden_layers, forward_params.get("layer"),
                          forward_params.get("representation", "hidden_state"))  # fmt: skip
        postprocess_params = {} if return_tensors is None else {"return_tensors": return_tensors}
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, inputs: Any, sampling_rate: int | None = None) -> dict[str, torch.Tensor]:
        name = "the input"
        if isinstance(inputs, _Numbered):  # one input of a list (see __call__)
            name, inputs = f"input {inputs.index}", inputs.item
        try:
            wave, rate = self._decode(inputs, sampling_rate)
            return self.feature_extractor(
                mono_waveform(wave), sampling_rate=rate, return_tensors="pt", return_attention_mask=True
            )
        except TypeError as err:
            raise TypeError(f"{name}: {err}") from err
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err

    def _decode(self, inputs: Any, sampling_rate: int | None) -> tuple[np.ndarray | torch.Tensor, int]:
        """One input -> (mono samples, their sampling rate); files are decoded at the model's rate."""
        target = self.feature_extractor.sampling_rate
        if isinstance(inputs, (str, os.PathLike)):
            return load_audio(inputs, sampling_rate=target), target
        if isinstance(inputs, (bytes, bytearray)):
            return load_audio(io.BytesIO(inputs), sampling_rate=target), target
        if isinstance(inputs, dict):
            return self._decode_dict(inputs, target)
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            return inputs, sampling_rate or target
        raise TypeError(
            f"Unsupported audio input of type {type(inputs).__name__}: pass a file path, encoded bytes, a 1-D numpy "
            "array or torch tensor, or a dict {'array': samples, 'sampling_rate': rate}."
        )

    def _decode_dict(self, inputs: dict, target: int) -> tuple[np.ndarray | torch.Tensor, int]:
        samples = inputs.get("array", inputs.get("raw"))
        if samples is not None:
            if "sampling_rate" not in inputs:
                raise ValueError("An audio dict with 'array' or 'raw' samples needs a 'sampling_rate' key.")
            return samples, int(inputs["sampling_rate"])
        if inputs.get("bytes") is not None or inputs.get("path") is not None:
            return load_audio(encoded_source(inputs), sampling_rate=target), target
        raise ValueError(
            f"An audio dict needs 'array' (or 'raw') and 'sampling_rate', or 'bytes', or 'path'; got keys {sorted(inputs)}."
        )

    def _forward(
        self,
        model_inputs: dict[str, torch.Tensor],
        layer: int | None = None,
        representation: str = "hidden_state",
    ) -> dict[str, torch.Tensor]:
        input_values = model_inputs["input_values"].to(self.model.dtype)
        attention_mask = model_inputs["attention_mask"]
        if bool(attention_mask.all()):  # one input, or equal lengths: masking would only cost time
            attention_mask = None
        features, frame_mask = layer_features(self.model, input_values, attention_mask, layer, representation)
        return {"features": features, "num_frames": frame_mask.sum(-1)}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], return_tensors: bool = False) -> Any:
        # batched calls arrive here one input at a time, padded to the batch's longest input
        features = model_outputs["features"][0, : int(model_outputs["num_frames"][0])].float().cpu()
        return features if return_tensors else features.tolist()

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """Features of one audio input, or a list of results for a list of inputs.

        Args:
            inputs: a path, encoded bytes, a 1-D array/tensor, an audio dict, or a list of them.
            layer (`int`, *optional*): 1-based layer (0 = transformer input for "hidden_state").
            representation (`str`, *optional*): "hidden_state" (default) or "before_residual".
            sampling_rate (`int`, *optional*): rate of bare arrays/tensors (default 16000).
            return_tensors (`bool`, *optional*): return `(frames, hidden)` tensors instead of lists.
            batch_size (`int`, *optional*): inputs per forward pass (padded; outputs are trimmed).

        Each input is one mono waveform: a 2-D array with several channels is refused with how to
        downmix it (it used to be read as a batch, and all but its first row were dropped).
        """
        if isinstance(inputs, list):  # numbered, so that an error names the input it is about
            inputs = [_Numbered(index, item) for index, item in enumerate(inputs)]
        return super().__call__(inputs, **kwargs)


@dataclass(frozen=True)
class _Numbered:
    """An input of a list, with its place in the list."""

    index: int
    item: Any


def mono_waveform(samples: Any) -> Any:
    """`samples` as one mono waveform: 1-D as is, a 2-D array with one channel squeezed; else a `ValueError`."""
    if not isinstance(samples, np.ndarray | torch.Tensor) or samples.ndim == 1:
        return samples
    if samples.ndim == 2 and 1 in samples.shape:
        return samples.reshape(-1)
    raise ValueError(
        f"an array of shape {tuple(samples.shape)}: the pipeline takes one mono waveform per input. Downmix "
        "multi-channel audio first, e.g. `audio.mean(axis=0)` for (channels, samples) as torchaudio.load returns, "
        "`audio.mean(axis=1)` for (samples, channels) as soundfile.read returns; pass a list of 1-D arrays "
        "for several utterances."
    )


def default_feature_extractor(model: PreTrainedModel) -> SpidRFeatureExtractor:
    """The feature extractor saved with the model, else the standard one (16 kHz, standardised)."""
    name = getattr(model, "name_or_path", "") or ""
    if name:
        try:
            return SpidRFeatureExtractor.from_pretrained(name)
        except (OSError, ValueError) as err:  # no preprocessor_config.json: the defaults are SpidR's recipe
            logger.debug("no feature extractor saved with %s (%s); using the default one", name, err)
    return SpidRFeatureExtractor()


def is_spidr_model(model: Any) -> bool:
    """Whether `model` is a SpidR model object (also a remote-code one, by its `model_type`)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "spidr"


class _FlagsOfTheModel(type(FeatureExtractionPipeline)):
    """Metaclass of the dispatcher: its tokenizer flag follows the model that ``pipeline()`` is building."""

    @property
    def _load_tokenizer(cls) -> bool | None:
        # pipeline() reads the flag (getattr(pipeline_class, "_load_tokenizer")) once its local `model` is loaded
        model = sys._getframe(1).f_locals.get("model")
        return False if is_spidr_model(model) else cls.fallback._load_tokenizer


class FeatureExtractionDispatcher(FeatureExtractionPipeline, metaclass=_FlagsOfTheModel):
    """The registered "feature-extraction" class: the SpidR pipeline for SpidR models, else the previous class.

    ``__new__`` returns an instance of another class, so Python never runs this class's
    ``__init__``: for a text model the object is exactly what the previous registration builds.
    """

    _load_feature_extractor = False  # the previous class's; SpidRFeatureExtractionPipeline finds its own
    fallback: type = FeatureExtractionPipeline

    def __new__(cls, *args: Any, **kwargs: Any) -> FeatureExtractionPipeline:
        model = kwargs["model"] if "model" in kwargs else args[0]
        if is_spidr_model(model):
            return SpidRFeatureExtractionPipeline(*args, **kwargs)
        return cls.fallback(*args, **kwargs)


def register_pipelines() -> None:
    """Make ``pipeline("feature-extraction", model=<SpidR>)`` build a SpidR pipeline (idempotent)."""
    entry = SUPPORTED_TASKS[TASK]
    if entry["impl"] is FeatureExtractionDispatcher:
        return
    previous = entry["impl"]
    if isinstance(previous, str):  # transformers stores its own classes as dotted paths
        module, name = previous.rsplit(".", 1)
        previous = getattr(importlib.import_module(module), name)
    FeatureExtractionDispatcher.fallback = previous
    SUPPORTED_TASKS[TASK] = {**entry, "impl": FeatureExtractionDispatcher}


__all__ = [
    "FeatureExtractionDispatcher",
    "SpidRFeatureExtractionPipeline",
    "is_spidr_model",
    "register_pipelines",
]
