"""Units of a file from its frames: head argmax, nearest codeword, or nearest k-means centroid."""

from __future__ import annotations

import os

import torch

from ..units import KMeansQuantizer, codeword_units_from_features
from .encoder import FrameKey
from .options import UNIT_KINDS, ExtractionOptions


class UnitComputer:
    """Turns a file's frames into units: head argmax, nearest codeword, or nearest k-means centroid."""

    def __init__(
        self, kind: str, model: torch.nn.Module, layer: int | None, quantizer: KMeansQuantizer | None
    ):
        if kind not in UNIT_KINDS:
            raise ValueError(f"units must be one of {UNIT_KINDS}, got {kind!r}.")
        self.kind, self.model, self.quantizer = kind, model, quantizer
        config = model.config
        if kind == "kmeans":
            if quantizer is None:
                raise ValueError("k-means units need a KMeansQuantizer.")
            if layer is not None and layer != quantizer.layer:
                raise ValueError(
                    f"the k-means quantizer was fitted on layer {quantizer.layer}, not layer {layer}."
                )
            self.layer = quantizer.layer
            self.key: FrameKey = (quantizer.layer, quantizer.representation)
            return
        if layer is None:
            raise ValueError(
                f"{kind} units need a layer; this model's codebook layers are {config.codebook_layers}."
            )
        config.codebook_index(layer)
        self.layer = layer
        # codeword units read the layer's before-residual output; heads read config.head_input_of(layer)
        self.key = (layer, "before_residual") if kind == "codeword" else config.head_input_of(layer)

    @classmethod
    def from_options(
        cls, options: ExtractionOptions, model: torch.nn.Module, model_dir: str | os.PathLike
    ) -> UnitComputer:
        """The computer ``options.units`` asks for; k-means from ``options.kmeans`` or the model directory."""
        quantizer = None
        if options.units == "kmeans":
            quantizer = (KMeansQuantizer.load(options.kmeans) if options.kmeans
                         else KMeansQuantizer.from_pretrained(model_dir, layer=options.unit_layer))  # fmt: skip
        return cls(options.units, model, options.unit_layer, quantizer)

    @torch.no_grad()
    def __call__(self, frames: dict[FrameKey, torch.Tensor]) -> torch.Tensor:
        features = frames[self.key].to(self.model.device)
        if self.kind == "head":
            return self.model.head_units(features, self.layer)
        if self.kind == "codeword":
            return codeword_units_from_features(self.model, features[None], self.layer)[0]
        return self.quantizer(features)
