"""Configuration of SpidR models (arXiv 2512.20308), and where their frames fall in the audio.

Every number of the architecture lives here: the other layers of the package (audio I/O, data,
training, extraction, the synthetic corpus) take the sampling rate and the frame geometry from
this file, which imports nothing but transformers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

SAMPLING_RATE = 16_000
"""The rate of the audio every SpidR model reads."""

# The reference recipe's feature extractor: (channels, kernel, stride) per conv layer.
_DEFAULT_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
DEFAULT_CONV_KERNEL: tuple[int, ...] = tuple(k for _, k, _ in _DEFAULT_CONV)
DEFAULT_CONV_STRIDE: tuple[int, ...] = tuple(s for _, _, s in _DEFAULT_CONV)


@dataclass(frozen=True)
class FrameGeometry:
    """Where the frames of a waveform convolution stack fall in the audio.

    Each unpadded convolution maps `L` inputs to `floor((L - kernel) / stride) + 1` outputs, so
    frame `t` reads samples `[hop * t, hop * t + receptive_field)`. The default stack gives 20 ms
    frames (hop 320, receptive field 400 samples at 16 kHz); `SpidRConfig.frame_geometry` gives a
    model's own.
    """

    conv_kernel: tuple[int, ...] = DEFAULT_CONV_KERNEL
    conv_stride: tuple[int, ...] = DEFAULT_CONV_STRIDE
    sampling_rate: int = SAMPLING_RATE

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_kernel", tuple(int(k) for k in self.conv_kernel))
        object.__setattr__(self, "conv_stride", tuple(int(s) for s in self.conv_stride))
        if len(self.conv_kernel) != len(self.conv_stride):
            raise ValueError(
                f"conv_kernel and conv_stride need one entry per conv layer, got {len(self.conv_kernel)} "
                f"and {len(self.conv_stride)}."
            )

    @property
    def hop(self) -> int:
        """Samples between consecutive frames (the product of the strides)."""
        hop = 1
        for stride in self.conv_stride:
            hop *= stride
        return hop

    @property
    def receptive_field(self) -> int:
        """Samples one frame reads."""
        field = 1
        for kernel, stride in zip(reversed(self.conv_kernel), reversed(self.conv_stride), strict=True):
            field = (field - 1) * stride + kernel
        return field

    @property
    def frame_rate(self) -> int | float:
        """Frames per second (an int when whole, as 50 for the default stack)."""
        rate = self.sampling_rate / self.hop
        return int(rate) if rate.is_integer() else rate

    def num_frames(self, num_samples):
        """Frames computed from `num_samples` samples (an int, or an integer tensor of lengths); 0 when too short."""
        for kernel, stride in zip(self.conv_kernel, self.conv_stride, strict=True):
            num_samples = (num_samples - kernel) // stride + 1
        return num_samples.clamp_min(0) if hasattr(num_samples, "clamp_min") else max(int(num_samples), 0)

    def frame_samples(self, start: int, stop: int) -> tuple[int, int]:
        """The samples `[first, last)` that frames `[start, stop)` read (stop > start)."""
        return self.hop * start, self.hop * (stop - 1) + self.receptive_field

    def seconds_to_frames(self, seconds: float) -> int:
        """The whole number of frames nearest to `seconds`."""
        return round(seconds * self.frame_rate)


def num_frames(
    num_samples: int,
    conv_kernel: Sequence[int] = DEFAULT_CONV_KERNEL,
    conv_stride: Sequence[int] = DEFAULT_CONV_STRIDE,
) -> int:
    """Frames of the convolution stack `(conv_kernel, conv_stride)` (default: SpidR's) for `num_samples` samples."""
    return FrameGeometry(tuple(conv_kernel), tuple(conv_stride)).num_frames(int(num_samples))


class SpidRConfig(PretrainedConfig):
    r"""Configuration of a [`SpidRModel`] / [`SpidRForPreTraining`].

    The defaults give the base SpidR of the paper (about 93M encoder parameters).

    Args:
        conv_dim, conv_kernel, conv_stride (`list[int]`):
            Channels, kernel sizes and strides of the waveform feature extractor's Conv1d layers.
        conv_bias (`bool`): whether those convolutions have a bias.
        feat_extract_norm (`str`): `"layer_norm"` (a LayerNorm after every conv, SpidR) or
            `"group_norm"` (GroupNorm after the first conv only, wav2vec2-style checkpoints).
        hidden_size (`int`): transformer width.
        num_hidden_layers, num_attention_heads, intermediate_size (`int`): transformer depth,
            heads and feed-forward width.
        hidden_act (`str`): activation of the feed-forward block and of the convolutions.
        qkv_bias (`bool`): whether the fused query/key/value projection has a bias (`True` for
            DinoSR checkpoints converted from fairseq).
        num_conv_pos_embeddings (`int`): nominal kernel of the positional convolution; each of
            the `num_conv_pos_embedding_layers` stacked convs uses
            `max(3, num_conv_pos_embeddings // num_conv_pos_embedding_layers)`.
        num_conv_pos_embedding_groups (`int`): groups of the positional convolutions.
        num_conv_pos_embedding_layers (`int`): depth of the positional convolution stack.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        feat_proj_dropout, hidden_dropout, attention_dropout, activation_dropout (`float`):
            dropout after the feature projection, on the attention/FFN outputs and the
            transformer input, on the attention probabilities, inside the FFN.
        layerdrop (`float`): probability of skipping a whole layer in training (a skipped
            layer passes its input through and reports a zero before-residual output).
        num_codebooks (`int`): codebooks, one per layer among the last `num_codebooks` layers.
        codebook_size (`int`): codewords per codebook.
        codebook_decay (`float`): EMA decay of the codebook sums and counts.
        codebook_init_seed (`int`): seed of the codebooks' random start, drawn from a generator of its
            own so that a model holds the same codebooks however it is built (directly, on the meta
            device then `init_weights()`, or by `from_pretrained` of an encoder checkpoint);
            `spidr-hf pretrain --seed` sets it.
        head_input (`str`): `"before_residual"` (SpidR: head i reads the student's FFN output
            of the layer that feeds codebook i) or `"last_hidden_state"` (DinoSR: every head
            reads the final output).
        ema_schedule (`str`): `"spidr"` (exponential approach to 1) or `"dinosr"` (linear).
        ema_start_decay, ema_final_decay, ema_final_step, ema_timescale, ema_threshold:
            constants of the teacher EMA schedules (see `SpidRForPreTraining.ema_decay`).
        ema_frozen_step (`int`): DinoSR only: the step from which the teacher is frozen.
        freeze_feature_encoder_step (`int`): step from which the feature extractor and
            projection are frozen.
        codebook_backend (`str`): `"auto"`, `"triton"` or `"torch"`: the implementation of
            codebook assignment and the head loss in [`SpidRForPreTraining`].
        vocab_size (`int`): outputs of [`SpidRForCTC`]'s head (the CTC tokenizer's vocabulary).
        pad_token_id (`int`): the CTC blank, the tokenizer's pad token id (below `vocab_size`).
        ctc_loss_reduction (`str`): `"sum"` or `"mean"`, the reduction of [`SpidRForCTC`]'s loss.
        ctc_zero_infinity (`bool`): zero the infinite CTC loss of an utterance too short for its
            labels (instead of refusing it).
        final_dropout (`float`): dropout before [`SpidRForCTC`]'s head.
        use_weighted_layer_sum (`bool`): the heads read a learnt softmax-weighted sum of the
            transformer input and every layer's output (the SUPERB protocol), not the last layer.
        classifier_proj_size (`int`): width of [`SpidRForSequenceClassification`]'s projection
            before the mean over frames.
    """

    model_type = "spidr"

    def __init__(
        self,
        conv_dim: list[int] | tuple[int, ...] = tuple(c for c, _, _ in _DEFAULT_CONV),
        conv_kernel: list[int] | tuple[int, ...] = DEFAULT_CONV_KERNEL,
        conv_stride: list[int] | tuple[int, ...] = DEFAULT_CONV_STRIDE,
        conv_bias: bool = False,
        feat_extract_norm: str = "layer_norm",
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        qkv_bias: bool = False,
        num_conv_pos_embeddings: int = 95,
        num_conv_pos_embedding_groups: int = 16,
        num_conv_pos_embedding_layers: int = 5,
        layer_norm_eps: float = 1e-5,
        feat_proj_dropout: float = 0.0,
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layerdrop: float = 0.0,
        num_codebooks: int = 8,
        codebook_size: int = 256,
        codebook_decay: float = 0.9,
        codebook_init_seed: int = 0,
        head_input: str = "before_residual",
        ema_schedule: str = "spidr",
        ema_start_decay: float = 0.999,
        ema_final_decay: float = 0.9999,
        ema_final_step: int = 30_000,
        ema_timescale: float = 20_000.0,
        ema_threshold: float = 1e-7,
        ema_frozen_step: int = 200_000,
        freeze_feature_encoder_step: int = 200_000,
        codebook_backend: str = "auto",
        initializer_range: float = 0.02,
        vocab_size: int = 32,
        pad_token_id: int = 0,
        ctc_loss_reduction: str = "sum",
        ctc_zero_infinity: bool = False,
        final_dropout: float = 0.1,
        use_weighted_layer_sum: bool = False,
        classifier_proj_size: int = 256,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.conv_dim = list(conv_dim)
        self.conv_kernel = list(conv_kernel)
        self.conv_stride = list(conv_stride)
        self.conv_bias = conv_bias
        self.feat_extract_norm = feat_extract_norm
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.qkv_bias = qkv_bias
        self.num_conv_pos_embeddings = num_conv_pos_embeddings
        self.num_conv_pos_embedding_groups = num_conv_pos_embedding_groups
        self.num_conv_pos_embedding_layers = num_conv_pos_embedding_layers
        self.layer_norm_eps = layer_norm_eps
        self.feat_proj_dropout = feat_proj_dropout
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.layerdrop = layerdrop
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.codebook_decay = codebook_decay
        self.codebook_init_seed = codebook_init_seed
        self.head_input = head_input
        self.ema_schedule = ema_schedule
        self.ema_start_decay = ema_start_decay
        self.ema_final_decay = ema_final_decay
        self.ema_final_step = ema_final_step
        self.ema_timescale = ema_timescale
        self.ema_threshold = ema_threshold
        self.ema_frozen_step = ema_frozen_step
        self.freeze_feature_encoder_step = freeze_feature_encoder_step
        self.codebook_backend = codebook_backend
        self.initializer_range = initializer_range
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.ctc_loss_reduction = ctc_loss_reduction
        self.ctc_zero_infinity = ctc_zero_infinity
        self.final_dropout = final_dropout
        self.use_weighted_layer_sum = use_weighted_layer_sum
        self.classifier_proj_size = classifier_proj_size
        self._validate()

    def _validate(self) -> None:
        """Refuse values the model cannot be built or trained with, naming the field and what it takes."""
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            values = getattr(self, name)
            if not values or not all(_is_int(v) and v > 0 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive integers (one per conv layer), got {values!r}.")
        if not len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride):
            raise ValueError(
                "conv_dim, conv_kernel and conv_stride must have one entry per conv layer, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)} and {len(self.conv_stride)}."
            )
        for name in _POSITIVE_INTS:
            _check(self, name, _is_int, "a positive integer", lambda v: v > 0)
        for name in _STEPS:
            _check(self, name, _is_int, "a non-negative integer", lambda v: v >= 0)
        for name in _FRACTIONS:
            _check(self, name, _is_real, "a number between 0 and 1", lambda v: 0 <= v <= 1)
        _check(self, "layer_norm_eps", _is_real, "a positive number", lambda v: v > 0)
        _check(self, "ema_timescale", _is_real, "a positive number", lambda v: v > 0)
        _check(self, "ema_threshold", _is_real, "a non-negative number", lambda v: v >= 0)
        _check(self, "initializer_range", _is_real, "a non-negative number", lambda v: v >= 0)
        for name in ("conv_bias", "qkv_bias"):
            _check(self, name, lambda v: isinstance(v, bool), "true or false", lambda v: True)
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of transformers' activations {sorted(ACT2FN)}, got {self.hidden_act!r}.")
        if self.feat_extract_norm not in {"layer_norm", "group_norm"}:
            raise ValueError(f"feat_extract_norm must be 'layer_norm' or 'group_norm', got {self.feat_extract_norm!r}.")
        for name in ("num_attention_heads", "num_conv_pos_embedding_groups"):
            if self.hidden_size % getattr(self, name):
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) must be divisible by {name} ({getattr(self, name)})."
                )
        if not 0 < self.num_codebooks <= self.num_hidden_layers:
            raise ValueError(
                f"num_codebooks must be between 1 and num_hidden_layers ({self.num_hidden_layers}), "
                f"got {self.num_codebooks}: there is one codebook per layer among the last layers."
            )
        if self.head_input not in {"before_residual", "last_hidden_state"}:
            raise ValueError(
                f"head_input must be 'before_residual' (SpidR) or 'last_hidden_state' (DinoSR), got {self.head_input!r}."
            )
        if self.ema_schedule not in {"spidr", "dinosr"}:
            raise ValueError(f"ema_schedule must be 'spidr' or 'dinosr', got {self.ema_schedule!r}.")
        if self.codebook_backend not in {"auto", "triton", "torch"}:
            raise ValueError(f"codebook_backend must be 'auto', 'triton' or 'torch', got {self.codebook_backend!r}.")
        self._validate_head_fields()
        for name, bound in _UPPER_BOUNDS.items():
            values = getattr(self, name)
            if max(values if isinstance(values, list) else [values]) > bound:
                raise ValueError(
                    f"{name} must be at most {bound} (a sanity bound; larger models do not fit in any machine's "
                    f"memory), got {values!r}."
                )

    def _validate_head_fields(self) -> None:
        """The fields of the downstream heads (SpidRForCTC, SpidRForSequenceClassification)."""
        for name in ("vocab_size", "classifier_proj_size"):
            _check(self, name, _is_int, "a positive integer", lambda v: v > 0)
        _check(self, "final_dropout", _is_real, "a number between 0 and 1", lambda v: 0 <= v <= 1)
        for name in ("ctc_zero_infinity", "use_weighted_layer_sum"):
            _check(self, name, lambda v: isinstance(v, bool), "true or false", lambda v: True)
        if self.ctc_loss_reduction not in {"sum", "mean"}:
            raise ValueError(f"ctc_loss_reduction must be 'sum' or 'mean', got {self.ctc_loss_reduction!r}.")
        if not (_is_int(self.pad_token_id) and 0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(
                f"pad_token_id (the CTC blank) must be an id below vocab_size ({self.vocab_size}), got "
                f"{self.pad_token_id!r}: use the tokenizer's pad_token_id."
            )

    def estimated_num_parameters(self) -> int:
        """About how many parameters the pretraining model has (student, teacher, heads, codebooks), from
        the config alone: what building it would allocate, known before allocating."""
        h, ffn = self.hidden_size, self.intermediate_size
        channels = [1, *self.conv_dim]
        conv = sum(c_in * c_out * k + 3 * c_out for c_in, c_out, k in zip(channels[:-1], channels[1:], self.conv_kernel, strict=True))
        projection = 2 * channels[-1] + channels[-1] * h + h
        positional = self.num_conv_pos_embedding_layers * (h * h // self.num_conv_pos_embedding_groups * self.pos_conv_kernel + h)
        layer = 4 * (h * h + h) + 2 * h * ffn + ffn + h + 4 * h
        encoder = positional + self.num_hidden_layers * layer + 2 * h
        heads = self.num_codebooks * (h * self.codebook_size + self.codebook_size)
        codebooks = self.num_codebooks * self.codebook_size * (h + 1)
        return conv + projection + 2 * encoder + heads + codebooks + h

    @property
    def num_feat_extract_layers(self) -> int:
        return len(self.conv_dim)

    @property
    def pos_conv_kernel(self) -> int:
        """Kernel of each stacked positional convolution."""
        return max(3, self.num_conv_pos_embeddings // self.num_conv_pos_embedding_layers)

    @property
    def codebook_layers(self) -> list[int]:
        """1-based encoder layers whose outputs feed the codebooks (the last `num_codebooks`)."""
        return list(range(self.num_hidden_layers - self.num_codebooks + 1, self.num_hidden_layers + 1))

    def codebook_index(self, layer: int) -> int:
        """Index of the codebook (and prediction head) that 1-based `layer` feeds."""
        layers = self.codebook_layers
        if layer not in layers:
            raise ValueError(
                f"layer {layer} has no codebook or prediction head; this model's codebook layers are {layers}."
            )
        return layers.index(layer)

    def head_input_of(self, layer: int) -> tuple[int, str]:
        """`(layer, representation)` read by the head of codebook layer `layer`: its own before-residual
        output (SpidR), or the last layer's output, `"hidden_state"` (DinoSR)."""
        self.codebook_index(layer)
        if self.head_input == "before_residual":
            return layer, "before_residual"
        return self.num_hidden_layers, "hidden_state"

    @property
    def frame_geometry(self) -> FrameGeometry:
        """Where this model's frames fall in the audio (its conv kernels and strides at 16 kHz)."""
        return FrameGeometry(tuple(self.conv_kernel), tuple(self.conv_stride))

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Samples per output frame (320 for the default feature extractor)."""
        return self.frame_geometry.hop

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for the default feature extractor)."""
        return self.frame_geometry.receptive_field

    @classmethod
    def tiny(cls, **kwargs) -> SpidRConfig:
        """A small SpidR that learns phonetic units on a laptop CPU in minutes (the demo's, and tests').

        Three values differ from the paper's architecture scaled down; each comment gives the measured
        reason (runs and numbers: docs/TINY_RECIPE.md, `benchmarks/tiny_recipe_search.py`).
        """
        defaults = dict(
            conv_dim=[64] * 7,
            # per-channel normalisation over time after the first conv (wav2vec 2.0's "group_norm"): with a
            # LayerNorm after every conv, the deep convs of this small encoder lose their variation over time
            # within 50 steps (0.74 -> 0.05 of the output variance) and the units stay near chance
            feat_extract_norm="group_norm",
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=256,
            # one positional conv of 19 frames instead of a stack of 5: the stack's output collapses to rank ~1
            # in 250 steps and, copied into the teacher every step, dominates the teacher's input
            num_conv_pos_embeddings=19,
            num_conv_pos_embedding_layers=1,
            num_conv_pos_embedding_groups=8,
            num_codebooks=2,
            codebook_size=64,
            # codewords follow the quickly changing small model: 0.9 leaves them stale and the targets use fewer
            codebook_decay=0.5,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            ema_timescale=2_000.0,
        )
        defaults.update(kwargs)
        return cls(**defaults)


# fields checked by SpidRConfig._validate, by the kind of value they take
_POSITIVE_INTS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups", "num_conv_pos_embedding_layers", "num_codebooks", "codebook_size",
    "ema_final_step",
)  # fmt: skip
_STEPS = ("ema_frozen_step", "freeze_feature_encoder_step", "codebook_init_seed")
_UPPER_BOUNDS = {
    "hidden_size": 2**16, "intermediate_size": 2**18, "num_hidden_layers": 1024, "num_attention_heads": 1024,
    "codebook_size": 2**20, "num_conv_pos_embeddings": 4096, "num_conv_pos_embedding_layers": 64,
    "conv_dim": 2**16, "conv_kernel": 4096, "conv_stride": 4096, "vocab_size": 2**20, "classifier_proj_size": 2**16,
}  # fmt: skip
_FRACTIONS = (
    "feat_proj_dropout", "hidden_dropout", "attention_dropout", "activation_dropout", "layerdrop",
    "codebook_decay", "ema_start_decay", "ema_final_decay",
)  # fmt: skip


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check(config: PretrainedConfig, name: str, is_kind, kind: str, is_valid) -> None:
    """Raise a ValueError naming `name` unless its value is of the right kind and valid."""
    value = getattr(config, name)
    if not (is_kind(value) and is_valid(value)):
        raise ValueError(f"{name} must be {kind}, got {value!r}.")


__all__ = ["DEFAULT_CONV_KERNEL", "DEFAULT_CONV_STRIDE", "SAMPLING_RATE", "FrameGeometry", "SpidRConfig", "num_frames"]
