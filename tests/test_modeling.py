"""Behaviour of the SpidR model classes on random weights (no reference numbers needed)."""

from __future__ import annotations

import pytest
import torch

from spidr_hf import SpidRConfig, SpidRForPreTraining, SpidRModel


def _audio(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    waves = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=gen)
    mask = (torch.arange(waves.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    return waves, mask


def test_default_config_is_base_spidr():
    config = SpidRConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.pos_conv_kernel == 19
    assert config.inputs_to_logits_ratio == 320 and config.receptive_field == 400
    assert config.codebook_layers == list(range(5, 13))
    with torch.device("meta"):
        encoder = SpidRModel(config)
        pretraining = SpidRForPreTraining(config)
    assert 92e6 < encoder.num_parameters() < 95e6
    assert 180e6 < pretraining.num_parameters() < 186e6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=30, num_attention_heads=4), "divisible"),
        (dict(num_codebooks=20), "num_codebooks"),
        (dict(head_input="middle"), "head_input"),
        (dict(conv_kernel=[10, 3]), "one entry per conv layer"),
        (dict(codebook_backend="cuda"), "codebook_backend"),
        # each of these used to fail inside validation (ZeroDivisionError, TypeError) or much later
        (dict(num_attention_heads=0), "num_attention_heads must be a positive integer, got 0"),
        (dict(num_conv_pos_embedding_layers=0), "num_conv_pos_embedding_layers must be a positive integer"),
        (dict(hidden_size="big"), "hidden_size must be a positive integer, got 'big'"),
        (dict(hidden_size=0), "hidden_size must be a positive integer"),
        (dict(codebook_size=0), "codebook_size must be a positive integer"),
        (dict(codebook_size=-4), "codebook_size must be a positive integer"),
        (dict(intermediate_size=-1), "intermediate_size must be a positive integer"),
        (dict(conv_dim=[], conv_kernel=[], conv_stride=[]), "conv_dim must be a non-empty list"),
        (dict(conv_stride=[0, 2, 2, 2, 2, 2, 2]), "conv_stride must be a non-empty list of positive integers"),
        (dict(conv_kernel=[-1, 3, 3, 3, 3, 2, 2]), "conv_kernel must be a non-empty list of positive integers"),
        (dict(num_conv_pos_embedding_groups=0), "num_conv_pos_embedding_groups must be a positive integer"),
        (dict(num_conv_pos_embedding_groups=5), "divisible by num_conv_pos_embedding_groups"),
        (dict(hidden_act="swishy"), "hidden_act must be one of"),
        (dict(layer_norm_eps=-1), "layer_norm_eps must be a positive number"),
        (dict(hidden_dropout=1.5), "hidden_dropout must be a number between 0 and 1"),
        (dict(codebook_decay=float("nan")), "codebook_decay must be a number between 0 and 1"),
        (dict(qkv_bias="yes"), "qkv_bias must be true or false"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpidRConfig(**kwargs)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_padded_batch_equals_single_utterances(tiny_config, attn_implementation):
    torch.manual_seed(0)
    model = SpidRModel(tiny_config).eval()
    model.set_attn_implementation(attn_implementation)
    lengths = [16000, 9000, 4321]
    waves, mask = _audio(lengths)
    with torch.no_grad():
        batch = model(waves, attention_mask=mask, output_hidden_states=True)
        for b, n in enumerate(lengths):
            single = model(waves[b : b + 1, :n], output_hidden_states=True)
            frames = single.last_hidden_state.shape[1]
            assert batch.frame_attention_mask[b].sum() == frames
            for got, want in zip(batch.before_residual_states, single.before_residual_states, strict=True):
                torch.testing.assert_close(got[b, :frames], want[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                batch.last_hidden_state[b, :frames], single.last_hidden_state[0], atol=1e-5, rtol=0
            )


def test_compiles_without_graph_breaks(tiny_config):
    model = SpidRModel(tiny_config).eval()
    waves, mask = _audio([4800, 4000])
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    with torch.no_grad():
        want = model(waves, attention_mask=mask).last_hidden_state
        got = compiled(waves, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inference(tiny_config, dtype):
    torch.manual_seed(0)
    model = SpidRModel(tiny_config).eval()
    waves, mask = _audio([8000, 5000])
    with torch.no_grad():
        want = model(waves, attention_mask=mask).last_hidden_state
        half = model.to(dtype)
        got = half(waves.to(dtype), attention_mask=mask).last_hidden_state
    assert got.dtype == dtype
    valid = half._get_feature_vector_attention_mask(want.shape[1], mask)
    assert torch.isfinite(got).all()
    # post-LN outputs are O(1): half precision stays within a few percent
    assert (got.float()[valid] - want[valid]).abs().mean() < 0.05


def test_input_must_be_batched_waveforms(tiny_config):
    model = SpidRModel(tiny_config)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        model(torch.randn(3, 1, 4000))


def test_pretraining_needs_a_mask(tiny_config):
    model = SpidRForPreTraining(tiny_config)
    with pytest.raises(ValueError, match="mask_time_indices"):
        model(torch.randn(1, 4000))
    with pytest.raises(ValueError, match="mask_time_indices has shape"):
        model(torch.randn(1, 4000), mask_time_indices=torch.ones(1, 3, dtype=torch.bool))


def test_fresh_pretraining_model_initialisation(tiny_config):
    torch.manual_seed(0)
    model = SpidRForPreTraining(tiny_config)
    student, teacher = model.spidr.encoder, model.teacher
    # positional convolutions and LayerNorms start equal, Linear weights differ
    for s, t in zip(student.pos_conv_embed.parameters(), teacher.pos_conv_embed.parameters(), strict=True):
        assert torch.equal(s, t)
    assert torch.equal(student.layers[0].layer_norm.weight, teacher.layers[0].layer_norm.weight)
    assert not torch.equal(student.layers[0].attention.qkv.weight, teacher.layers[0].attention.qkv.weight)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert ((model.mask_embedding >= 0) & (model.mask_embedding <= 1)).all()
    torch.testing.assert_close(model.codebook_counts, torch.ones_like(model.codebook_counts))
    per_row = model.codebook_sums.transpose(1, 2)  # (C, D, K): standardised along K
    torch.testing.assert_close(per_row.mean(-1), torch.zeros_like(per_row.mean(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_row.std(-1), torch.ones_like(per_row.std(-1)), atol=1e-5, rtol=0)
    ffn = student.layers[0].feed_forward.intermediate_dense
    assert abs(ffn.weight.std().item() - 0.02) < 0.005 and torch.equal(ffn.bias, torch.zeros_like(ffn.bias))


def test_teacher_stays_in_eval_mode(tiny_config):
    model = SpidRForPreTraining(tiny_config).train()
    assert model.spidr.training and not model.teacher.training


def test_pretraining_backward_reaches_student_not_teacher(tiny_config):
    torch.manual_seed(0)
    model = SpidRForPreTraining(tiny_config).train()
    waves, _ = _audio([8000, 8000])
    frames = model._get_feat_extract_output_lengths(8000)
    mask = torch.zeros(2, frames, dtype=torch.bool)
    mask[:, 3:15] = True
    out = model(waves, mask_time_indices=mask)
    assert out.frame_losses.shape == (24,) and out.num_masked == 24
    out.loss.backward()
    assert model.mask_embedding.grad is not None and model.heads[0].weight.grad is not None
    assert model.spidr.feature_extractor.conv_layers[0].conv.weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize("norm", ["layer_norm", "group_norm"])
def test_feature_encoder_equals_conv1d_then_norm(tiny_config, norm):
    """The windowed-matmul convolution equals torch's Conv1d followed by the per-frame (or group) norm."""
    import torch.nn.functional as F

    tiny_config.feat_extract_norm = norm
    tiny_config.conv_bias = True
    torch.manual_seed(0)
    encoder = SpidRModel(tiny_config).feature_extractor.eval()
    waves = torch.randn(2, 5000)
    hidden = waves[:, None]
    for i, layer in enumerate(encoder.conv_layers):
        torch.nn.init.normal_(layer.conv.bias)
        hidden = layer.conv(hidden)
        if norm == "layer_norm":
            hidden = F.layer_norm(hidden.transpose(1, 2), (hidden.shape[1],), layer.layer_norm.weight,
                                  layer.layer_norm.bias, layer.layer_norm.eps).transpose(1, 2)  # fmt: skip
        elif i == 0:
            hidden = layer.layer_norm(hidden)
        hidden = F.gelu(hidden)
    with torch.no_grad():
        torch.testing.assert_close(encoder(waves), hidden.transpose(1, 2).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_cpu_chunked_feature_encoder_equals_one_pass(tiny_config, batch, monkeypatch):
    """Chunks carry their frames' whole receptive field: same frames, same numbers up to rounding."""
    torch.manual_seed(0)
    model = SpidRModel(tiny_config).eval()
    encoder = model.feature_extractor
    calls = []
    one_pass = encoder._encode
    monkeypatch.setattr(encoder, "_encode", lambda x: calls.append(x.shape[1]) or one_pass(x))
    waves = torch.randn(batch, 22_617)  # 70 frames and an odd remainder of samples
    with torch.no_grad():
        encoder.cpu_chunk_samples = None
        whole = encoder(waves)
        assert calls == [22_617]
        whole_model = model(waves).last_hidden_state
        encoder.cpu_chunk_samples = 3_000  # -> 16-frame chunks (the minimum)
        calls.clear()
        chunked = encoder(waves)
        assert calls == [320 * 15 + 400] * 4 + [320 * 5 + 400]  # 4 x 16 frames, then 6
        chunked_model = model(waves).last_hidden_state
    assert chunked.shape == whole.shape == (batch, 70, tiny_config.conv_dim[-1])
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_model, whole_model, atol=1e-5, rtol=1e-5)


def test_cpu_chunk_lengths_recur():
    encoder = SpidRModel(SpidRConfig.tiny()).feature_extractor
    lengths = {frames: encoder._recurring_length(frames) for frames in range(1, 2000)}
    assert all(frames <= padded <= frames * 17 / 16 for frames, padded in lengths.items())
    assert all(padded == frames for frames, padded in lengths.items() if frames < 32)
    assert len(set(lengths.values())) < 16 * 7 + 32  # 16 per doubling above 32 frames
    assert lengths[49] == 50 and lengths[199] == 200 and lengths[1000] == 1024


def test_chunking_and_in_place_activations_stay_out_of_autograd(tiny_config):
    from spidr_hf.modeling.modeling_spidr import activate

    torch.manual_seed(0)
    model = SpidRModel(tiny_config).train()
    model.feature_extractor.cpu_chunk_samples = 3_000
    waves = torch.randn(2, 20_817)
    assert not model.feature_extractor._chunked(waves)  # parameters need gradients
    with torch.no_grad():
        assert model.feature_extractor._chunked(waves)
    model(waves).last_hidden_state.sum().backward()
    assert model.feature_extractor.conv_layers[0].conv.weight.grad is not None

    gelu = model.encoder.layers[0].feed_forward.activation
    x = torch.randn(5, 7, requires_grad=True)
    y = activate(gelu, x * 1)  # autograd records: a new tensor, correct gradients
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(torch.nn.functional.gelu(x).sum(), x)[0])
    with torch.no_grad():
        z = x * 1
        assert activate(gelu, z) is z  # computed in place
        torch.testing.assert_close(z, torch.nn.functional.gelu(x))
