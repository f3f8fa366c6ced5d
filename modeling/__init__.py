"""What a SpidR model is: configuration, encoder, pretraining model and feature extractor."""

from .configuration_spidr import SpidRConfig
from .feature_extraction_spidr import SpidRFeatureExtractor
from .modeling_spidr import SpidREncoder, SpidRModel, SpidRModelOutput, SpidRPreTrainedModel
from .modeling_spidr_pretraining import SpidRForPreTraining, SpidRForPreTrainingOutput

__all__ = [
    "SpidRConfig",
    "SpidREncoder",
    "SpidRFeatureExtractor",
    "SpidRForPreTraining",
    "SpidRForPreTrainingOutput",
    "SpidRModel",
    "SpidRModelOutput",
    "SpidRPreTrainedModel",
]
