"""spidr-hf: the SpidR self-supervised speech model as a transformers model.

Importing this package registers ``model_type="spidr"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForPreTraining``, ``AutoModelForCTC``, ``AutoModelForAudioClassification``,
``AutoFeatureExtractor`` and ``AutoTokenizer`` (a folder's CTC tokenizer, or an error naming the fix when it
has none).
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForCTC,
    AutoModelForPreTraining,
    AutoTokenizer,
)

from .modeling import (
    SpidRConfig,
    SpidRCTCTokenizer,
    SpidRFeatureExtractor,
    SpidRForCTC,
    SpidRForPreTraining,
    SpidRForPreTrainingOutput,
    SpidRForSequenceClassification,
    SpidRModel,
    SpidRModelOutput,
    SpidRPreTrainedModel,
)
from .pipeline import SpidRFeatureExtractionPipeline, register_pipelines
from .units import KMeansQuantizer, codeword_units, deduplicate, deduplicate_batch, fit_kmeans, predict_units

__version__ = "0.1.0"

AutoConfig.register("spidr", SpidRConfig, exist_ok=True)
AutoModel.register(SpidRConfig, SpidRModel, exist_ok=True)
AutoModelForPreTraining.register(SpidRConfig, SpidRForPreTraining, exist_ok=True)
AutoModelForCTC.register(SpidRConfig, SpidRForCTC, exist_ok=True)
AutoModelForAudioClassification.register(SpidRConfig, SpidRForSequenceClassification, exist_ok=True)
AutoFeatureExtractor.register(SpidRConfig, SpidRFeatureExtractor, exist_ok=True)
AutoTokenizer.register(SpidRConfig, tokenizer_class=SpidRCTCTokenizer, exist_ok=True)
register_pipelines()  # pipeline("feature-extraction") builds the audio pipeline for SpidR models only

__all__ = [
    "KMeansQuantizer",
    "SpidRFeatureExtractionPipeline",
    "codeword_units",
    "deduplicate",
    "deduplicate_batch",
    "fit_kmeans",
    "predict_units",
    "register_pipelines",
    "SpidRCTCTokenizer",
    "SpidRConfig",
    "SpidRFeatureExtractor",
    "SpidRForCTC",
    "SpidRForPreTraining",
    "SpidRForPreTrainingOutput",
    "SpidRForSequenceClassification",
    "SpidRModel",
    "SpidRModelOutput",
    "SpidRPreTrainedModel",
    "__version__",
]
