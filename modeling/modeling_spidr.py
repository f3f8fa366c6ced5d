"""SpidR encoder (arXiv 2512.20308) as a transformers model.

This file depends only on torch, transformers and its sibling configuration file, so that it
can travel with a checkpoint and load with ``trust_remote_code=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN, GELUActivation
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_spidr import SpidRConfig


@dataclass
class SpidREncoderOutput(ModelOutput):
    """Outputs of [`SpidREncoder`] (see [`SpidRModelOutput`] for the fields)."""

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    before_residual_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpidRModelOutput(ModelOutput):
    """Outputs of [`SpidRModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, frames, hidden_size)`):
            Output of the last transformer layer (there is no final LayerNorm).
        projected_features (`torch.FloatTensor` of shape `(batch, frames, hidden_size)`):
            Output of the feature projection (the transformer's input before the positional
            convolution), before dropout.
        hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
            `num_hidden_layers + 1` tensors: index 0 is the transformer input after the
            positional convolution and LayerNorm, index `l` the output of layer `l`.
        before_residual_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
            `num_hidden_layers` tensors: index `l - 1` is layer `l`'s feed-forward output
            before the residual add and final LayerNorm, the representation the SpidR paper
            evaluates per layer and the teacher's targets.
        attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`):
            Attention probabilities of each layer, `(batch, heads, frames, frames)`.
        frame_attention_mask (`torch.BoolTensor` of shape `(batch, frames)`, with an `attention_mask`):
            Which output frames are computed from real samples (`True`) rather than padding.
    """

    last_hidden_state: torch.FloatTensor | None = None
    projected_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    before_residual_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    frame_attention_mask: torch.BoolTensor | None = None


class SpidRConvLayer(nn.Module):
    """One Conv1d of the waveform feature extractor, then its norm and GELU, in `(batch, frames, channels)` layout.

    The convolution runs as a channels-last 2-D convolution over a `(batch, channels, 1, frames)`
    view, whose output already is `(batch, frames, channels)` in memory: the per-frame LayerNorm
    then needs no transposed copies (faster on a CPU than Conv1d + transposes).
    """

    def __init__(self, config: SpidRConfig, layer_id: int):
        super().__init__()
        in_channels = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_channels = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size=config.conv_kernel[layer_id],
            stride=config.conv_stride[layer_id],
            bias=config.conv_bias,
        )
        if config.feat_extract_norm == "layer_norm":
            self.layer_norm = nn.LayerNorm(out_channels, eps=config.layer_norm_eps)
        elif layer_id == 0:  # group_norm mode normalises the first layer only (wav2vec2 style)
            self.layer_norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        else:
            self.layer_norm = None
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, frames_in, in_channels)` -> `(batch, frames_out, out_channels)`."""
        columns = hidden_states.transpose(1, 2).unsqueeze(2)  # (batch, channels, 1, frames), channels-last
        hidden_states = F.conv2d(
            columns, self.conv.weight.unsqueeze(2), self.conv.bias, stride=(1, self.conv.stride[0])
        )
        hidden_states = hidden_states.squeeze(2).transpose(1, 2)
        if isinstance(self.layer_norm, nn.LayerNorm):
            hidden_states = self.layer_norm(hidden_states)
        elif self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        return activate(self.activation, hidden_states)


class SpidRFeatureEncoder(nn.Module):
    """Raw waveform `(batch, samples)` -> frame features `(batch, frames, conv_dim[-1])`.

    CPU inference (no autograd) runs in time chunks of about `cpu_chunk_samples` samples (all rows
    together); the last chunk is zero-padded up to one of `cpu_lengths_per_octave` lengths per
    doubling of its frame count (at most 1/16 more frames). Each chunk holds its frames' whole
    receptive field, so every frame sees exactly the samples it sees in one pass (the results
    differ only by float rounding, about 1e-6), and:

    * the chunks' activations stay in cache instead of streaming 50 MB tensors through memory;
    * the convolutions see a few recurring lengths, so oneDNN reuses the kernels it builds for
      each new input shape (building them costs more than the convolutions themselves on short
      files).

    Set `cpu_chunk_samples = None` to run in one pass. GPUs, training and the `group_norm` mode
    (whose first norm spans the whole input) always run in one pass.
    """

    cpu_chunk_samples: int | None = 64_000
    cpu_lengths_per_octave = 16
    min_chunk_frames = 16

    def __init__(self, config: SpidRConfig):
        super().__init__()
        self.conv_layers = nn.ModuleList(
            SpidRConvLayer(config, i) for i in range(config.num_feat_extract_layers)
        )
        self.hop = config.inputs_to_logits_ratio
        self.receptive_field = config.receptive_field
        # group_norm mode normalises the first layer over time: frames then depend on the whole input
        self.frame_local = config.feat_extract_norm == "layer_norm"

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        if not self._chunked(input_values):
            return self._encode(input_values)
        batch, samples = input_values.shape
        num_frames = (samples - self.receptive_field) // self.hop + 1
        chunk_frames = max(self.min_chunk_frames, self.cpu_chunk_samples // (batch * self.hop))
        outputs = []
        for start in range(0, num_frames, chunk_frames):
            frames = min(chunk_frames, num_frames - start)
            padded_frames = frames if frames == chunk_frames else self._recurring_length(frames)
            first = self.hop * start
            piece = input_values[:, first : first + self.hop * (padded_frames - 1) + self.receptive_field]
            missing = self.hop * (padded_frames - 1) + self.receptive_field - piece.shape[1]
            if missing:
                piece = F.pad(piece, (0, missing))
            outputs.append(self._encode(piece)[:, :frames])
        return torch.cat(outputs, dim=1)

    def _recurring_length(self, frames: int) -> int:
        """`frames` rounded up to a multiple of the largest power of two <= frames / steps per octave."""
        step = 1 << max(0, (frames // self.cpu_lengths_per_octave).bit_length() - 1)
        return -(-frames // step) * step

    def _encode(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden_states = input_values[:, :, None]
        for conv_layer in self.conv_layers:
            hidden_states = conv_layer(hidden_states)
        return hidden_states

    def _chunked(self, input_values: torch.Tensor) -> bool:
        """Whether this call runs in chunks: CPU inference, frame-local norms, at least one frame."""
        return (
            self.cpu_chunk_samples is not None
            and self.frame_local
            and input_values.device.type == "cpu"
            and not _needs_grad(input_values, self)
            and not torch.compiler.is_compiling()
            and input_values.shape[1] >= self.receptive_field
        )


def _needs_grad(tensor: torch.Tensor, module: nn.Module) -> bool:
    """Whether autograd records this call: then activations must not be overwritten in place."""
    if not torch.is_grad_enabled():
        return False
    return tensor.requires_grad or any(p.requires_grad for p in module.parameters())


def activate(activation: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """`activation(hidden_states)`, computed in place for exact GELU when autograd is not recording.

    Skipping the new output tensor matters on a CPU, where the feature encoder's activations are
    tens of MB each.
    """
    if (
        type(activation) is GELUActivation
        and getattr(activation, "act", None) is F.gelu
        and not (torch.is_grad_enabled() and hidden_states.requires_grad)
        and not torch.compiler.is_compiling()
    ):
        return torch.ops.aten.gelu_(hidden_states)
    return activation(hidden_states)


class SpidRFeatureProjection(nn.Module):
    """LayerNorm over conv channels, then a Linear to the transformer width."""

    def __init__(self, config: SpidRConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, conv_features: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(conv_features))


class SpidRPositionalConvEmbedding(nn.Module):
    """A stack of grouped convolutions, each followed by a parameter-free LayerNorm and GELU."""

    def __init__(self, config: SpidRConfig):
        super().__init__()
        kernel = config.pos_conv_kernel
        self.convs = nn.ModuleList(
            nn.Conv1d(
                config.hidden_size,
                config.hidden_size,
                kernel_size=kernel,
                padding=kernel // 2,
                groups=config.num_conv_pos_embedding_groups,
            )
            for _ in range(config.num_conv_pos_embedding_layers)
        )
        # an even kernel with padding k // 2 yields one frame too many
        self.trim_last_frame = kernel % 2 == 0
        self.eps = config.layer_norm_eps
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`hidden_states` `(batch, frames, channels)`; `padding_mask` `(batch, frames)`, True on padding.

        Like the feature encoder, each grouped convolution runs channels-last, so the LayerNorms
        over channels need no transposed copies (faster than Conv1d on a CPU).
        """
        keep = None if padding_mask is None else (~padding_mask)[:, :, None].to(hidden_states.dtype)
        for conv in self.convs:
            if keep is not None:  # padded frames must not leak into valid ones through the kernel
                hidden_states = hidden_states * keep
            columns = hidden_states.transpose(1, 2).unsqueeze(2)  # (batch, channels, 1, frames)
            hidden_states = F.conv2d(
                columns, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]), groups=conv.groups
            )
            hidden_states = hidden_states.squeeze(2).transpose(1, 2)
            if self.trim_last_frame:
                hidden_states = hidden_states[:, :-1]
            hidden_states = F.layer_norm(hidden_states, (hidden_states.shape[-1],), eps=self.eps)
            hidden_states = activate(self.activation, hidden_states)
        if keep is not None:
            hidden_states = hidden_states * keep
        return hidden_states


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; `attention_mask` is additive (`create_bidirectional_mask`'s eager form)."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SpidRAttention(nn.Module):
    """Multi-head self-attention with a fused query/key/value projection."""

    def __init__(self, config: SpidRConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, frames, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, frames, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch, frames, -1).contiguous()
        return self.out_proj(attn_output), attn_weights


class SpidRFeedForward(nn.Module):
    def __init__(self, config: SpidRConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.intermediate_dropout(
            activate(self.activation, self.intermediate_dense(hidden_states))
        )
        return self.output_dense(hidden_states)


class SpidREncoderLayer(GradientCheckpointingLayer):
    """Post-LN transformer layer that also returns its FFN output before the residual add."""

    def __init__(self, config: SpidRConfig):
        super().__init__()
        self.attention = SpidRAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = SpidRFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        attn_output, attn_weights = self.attention(hidden_states, attention_mask, **kwargs)
        hidden_states = self.layer_norm(hidden_states + self.dropout(attn_output))
        before_residual = self.feed_forward(hidden_states)
        hidden_states = self.final_layer_norm(hidden_states + self.dropout(before_residual))
        return hidden_states, before_residual, attn_weights


class SpidREncoder(nn.Module):
    """Positional convolution, input LayerNorm and the transformer layers (student or teacher)."""

    def __init__(self, config: SpidRConfig):
        super().__init__()
        self.config = config
        self.pos_conv_embed = SpidRPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(SpidREncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        hidden_states: torch.Tensor,
        frame_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_before_residual: bool = False,
        output_attentions: bool = False,
    ) -> SpidREncoderOutput:
        """`hidden_states` `(batch, frames, hidden)`; `frame_attention_mask` `(batch, frames)`, True on valid frames."""
        padding_mask = None if frame_attention_mask is None else ~frame_attention_mask.bool()
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states, padding_mask)
        hidden_states = self.dropout(self.layer_norm(hidden_states))
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=frame_attention_mask
        )
        all_hidden = [hidden_states] if output_hidden_states else None
        all_before = [] if output_before_residual else None
        all_attn = [] if output_attentions else None
        for layer in self.layers:
            if self.training and self.config.layerdrop > 0 and torch.rand([]) < self.config.layerdrop:
                # a skipped layer changes nothing, so it contributes a zero update
                before_residual, attn_weights = torch.zeros_like(hidden_states), None
            else:
                hidden_states, before_residual, attn_weights = layer(hidden_states, attention_mask)
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            if all_before is not None:
                all_before.append(before_residual)
            if all_attn is not None:
                all_attn.append(attn_weights)
        return SpidREncoderOutput(
            last_hidden_state=hidden_states,
            hidden_states=None if all_hidden is None else tuple(all_hidden),
            before_residual_states=None if all_before is None else tuple(all_before),
            attentions=None if all_attn is None else tuple(all_attn),
        )


class SpidRPreTrainedModel(PreTrainedModel):
    config: SpidRConfig
    config_class = SpidRConfig
    base_model_prefix = "spidr"
    main_input_name = "input_values"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = ["SpidREncoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        """SpidR's initialisation (SPIDR.md, 'Initialisation of a fresh model').

        transformers calls this on each module that holds parameters, so the rule is chosen
        from the module's place in the model (its qualified name).
        """
        name = self._module_names().get(id(module), "")
        if isinstance(module, nn.Linear):
            if name.endswith("attention.qkv"):
                init.xavier_uniform_(module.weight, gain=2**-0.5)
            elif name.endswith("attention.out_proj"):
                init.xavier_uniform_(module.weight)
            elif ".layers." in name:  # the feed-forward Linears of every encoder layer
                init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            else:  # feature projection and prediction heads keep PyTorch's default
                _torch_default_init(module)
                return
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv1d):
            if "pos_conv_embed" in name:
                _torch_default_init(module)
            else:
                init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def _module_names(self) -> dict[int, str]:
        return {id(m): name for name, m in self.named_modules()}

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Frames produced by the feature extractor for `input_lengths` samples."""
        return self.config.frame_geometry.num_frames(input_lengths)

    def _get_feature_vector_attention_mask(
        self, num_frames: int, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Sample-level `attention_mask` `(batch, samples)` -> frame-level bool mask `(batch, num_frames)`."""
        frame_lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1).long())
        return torch.arange(num_frames, device=attention_mask.device)[None, :] < frame_lengths[:, None]


def _torch_default_init(module: nn.Linear | nn.Conv1d) -> None:
    """PyTorch's own `reset_parameters` init, through transformers' flag-aware init functions."""
    init.kaiming_uniform_(module.weight, a=5**0.5)
    if module.bias is not None:
        fan_in = module.weight[0].numel()
        bound = fan_in**-0.5 if fan_in > 0 else 0.0
        init.uniform_(module.bias, -bound, bound)


class SpidRModel(SpidRPreTrainedModel):
    """The SpidR encoder: raw 16 kHz waveform -> frame features (50 per second).

    Loading a [`SpidRForPreTraining`] checkpoint with this class (or `AutoModel`) keeps the
    student encoder and silently drops the teacher, heads and codebooks.
    """

    _keys_to_ignore_on_load_unexpected = [
        r"teacher\.",
        r"heads\.",
        r"codebook_",
        r"mask_embedding",
        r"current_step",
    ]

    def __init__(self, config: SpidRConfig):
        super().__init__(config)
        self.feature_extractor = SpidRFeatureEncoder(config)
        self.feature_projection = SpidRFeatureProjection(config)
        self.feat_proj_dropout = nn.Dropout(config.feat_proj_dropout)
        self.encoder = SpidREncoder(config)
        self.post_init()

    def freeze_feature_encoder(self) -> None:
        """Stop training the convolutional feature extractor and the feature projection."""
        for module in (self.feature_extractor, self.feature_projection):
            module.requires_grad_(False)

    def project_features(self, input_values: torch.Tensor) -> torch.Tensor:
        """Waveform `(batch, samples)` -> projected frame features `(batch, frames, hidden)`."""
        if input_values.dim() != 2:
            raise ValueError(
                f"input_values must be (batch, samples), got shape {tuple(input_values.shape)}; "
                "use SpidRFeatureExtractor to prepare raw mono audio."
            )
        return self.feature_projection(self.feature_extractor(input_values))

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SpidRModelOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch, samples)`):
                16 kHz mono audio, each utterance standardised over its valid samples
                ([`SpidRFeatureExtractor`] does it), zero-padded.
            attention_mask (`torch.LongTensor` of shape `(batch, samples)`, *optional*):
                1 on real samples, 0 on padding. Padded frames never influence valid ones.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = (
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        features = self.project_features(input_values)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self._get_feature_vector_attention_mask(features.shape[1], attention_mask)
        encoder_out = self.encoder(
            self.feat_proj_dropout(features),
            frame_mask,
            output_hidden_states=output_hidden_states,
            output_before_residual=output_hidden_states,
            output_attentions=output_attentions,
        )
        output = SpidRModelOutput(
            last_hidden_state=encoder_out.last_hidden_state,
            projected_features=features,
            hidden_states=encoder_out.hidden_states,
            before_residual_states=encoder_out.before_residual_states,
            attentions=encoder_out.attentions,
            frame_attention_mask=frame_mask,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["SpidRModel", "SpidRPreTrainedModel", "SpidRModelOutput", "SpidREncoder", "SpidREncoderOutput"]
