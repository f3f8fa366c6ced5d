"""Downstream heads on the SpidR encoder: CTC (speech recognition) and utterance classification.

They follow the transformers audio family (`HubertForCTC`, `HubertForSequenceClassification`):
the same config fields, outputs, label conventions and freezing methods, so the Auto classes,
`pipeline("automatic-speech-recognition")`, `pipeline("audio-classification")` and the Trainer
recipes written for wav2vec2 work unchanged. Like its siblings, this file imports only torch,
transformers and `modeling/` files: it ships as remote code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput

from .configuration_spidr import SpidRConfig
from .modeling_spidr import SpidRModel, SpidRModelOutput, SpidRPreTrainedModel


def ctc_frames_needed(labels: torch.Tensor) -> torch.Tensor:
    """Frames CTC needs to emit each row of `labels` (`-100` = padding): one per label, plus a blank
    between each pair of equal neighbours."""
    valid = labels >= 0
    repeats = (labels[:, 1:] == labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    return valid.sum(-1) + repeats.sum(-1)


def ctc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    frame_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "sum",
    zero_infinity: bool = False,
) -> torch.Tensor:
    """CTC loss of `logits` `(batch, frames, vocab)` over the first `frame_lengths` frames of each row
    against `labels` `(batch, target_length)` padded with `-100`.

    Raises `ValueError` for a row whose labels need more frames than its audio has, unless
    `zero_infinity` (which then zeroes that row's infinite loss, transformers' behaviour).
    """
    if not zero_infinity:
        needed = ctc_frames_needed(labels)
        too_long = (needed > frame_lengths).nonzero().flatten().tolist()
        if too_long:
            row = too_long[0]
            raise ValueError(
                f"labels of row {row} need {int(needed[row])} CTC frames but its audio has {int(frame_lengths[row])}: "
                "shorten the transcript or drop the utterance (or set ctc_zero_infinity=True to ignore such rows)."
            )
    valid = labels >= 0
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC needs targets on the CPU and int32
        return F.ctc_loss(
            log_probs,
            labels.masked_select(valid),
            frame_lengths,
            valid.sum(-1),
            blank=blank,
            reduction=reduction,
            zero_infinity=zero_infinity,
        )


class _SpidRWithHead(SpidRPreTrainedModel):
    """The encoder plus what both heads share: the weighted layer sum, freezing and loading rules."""

    # a pretraining or converted checkpoint: the encoder loads, teacher/heads/codebooks are dropped
    _keys_to_ignore_on_load_unexpected = SpidRModel._keys_to_ignore_on_load_unexpected

    def __init__(self, config: SpidRConfig):
        super().__init__(config)
        self.spidr = SpidRModel(config)
        if config.use_weighted_layer_sum:
            self.layer_weights = nn.Parameter(torch.ones(self.num_weighted_layers) / self.num_weighted_layers)

    @property
    def num_weighted_layers(self) -> int:
        """States in the weighted sum: the transformer input and every layer's output."""
        return self.config.num_hidden_layers + 1

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self and self.config.use_weighted_layer_sum:  # a parameter of no submodule
            init.constant_(self.layer_weights, 1.0 / self.num_weighted_layers)

    def freeze_feature_encoder(self) -> None:
        """Stop training the convolutional feature extractor and the feature projection."""
        self.spidr.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        """Stop training the whole encoder: only the head (and the layer weights) learn."""
        self.spidr.requires_grad_(False)

    def _encode(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool | None,
        output_attentions: bool | None,
    ) -> tuple[torch.Tensor, SpidRModelOutput]:
        """The frames the head reads `(batch, frames, hidden)` and the encoder's outputs."""
        wanted = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        outputs = self.spidr(
            input_values,
            attention_mask=attention_mask,
            output_hidden_states=wanted or self.config.use_weighted_layer_sum,
            output_attentions=output_attentions,
            return_dict=True,
        )
        if self.config.use_weighted_layer_sum:
            # SUPERB weighs what the upstream returns per layer, the input and each layer's output
            # (s3prl's hidden_states), not the feed-forward output inside a layer (before_residual)
            states = torch.stack(outputs.hidden_states, dim=0)
            weights = F.softmax(self.layer_weights, dim=-1).to(states.dtype)
            frames = (states * weights[:, None, None, None]).sum(0)
        else:
            frames = outputs.last_hidden_state
        if not wanted:
            outputs.hidden_states = outputs.before_residual_states = None
        return frames, outputs


class SpidRForCTC(_SpidRWithHead):
    """SpidR with a linear CTC head over its frames (50 per second), for phone or character recognition.

    The CTC blank is `config.pad_token_id` (the pad token of a `Wav2Vec2CTCTokenizer`); with
    `config.use_weighted_layer_sum` the head reads a learnt softmax-weighted sum of all layers
    (the SUPERB protocol) instead of the last one.
    """

    def __init__(self, config: SpidRConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutput | tuple:
        r"""
        Args:
            input_values, attention_mask: as for [`SpidRModel`].
            labels (`torch.LongTensor` of shape `(batch, target_length)`, *optional*):
                Token ids in `[0, vocab_size)`, padded with `-100`. Each row must fit the CTC
                alignment of its audio (one frame per label, plus one per repeated neighbour).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if labels is not None and labels.numel() and int(labels.max()) >= self.config.vocab_size:
            raise ValueError(
                f"label {int(labels.max())} is outside the vocabulary (vocab_size {self.config.vocab_size}): "
                "the tokenizer's vocabulary and the model's vocab_size must match."
            )
        frames, outputs = self._encode(input_values, attention_mask, output_hidden_states, output_attentions)
        logits = self.lm_head(self.dropout(frames))
        loss = None
        if labels is not None:
            loss = self.ctc_loss(logits, labels, self._frame_lengths(input_values, attention_mask))
        output = CausalLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    def _frame_lengths(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        samples = attention_mask.sum(-1) if attention_mask is not None else torch.full(
            (input_values.shape[0],), input_values.shape[1], device=input_values.device
        )
        return self._get_feat_extract_output_lengths(samples.long())

    def ctc_loss(self, logits: torch.Tensor, labels: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """CTC loss of `logits` `(batch, frames, vocab)` with this config's blank and reduction (see `ctc_loss`)."""
        return ctc_loss(
            logits,
            labels,
            frame_lengths,
            blank=self.config.pad_token_id,
            reduction=self.config.ctc_loss_reduction,
            zero_infinity=self.config.ctc_zero_infinity,
        )


class SpidRForSequenceClassification(_SpidRWithHead):
    """SpidR with an utterance classifier: projection, mean over the valid frames, linear layer.

    `config.num_labels` classes (`id2label` names them); with `config.use_weighted_layer_sum`
    the frames are a learnt weighted sum of all layers (the SUPERB protocol).
    """

    def __init__(self, config: SpidRConfig):
        super().__init__(config)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Args:
            input_values, attention_mask: as for [`SpidRModel`]; padded frames do not enter the mean.
            labels (`torch.LongTensor` of shape `(batch,)`, *optional*): class ids in `[0, num_labels)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        frames, outputs = self._encode(input_values, attention_mask, output_hidden_states, output_attentions)
        projected = self.projector(frames)
        if outputs.frame_attention_mask is None:
            pooled = projected.mean(dim=1)
        else:
            keep = outputs.frame_attention_mask[:, :, None].to(projected.dtype)
            pooled = (projected * keep).sum(1) / keep.sum(1).clamp_min(1)
        logits = self.classifier(pooled)
        loss = None if labels is None else F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = ["SpidRForCTC", "SpidRForSequenceClassification", "ctc_frames_needed", "ctc_loss"]
