"""The model on a CUDA device: reference parity (fp32, both codebook backends), bf16, padding, compile,
the compiled pretraining step through the Triton custom operators (no graph break, no host sync).

Skipped without a GPU (CI has none); ``benchmarks/gpu_session.sh`` runs them on a lent H100/H200.
fp32 runs with TF32 off, so the tolerances only cover a different summation order than the
reference's CPU run: 1e-4 on features and losses (10x the CPU tests'), teacher labels exact.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from spidr_hf import SpidRConfig, SpidRForPreTraining, SpidRModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ATOL = 1e-4


@contextlib.contextmanager
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_features_match_the_reference_on_cuda(converted_dir, expected):
    model = SpidRModel.from_pretrained(converted_dir).cuda().eval()
    waves, lengths = expected["waveforms"].cuda(), expected["sample_lengths"].cuda()
    attention_mask = (torch.arange(waves.shape[1], device="cuda")[None] < lengths[:, None]).long()
    with torch.no_grad(), no_tf32():
        single = model(waves[:1], output_hidden_states=True)
        batch = model(waves, attention_mask=attention_mask, output_hidden_states=True)
    torch.testing.assert_close(
        single.last_hidden_state[0].cpu(), expected["single.last_hidden_state"], atol=ATOL, rtol=0
    )
    frames = expected["frame_lengths"]
    for layer in range(1, model.config.num_hidden_layers + 1):
        torch.testing.assert_close(
            single.before_residual_states[layer - 1][0].cpu(),
            expected[f"single.layer{layer}.before_residual"],
            atol=ATOL,
            rtol=0,
        )
        for b in range(2):
            torch.testing.assert_close(
                batch.before_residual_states[layer - 1][b, : frames[b]].cpu(),
                expected[f"batch.layer{layer}.before_residual.{b}"],
                atol=ATOL,
                rtol=0,
            )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_pretraining_forward_matches_the_reference_on_cuda(converted_dir, expected, backend):
    model = SpidRForPreTraining.from_pretrained(converted_dir, codebook_backend=backend).cuda().train()
    with torch.no_grad(), no_tf32():
        out = model(expected["pretrain.waveforms"].cuda(), mask_time_indices=expected["pretrain.mask"].cuda())
    torch.testing.assert_close(out.frame_losses.cpu(), expected["pretrain.frame_losses"], atol=ATOL, rtol=0)
    torch.testing.assert_close(
        out.target_perplexity.cpu(), expected["pretrain.target_ppl"], atol=ATOL, rtol=0
    )
    for i in range(model.config.num_codebooks):
        assert torch.equal(out.teacher_labels[i].cpu(), expected[f"pretrain.teacher_labels{i + 1}"])
        torch.testing.assert_close(
            model.codebook_sums[i].cpu(), expected[f"pretrain.updated_codebook{i + 1}"], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            model.codebook_counts[i].cpu(), expected[f"pretrain.updated_counts{i + 1}"], atol=ATOL, rtol=0
        )


def _base_model(**kwargs) -> SpidRModel:
    torch.manual_seed(0)
    return SpidRModel(SpidRConfig(**kwargs)).cuda().eval()


def _wave(batch: int, seconds: float) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(batch, int(seconds * 16000), device="cuda", generator=gen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inference_follows_fp32(dtype):
    """Base size, 4 s: the half-precision model's last layer within 5 % relative error of fp32."""
    model, wave = _base_model(), _wave(2, 4.0)
    with torch.no_grad():
        want = model(wave).last_hidden_state
        got = model.to(dtype)(wave.to(dtype)).last_hidden_state.float()
    assert got.isfinite().all()
    assert float((got - want).norm() / want.norm()) < 0.05


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_padded_batch_equals_single_utterances_on_cuda(attn_implementation):
    model = _base_model(attn_implementation=attn_implementation, num_hidden_layers=4, num_codebooks=2)
    wave = _wave(2, 3.0)
    lengths = [48_000, 31_234]
    attention_mask = (
        torch.arange(48_000, device="cuda")[None] < torch.tensor(lengths, device="cuda")[:, None]
    ).long()
    with torch.no_grad(), no_tf32():
        batch = model(wave, attention_mask=attention_mask)
        frames = batch.frame_attention_mask.sum(-1).tolist()
        for b, length in enumerate(lengths):
            alone = model(wave[b : b + 1, :length]).last_hidden_state[0]
            assert alone.shape[0] == frames[b]
            torch.testing.assert_close(batch.last_hidden_state[b, : frames[b]], alone, atol=1e-4, rtol=0)


def test_compiled_model_on_cuda_equals_eager():
    model = _base_model(num_hidden_layers=2, num_codebooks=2)
    wave = _wave(2, 2.0)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad(), no_tf32():
        want = model(wave).last_hidden_state
        got = compiled(wave).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_compiled_pretraining_step_with_triton_kernels_on_cuda():
    """Inductor traces the whole step through the Triton custom ops: eager's numbers, one graph per mask count
    change at most, no graph break, and after warm-up no host synchronisation (sync debug mode "error")."""
    from spidr_hf.training import compute_span_mask
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    config = SpidRConfig(
        conv_dim=[128] * 7, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
        num_conv_pos_embedding_groups=16, num_codebooks=2, codebook_backend="triton",
        hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
    )  # fmt: skip
    eager = SpidRForPreTraining(config).cuda().train()
    eager.defer_codebook_update = True
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(twin, fullgraph=True)
    wave = _wave(2, 2.0)
    frames = config.frame_geometry.num_frames(wave.shape[1])
    masks = [compute_span_mask((2, frames), generator=torch.Generator().manual_seed(seed)) for seed in range(2)]
    for mask in masks:
        count = int(mask.sum())
        with no_tf32():
            want = eager(wave, mask_time_indices=mask.cuda(), num_masked=count)
            got = compiled(wave, mask_time_indices=mask.cuda(), num_masked=count)
        assert (got.teacher_labels == want.teacher_labels).float().mean() > 0.99
        torch.testing.assert_close(got.loss, want.loss, atol=1e-3, rtol=1e-3)
        got.loss.backward()
        want.loss.backward()
        eager.apply_codebook_update()
        twin.apply_codebook_update()
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] <= 2
    mask, count = masks[0].cuda(), int(masks[0].sum())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        compiled(wave, mask_time_indices=mask, num_masked=count).frame_losses.sum().backward()
        twin.apply_codebook_update()
        twin.ema_step(3)
    finally:
        torch.cuda.set_sync_debug_mode("default")
