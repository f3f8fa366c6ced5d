"""Spoken language modelling on discrete units: a unit tokenizer, a transformers causal LM trained on
deduplicated units, and the ZeroSpeech-style scoring of minimal pairs (lexical, syntactic, story cloze).

One module per concern:

* :mod:`.tokenizer`: units as a ``PreTrainedTokenizerFast`` (WordLevel over unit numbers, ``<s> </s> <pad>``);
* :mod:`.data`: ``units.jsonl`` files -> deduplicated token ids -> a packed ``datasets.Dataset``;
* :mod:`.model`: the LM presets (``tiny`` for CPUs and tests, ``base`` for GPUs);
* :mod:`.train`: :func:`train_lm`, the transformers ``Trainer`` with resume;
* :mod:`.benchmarks`: the ZeroSpeech 2021 lexical / syntactic layout and a story-cloze layout;
* :mod:`.scoring`: log-probabilities of unit sequences and the accuracy of each benchmark;
* :mod:`.units_source`: the units of a benchmark's audio (a SpidR model, a baseline quantizer, or a units file);
* :mod:`.synthetic_benchmark`: a synthetic benchmark in the ZeroSpeech layout, rendered with espeak-ng;
* :mod:`.demo_stage`: the LM rows of ``spidr-hf demo``.

``datasets`` is an optional dependency (``pip install 'spidr-hf[lm]'``).
"""

from .benchmarks import Benchmark, Pair, find_benchmarks
from .evaluate import LMScoreOptions, load_lm, score_lm
from .model import PRESETS, build_lm
from .scoring import benchmark_accuracy, pair_accuracy, score_items, sequence_log_probs
from .synthetic_benchmark import synthesize_benchmark
from .tokenizer import build_unit_tokenizer, encode_units, num_units_of
from .train import LMTrainingOptions, train_lm

__all__ = [
    "PRESETS",
    "Benchmark",
    "LMScoreOptions",
    "LMTrainingOptions",
    "Pair",
    "benchmark_accuracy",
    "build_lm",
    "build_unit_tokenizer",
    "encode_units",
    "find_benchmarks",
    "load_lm",
    "num_units_of",
    "pair_accuracy",
    "score_items",
    "score_lm",
    "sequence_log_probs",
    "synthesize_benchmark",
    "train_lm",
]
