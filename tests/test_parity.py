"""Parity with the reference implementation's outputs (../shared/fixtures/upstream-spidr-tiny)."""

from __future__ import annotations

import pytest
import torch
from spidr_hf.modeling.kernel_dispatch import resolve_backend

from spidr_hf import SpidRForPreTraining, SpidRModel

FEATURE_ATOL = 1e-5
LOSS_ATOL = 1e-4
BACKENDS = ["torch", "triton"]


@pytest.fixture(scope="module")
def encoder(converted_dir) -> SpidRModel:
    return SpidRModel.from_pretrained(converted_dir).eval()


def _pretraining_model(converted_dir, backend: str) -> SpidRForPreTraining:
    if backend == "triton":
        pytest.importorskip("triton")
        try:  # these tensors are on the CPU: Triton runs them only in its interpreter (CUDA: test_gpu.py)
            resolve_backend("triton", torch.device("cpu"))
        except RuntimeError as error:
            pytest.skip(f"Triton cannot run on CPU tensors here: {error}")
    return SpidRForPreTraining.from_pretrained(converted_dir, codebook_backend=backend).eval()


def test_single_utterance_features(encoder, expected):
    with torch.no_grad():
        out = encoder(expected["waveforms"][:1], output_hidden_states=True)
    torch.testing.assert_close(
        out.projected_features[0], expected["single.features"], atol=FEATURE_ATOL, rtol=0
    )
    for layer in range(1, encoder.config.num_hidden_layers + 1):
        torch.testing.assert_close(
            out.before_residual_states[layer - 1][0],
            expected[f"single.layer{layer}.before_residual"],
            atol=FEATURE_ATOL,
            rtol=0,
        )
        torch.testing.assert_close(
            out.hidden_states[layer][0],
            expected[f"single.layer{layer}.after_residual"],
            atol=FEATURE_ATOL,
            rtol=0,
        )
    torch.testing.assert_close(
        out.last_hidden_state[0], expected["single.last_hidden_state"], atol=FEATURE_ATOL, rtol=0
    )


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_padded_batch_features(converted_dir, expected, attn_implementation):
    model = SpidRModel.from_pretrained(converted_dir, attn_implementation=attn_implementation).eval()
    waves, lengths = expected["waveforms"], expected["sample_lengths"]
    attention_mask = (torch.arange(waves.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        out = model(waves, attention_mask=attention_mask, output_hidden_states=True)
    frames = expected["frame_lengths"]
    assert out.frame_attention_mask.sum(-1).tolist() == frames.tolist()
    for b in range(2):
        for layer in range(1, model.config.num_hidden_layers + 1):
            torch.testing.assert_close(
                out.before_residual_states[layer - 1][b, : frames[b]],
                expected[f"batch.layer{layer}.before_residual.{b}"],
                atol=FEATURE_ATOL,
                rtol=0,
            )


@pytest.mark.parametrize("backend", BACKENDS)
def test_pretraining_losses_and_labels(converted_dir, expected, backend):
    model = _pretraining_model(converted_dir, backend)
    with torch.no_grad():
        out = model(expected["pretrain.waveforms"], mask_time_indices=expected["pretrain.mask"])
    torch.testing.assert_close(out.frame_losses, expected["pretrain.frame_losses"], atol=LOSS_ATOL, rtol=0)
    torch.testing.assert_close(out.loss, expected["pretrain.frame_losses"].mean(), atol=LOSS_ATOL, rtol=0)
    torch.testing.assert_close(out.target_perplexity, expected["pretrain.target_ppl"], atol=LOSS_ATOL, rtol=0)
    torch.testing.assert_close(
        out.prediction_perplexity, expected["pretrain.pred_ppl"], atol=LOSS_ATOL, rtol=0
    )
    for i in range(model.config.num_codebooks):
        assert torch.equal(out.teacher_labels[i], expected[f"pretrain.teacher_labels{i + 1}"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_forward_updates_codebooks(converted_dir, expected, backend):
    model = _pretraining_model(converted_dir, backend).train()
    before = model.codebook_sums.clone()
    with torch.no_grad():
        model(expected["pretrain.waveforms"], mask_time_indices=expected["pretrain.mask"])
    assert not torch.equal(before, model.codebook_sums)
    for i in range(model.config.num_codebooks):
        torch.testing.assert_close(
            model.codebook_sums[i], expected[f"pretrain.updated_codebook{i + 1}"], atol=FEATURE_ATOL, rtol=0
        )
        torch.testing.assert_close(
            model.codebook_counts[i], expected[f"pretrain.updated_counts{i + 1}"], atol=FEATURE_ATOL, rtol=0
        )


def test_eval_forward_leaves_codebooks_alone(converted_dir, expected):
    model = _pretraining_model(converted_dir, "torch")
    before = model.codebook_sums.clone()
    with torch.no_grad():
        model(expected["pretrain.waveforms"], mask_time_indices=expected["pretrain.mask"])
    assert torch.equal(before, model.codebook_sums)


def test_predict_codebooks(converted_dir, expected):
    model = _pretraining_model(converted_dir, "torch")
    probs = model.predict_codebooks(expected["waveforms"][:1])
    assert sorted(probs) == model.config.codebook_layers
    for layer, p in probs.items():
        torch.testing.assert_close(p[0], expected[f"single.codebook_probs{layer}"], atol=FEATURE_ATOL, rtol=0)


def test_predict_units_is_the_argmax_of_the_reference_heads(converted_dir, expected):
    model = _pretraining_model(converted_dir, "torch")
    for layer in model.config.codebook_layers:
        units = model.predict_units(expected["waveforms"][:1], layer=layer)
        assert torch.equal(units[0], expected[f"single.codebook_probs{layer}"].argmax(-1))
