"""SpidR pretraining model: student, EMA teacher, online codebooks and prediction heads."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .codebook_assign import codebook_assign
from .codebook_head_loss import codebook_head_loss
from .configuration_spidr import SpidRConfig
from .modeling_spidr import SpidREncoder, SpidRModel, SpidRPreTrainedModel

_INSTANCE_NORM_EPS = 1e-5

PADDING_UNIT = -1
"""The unit of padded frames in `(batch, frames)` unit tensors."""


@dataclass
class SpidRForPreTrainingOutput(ModelOutput):
    """Outputs of [`SpidRForPreTraining`].

    Args:
        loss (`torch.FloatTensor`, scalar): mean of `frame_losses` over the masked frames.
        frame_losses (`torch.FloatTensor` of shape `(num_masked,)`): per masked frame (row-major
            order of `mask_time_indices`), the mean over codebooks of the heads' cross-entropy
            against the teacher's codeword labels.
        target_perplexity (`torch.FloatTensor`, scalar): `2^H` of the batch-averaged one-hot
            targets, averaged over codebooks (collapse shows as a value near 1).
        prediction_perplexity (`torch.FloatTensor`, scalar): the same for the heads' batch-averaged
            predicted distributions.
        teacher_labels (`torch.LongTensor` of shape `(num_codebooks, num_masked)`): nearest
            codeword of each masked teacher frame, per codebook.
        num_masked (`torch.LongTensor`, scalar): masked frames in this batch (on this rank).
        hidden_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`): the
            student's, as [`SpidRModelOutput.hidden_states`] (its input has the masked frames replaced).
        before_residual_states (`tuple(torch.FloatTensor)`, returned with `output_hidden_states=True`):
            the student's, as [`SpidRModelOutput.before_residual_states`].
        attentions (`tuple(torch.FloatTensor)`, returned with `output_attentions=True`): the student's
            attention probabilities per layer, `(batch, heads, frames, frames)`.
    """

    loss: torch.FloatTensor | None = None
    frame_losses: torch.FloatTensor | None = None
    target_perplexity: torch.FloatTensor | None = None
    prediction_perplexity: torch.FloatTensor | None = None
    teacher_labels: torch.LongTensor | None = None
    num_masked: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    before_residual_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class SpidRForPreTraining(SpidRPreTrainedModel):
    """SpidR (or DinoSR) masked self-distillation with an EMA teacher and online codebooks.

    Submodules: `spidr` (the student [`SpidRModel`], whose feature extractor and projection the
    teacher shares), `teacher` (an [`SpidREncoder`] updated only by [`ema_step`]),
    `mask_embedding`, `heads` (one Linear per codebook). Buffers `codebook_sums`
    `(num_codebooks, codebook_size, hidden_size)` and `codebook_counts`
    `(num_codebooks, codebook_size)` hold the codebooks (codeword means are sums / counts; they start
    from counts of one and sums drawn with `config.codebook_init_seed`); `current_step` counts the
    teacher's EMA steps.
    """

    def __init__(self, config: SpidRConfig):
        super().__init__(config)
        self.spidr = SpidRModel(config)
        self.teacher = SpidREncoder(config)
        self.teacher.requires_grad_(False)
        if config.head_input == "before_residual":
            # SpidR heads read layer outputs before the last LayerNorm, which so never gets a gradient
            # (frozen as in the reference; otherwise DDP would wait for its gradient)
            self.spidr.encoder.layers[-1].final_layer_norm.requires_grad_(False)
        self.mask_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.heads = nn.ModuleList(
            nn.Linear(config.hidden_size, config.codebook_size) for _ in range(config.num_codebooks)
        )
        # buffers hold their final start values from here on: a model built with weight init skipped, or on
        # the meta device then init_weights(), holds the same as one built normally (transformers' contract)
        self.register_buffer("codebook_sums", _initial_codebooks(config).to(torch.get_default_device()))
        self.register_buffer("codebook_counts", torch.ones(config.num_codebooks, config.codebook_size))
        self.register_buffer("current_step", torch.zeros((), dtype=torch.long))
        # With gradient accumulation, codebook statistics wait for the optimizer step (see apply_codebook_update).
        self.defer_codebook_update = False
        self._pending_codebook_stats: torch.Tensor | None = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            init.uniform_(self.mask_embedding, 0.0, 1.0)
            init.copy_(self.codebook_sums, _initial_codebooks(self.config))
            init.ones_(self.codebook_counts)
            init.zeros_(self.current_step)  # from_pretrained of an encoder checkpoint would leave it uninitialised
            # the teacher starts with the student's positional convolutions (and the EMA keeps copying them)
            for teacher_p, student_p in zip(
                self.teacher.pos_conv_embed.parameters(), self.spidr.encoder.pos_conv_embed.parameters(), strict=True
            ):
                init.copy_(teacher_p, student_p)

    def train(self, mode: bool = True) -> SpidRForPreTraining:
        super().train(mode)
        self.teacher.eval()  # the teacher gives targets: never dropout or layer drop
        return self

    @property
    def codewords(self) -> torch.Tensor:
        """Codeword means `(num_codebooks, codebook_size, hidden_size)`."""
        return self.codebook_sums / self.codebook_counts[..., None]

    # ----------------------------------------------------------------------------- forward
    def forward(
        self,
        input_values: torch.Tensor,
        mask_time_indices: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        num_masked: int | None = None,
        **kwargs,
    ) -> SpidRForPreTrainingOutput | tuple:
        r"""
        Args:
            input_values (`torch.FloatTensor` of shape `(batch, samples)`): standardised 16 kHz audio.
            mask_time_indices (`torch.BoolTensor` of shape `(batch, frames)`): frames whose student
                input is replaced by the mask embedding and that are scored. Required.
            attention_mask (`torch.LongTensor` of shape `(batch, samples)`, *optional*): 1 on real samples.
            num_masked (`int`, *optional*): the number of scored frames (True in `mask_time_indices` on
                real frames) when the caller knows it on the host, as the trainer does: the masked
                frames are then gathered without waiting for the device, with a shape `torch.compile`
                sees. A wrong count fails a device-side assertion.
            output_hidden_states, output_attentions (`bool`, *optional*): also return the student's
                hidden states (and before-residual outputs), or its attention probabilities.

        In training mode, the codebooks are updated (after assignment) from this batch's masked
        teacher frames, summed over data-parallel ranks.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if mask_time_indices is None:
            raise ValueError(
                "SpidRForPreTraining needs `mask_time_indices` (batch, frames): the frames to mask and predict. "
                "Build them with spidr_hf.training.compute_span_mask or use SpidRModel for features."
            )
        features = self.spidr.project_features(input_values)
        frame_mask = None
        if attention_mask is not None:
            frame_mask = self._get_feature_vector_attention_mask(features.shape[1], attention_mask)
        if mask_time_indices.shape != features.shape[:2]:
            raise ValueError(
                f"mask_time_indices has shape {tuple(mask_time_indices.shape)} but the audio gives "
                f"{tuple(features.shape[:2])} (batch, frames)."
            )
        mask = mask_time_indices.bool()
        if frame_mask is not None:
            mask = mask & frame_mask
        index = masked_frame_index(mask, num_masked)

        student_input = self.spidr.feat_proj_dropout(features)
        student_input = torch.where(mask[..., None], self.mask_embedding.to(student_input.dtype), student_input)
        student = self.spidr.encoder(
            student_input,
            frame_mask,
            output_hidden_states=output_hidden_states,
            output_before_residual=True,
            output_attentions=output_attentions,
        )
        targets = self._teacher_targets(features.detach(), frame_mask, index)

        assignment = codebook_assign(targets, self.codewords.float(), backend=self.config.codebook_backend)
        if self.training:
            self._record_codebook_stats(assignment.counts, assignment.sums)

        if self.config.head_input == "before_residual":
            head_inputs = [student.before_residual_states[layer - 1] for layer in self.config.codebook_layers]
        else:
            head_inputs = [student.last_hidden_state] * self.config.num_codebooks
        logits = torch.stack([head(gather_frames(x, index)) for head, x in zip(self.heads, head_inputs, strict=True)])
        losses, prob_sums = codebook_head_loss(logits, assignment.labels, backend=self.config.codebook_backend)
        frame_losses = losses.mean(0)
        num_masked = frame_losses.shape[0]
        # each codebook's counts sum to the masked frames: a tensor denominator, which torch.compile
        # traces alike on every torch version (a symbolic max of the count breaks the graph on 2.11)
        frames = assignment.counts.sum(-1, keepdim=True).clamp_min(1)
        output = SpidRForPreTrainingOutput(
            loss=frame_losses.mean(),
            frame_losses=frame_losses,
            target_perplexity=_perplexity(assignment.counts / frames),
            prediction_perplexity=_perplexity(prob_sums / frames),
            teacher_labels=assignment.labels,
            # made on the device: a host-to-device copy would wait for the device
            num_masked=torch.full((), num_masked, dtype=torch.long, device=frame_losses.device),
            hidden_states=student.hidden_states,
            before_residual_states=student.before_residual_states if output_hidden_states else None,
            attentions=student.attentions,
        )
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def _teacher_targets(
        self, features: torch.Tensor, frame_mask: torch.Tensor | None, index: torch.Tensor
    ) -> torch.Tensor:
        """Instance-normalised before-residual outputs of the teacher's codebook layers at masked frames: (C, N, D) fp32.

        `index` holds the masked frames' positions in the flattened (batch x frames) grid (`masked_frame_index`).
        """
        teacher = self.teacher(features, frame_mask, output_before_residual=True)
        targets = []
        for layer in self.config.codebook_layers:
            normed = masked_instance_norm(teacher.before_residual_states[layer - 1].float(), frame_mask)
            targets.append(gather_frames(normed, index))
        return torch.stack(targets)

    @torch.no_grad()
    def _record_codebook_stats(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        stats = torch.cat([counts[..., None], sums], dim=-1)  # (C, K, 1 + D): one tensor, one collective
        if self._pending_codebook_stats is None:
            self._pending_codebook_stats = stats
        else:
            self._pending_codebook_stats += stats
        if not self.defer_codebook_update:
            self.apply_codebook_update()

    @torch.no_grad()
    def apply_codebook_update(self) -> None:
        """Apply the codebook EMA from the statistics gathered since the last call.

        A training-mode forward calls it itself, unless `defer_codebook_update` is set: then the
        trainer calls it once per optimizer step, so that micro-batches of one step all see the
        same codebooks (gradient accumulation equals one large batch). The statistics are
        summed over data-parallel ranks first, in one collective.
        """
        stats = self.discard_codebook_update()
        if stats is None:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        self._update_codebooks(stats[..., 0], stats[..., 1:])

    def discard_codebook_update(self) -> torch.Tensor | None:
        """Drop (and return) the statistics gathered since the last update, e.g. when the optimizer skipped its step."""
        stats, self._pending_codebook_stats = self._pending_codebook_stats, None
        return stats

    @torch.no_grad()
    def _update_codebooks(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """EMA of the codebook counts and sums, for codewords assigned at least one frame."""
        decay = self.config.codebook_decay
        used = counts > 0
        new_counts = decay * self.codebook_counts + (1 - decay) * counts
        new_sums = decay * self.codebook_sums + (1 - decay) * sums
        self.codebook_counts.copy_(torch.where(used, new_counts, self.codebook_counts))
        self.codebook_sums.copy_(torch.where(used[..., None], new_sums, self.codebook_sums))

    # ------------------------------------------------------------------------- teacher EMA
    def ema_decay(self, step: int | None = None) -> float:
        """Teacher EMA decay after optimizer step `step` (1 = the first; default: `current_step`)."""
        step = int(self.current_step) if step is None else step
        cfg = self.config
        if cfg.ema_schedule == "spidr":
            remaining = (1 - cfg.ema_start_decay) * math.exp(-step / cfg.ema_timescale)
            return 1.0 if remaining <= cfg.ema_threshold else 1.0 - remaining
        if step >= cfg.ema_frozen_step:
            return 1.0
        if step >= cfg.ema_final_step:
            return cfg.ema_final_decay
        return cfg.ema_start_decay + (cfg.ema_final_decay - cfg.ema_start_decay) * step / cfg.ema_final_step

    @torch.no_grad()
    def ema_step(self, step: int | None = None) -> float:
        """Move the teacher towards the student after an optimizer step; returns the decay used.

        While `0 < d < 1`, teacher parameters follow `t <- t + (1 - d)(s - t)`, except the positional
        convolution, which is copied from the student; at `d = 0` or `d = 1` the teacher is left
        untouched, as in the reference. Call it on the unwrapped model, once per optimizer step.
        `step` is the step just taken (1 after the first), when the caller counts steps on the host
        (as the trainer does); by default it is read from `current_step`, which waits for the device.
        """
        self.current_step += 1  # the decay of step s is d(s), s = 1 after the first optimizer step
        decay = self.ema_decay(step)
        if not 0.0 < decay < 1.0:
            return decay
        student = self.spidr.encoder
        teacher_params, student_params = [], []
        for (name, t), s in zip(self.teacher.named_parameters(), student.parameters(), strict=True):
            if not name.startswith("pos_conv_embed."):
                teacher_params.append(t)
                student_params.append(s.detach().to(t.dtype))
        torch._foreach_lerp_(teacher_params, student_params, 1.0 - decay)
        for t, s in zip(self.teacher.pos_conv_embed.parameters(), student.pos_conv_embed.parameters(), strict=True):
            t.copy_(s)
        return decay

    def freeze_feature_encoder(self) -> None:
        """Stop training the shared feature extractor and projection (the recipe does it at `freeze_feature_encoder_step`)."""
        self.spidr.freeze_feature_encoder()

    # ---------------------------------------------------------------------------- units
    @torch.no_grad()
    def predict_codebooks(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """The student heads' probabilities `(batch, frames, codebook_size)` per codebook layer (1-based), unmasked input."""
        out = self.spidr(input_values, attention_mask=attention_mask, output_hidden_states=True)
        if self.config.head_input == "before_residual":
            inputs = {layer: out.before_residual_states[layer - 1] for layer in self.config.codebook_layers}
        else:
            inputs = {layer: out.last_hidden_state for layer in self.config.codebook_layers}
        return {
            layer: F.softmax(head(inputs[layer]).float(), dim=-1)
            for layer, head in zip(self.config.codebook_layers, self.heads, strict=True)
        }


    @torch.no_grad()
    def head_units(self, features: torch.Tensor, layer: int) -> torch.Tensor:
        """Argmax of the head of codebook layer `layer` on the features it reads (`config.head_input_of(layer)`).

        `features` have any leading shape and `hidden_size` last; the result has the leading shape.
        """
        head = self.heads[self.config.codebook_index(layer)]
        return head(features.to(head.weight.dtype)).argmax(-1)

    @torch.no_grad()
    def predict_units(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None, *, layer: int
    ) -> torch.Tensor:
        """Discrete units `(batch, frames)` int64: the argmax of the head of 1-based `layer`, -1 on padded frames.

        Layer 6 gives the paper's best SpidR units. See `spidr_hf.units` for codeword and k-means units.
        """
        feature_layer, representation = self.config.head_input_of(layer)  # fails before running the model
        before_residual = representation == "before_residual"
        out = self.spidr(input_values, attention_mask=attention_mask, output_hidden_states=before_residual)
        features = out.before_residual_states[feature_layer - 1] if before_residual else out.last_hidden_state
        frame_mask = out.frame_attention_mask
        if frame_mask is None:
            frame_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        units = torch.full(frame_mask.shape, PADDING_UNIT, dtype=torch.int64, device=frame_mask.device)
        units[frame_mask] = self.head_units(features[frame_mask], layer).to(units.device)
        return units


def masked_frame_index(mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
    """Positions of the True frames of a `(batch, frames)` mask in the flattened grid, in row-major order.

    `x.flatten(0, 1)[index]` equals `x[mask]`. Computed once per forward for every layer's gather.
    Without `num_masked` the count is read from the device (a synchronisation, and a data-dependent
    shape under torch.compile); with it, `nonzero_static` needs neither, and an asynchronous
    assertion checks the count.
    """
    flat = mask.reshape(-1)
    if num_masked is None:
        return flat.nonzero().squeeze(-1)
    if not isinstance(num_masked, int | torch.SymInt) or isinstance(num_masked, bool) or num_masked < 0:
        raise TypeError(f"num_masked must be a non-negative int (the number of masked frames), got {num_masked!r}")
    torch._assert_async(flat.sum() == num_masked, "num_masked differs from the number of masked frames")
    return torch.nonzero_static(flat, size=num_masked).squeeze(-1)


def gather_frames(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The frames of `(batch, frames, ...)` `x` at flattened positions `index`: `(len(index), ...)`."""
    return x.flatten(0, 1).index_select(0, index)


def masked_instance_norm(x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Normalise (batch, frames, channels) to zero mean, unit variance over valid frames, per utterance and channel."""
    if frame_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=_INSTANCE_NORM_EPS).transpose(1, 2)
    weight = frame_mask[..., None].to(x.dtype)
    count = weight.sum(1, keepdim=True).clamp_min(1)
    mean = (x * weight).sum(1, keepdim=True) / count
    var = ((x - mean) ** 2 * weight).sum(1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + _INSTANCE_NORM_EPS)


def _perplexity(distributions: torch.Tensor) -> torch.Tensor:
    """Mean over rows of 2^H(p) for (num_codebooks, codebook_size) probability rows."""
    entropy = -torch.special.xlogy(distributions, distributions).sum(-1) / math.log(2)
    return torch.exp2(entropy).mean()


def _initial_codebooks(config: SpidRConfig) -> torch.Tensor:
    """Codebook sums at start, on the CPU: (D x K) normals standardised along K per row, transposed to (K x D).

    Drawn from a generator seeded with `config.codebook_init_seed`, not the global one: the same
    values for every construction of the model, whatever ran before.
    """
    generator = torch.Generator().manual_seed(config.codebook_init_seed)
    shape = (config.num_codebooks, config.hidden_size, config.codebook_size)
    sums = torch.randn(shape, generator=generator, device="cpu")
    sums = (sums - sums.mean(-1, keepdim=True)) / sums.std(-1, keepdim=True)
    return sums.transpose(1, 2).contiguous()


__all__ = ["PADDING_UNIT", "SpidRForPreTraining", "SpidRForPreTrainingOutput", "masked_instance_norm"]
