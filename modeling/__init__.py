"""What a SpidR model is: configuration and frame geometry, encoder, pretraining model, downstream heads,
feature extractor, the CTC tokenizer's loader and the fused codebook kernels.

Every file here imports only torch, transformers, Triton (guarded) and its siblings, so that the
folder ships as remote code with every saved model (``spidr_hf.convert.save_pretrained_with_code``).
"""

if __name__ != "spidr_hf.modeling":  # the folder installs as spidr_hf.modeling; a second copy would split classes
    raise ImportError(
        f"modeling/ is the package spidr_hf.modeling, not {__name__!r}: install the repository "
        "(pip install -e .) and import spidr_hf.modeling."
    )

from .codebook_assign import CodebookAssignment, codebook_assign
from .codebook_head_loss import codebook_head_loss
from .configuration_spidr import (
    DEFAULT_CONV_KERNEL,
    DEFAULT_CONV_STRIDE,
    SAMPLING_RATE,
    FrameGeometry,
    SpidRConfig,
    num_frames,
)
from .feature_extraction_spidr import SpidRFeatureExtractor, standardize
from .modeling_spidr import SpidREncoder, SpidRModel, SpidRModelOutput, SpidRPreTrainedModel
from .modeling_spidr_heads import SpidRForCTC, SpidRForSequenceClassification, ctc_frames_needed, ctc_loss
from .modeling_spidr_pretraining import (
    PADDING_UNIT,
    SpidRForPreTraining,
    SpidRForPreTrainingOutput,
    masked_instance_norm,
)
from .tokenization_spidr import SpidRCTCTokenizer

__all__ = [
    "DEFAULT_CONV_KERNEL",
    "DEFAULT_CONV_STRIDE",
    "PADDING_UNIT",
    "SAMPLING_RATE",
    "CodebookAssignment",
    "FrameGeometry",
    "SpidRCTCTokenizer",
    "SpidRConfig",
    "SpidREncoder",
    "SpidRFeatureExtractor",
    "SpidRForCTC",
    "SpidRForSequenceClassification",
    "SpidRForPreTraining",
    "SpidRForPreTrainingOutput",
    "SpidRModel",
    "SpidRModelOutput",
    "SpidRPreTrainedModel",
    "codebook_assign",
    "codebook_head_loss",
    "ctc_frames_needed",
    "ctc_loss",
    "masked_instance_norm",
    "num_frames",
    "standardize",
]
