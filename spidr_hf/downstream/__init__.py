"""Downstream use of a SpidR encoder: CTC fine-tuning and the SUPERB-style phone probe.

* :mod:`.ctc_data`: transcribed speech (phones or characters) from aligned corpora or saved
  datasets, its CTC tokenizer and padded batches;
* :mod:`.recognition`: greedy CTC decoding, error rates, a model folder's tokenizer and ASR pipeline;
* :mod:`.probe`: the frozen-encoder weighted-layer-sum + linear CTC probe, next to log-mel;
* :mod:`.finetune`: `Trainer`-based CTC fine-tuning of `SpidRForCTC`.
"""

from .ctc_data import TranscribedSpeech, build_tokenizer, load_transcribed
from .probe import ProbeSettings, phone_probe
from .recognition import error_rate, greedy_ctc, load_ctc_tokenizer, speech_recognizer

__all__ = [
    "ProbeSettings",
    "TranscribedSpeech",
    "build_tokenizer",
    "error_rate",
    "greedy_ctc",
    "load_ctc_tokenizer",
    "load_transcribed",
    "phone_probe",
    "speech_recognizer",
]
