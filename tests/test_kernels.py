"""Tests of spidr_hf.kernels: Triton kernels against the torch references, references against naive math.

Triton tests run on CUDA when there is a GPU, else in Triton's interpreter on CPU tensors. Triton fixes
interpreter mode when it is first imported, and importing spidr_hf imports it (through torch._dynamo),
so this module sets TRITON_INTERPRET=1 before importing spidr_hf. In a full pytest run another test
module usually imports spidr_hf first; then the Triton tests skip here and
``test_triton_cases_in_subprocess`` reruns them in one child pytest where this module comes first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from spidr_hf.modeling import kernel_dispatch as _dispatch  # noqa: E402
from spidr_hf.modeling.codebook_assign import (  # noqa: E402
    ASSIGN_OP,
    ASSIGN_TUNING,
    AssignConfig,
    reference_codebook_assign,
    triton_codebook_assign,
)
from spidr_hf.modeling.codebook_head_loss import HEAD_LOSS_BACKWARD_OP, HEAD_LOSS_OP  # noqa: E402

from spidr_hf.kernels import (  # noqa: E402
    CodebookAssignment,
    codebook_assign,
    codebook_head_loss,
)

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
# Triton < 3.7's interpreter fails with NumPy >= 2.4 (a clear error, tested below): then only CUDA runs it
INTERPRETER_PROBLEM = _dispatch.installed_interpreter_incompatibility()
TRITON_HERE = _dispatch.triton_available() and (
    HAS_CUDA or (_dispatch.triton_interpreting() and not INTERPRETER_PROBLEM)
)
CHILD_ENV = "SPIDR_KERNEL_TESTS_CHILD"
needs_triton = pytest.mark.skipif(
    not TRITON_HERE,
    reason=INTERPRETER_PROBLEM
    or "Triton cannot run in this process; test_triton_cases_in_subprocess runs it",
)
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

# (C, N, K, D): non-powers of two, K and D not multiples of the 16-wide interpreter blocks, C = 1 and 8.
SHAPES = [(1, 70, 40, 45), (8, 33, 17, 48), (3, 1, 5, 7), (2, 64, 32, 16)]


def _random_inputs(shape: tuple[int, int, int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames and codewords (codewords drawn near frames so that assignments are varied)."""
    num_books, num_frames, num_codewords, dim = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_books, num_frames, dim, generator=gen)
    codewords = torch.randn(num_books, num_codewords, dim, generator=gen) * 0.8
    return x.to(DEVICE), codewords.to(DEVICE)


def _assert_same_assignment(got: CodebookAssignment, want: CodebookAssignment) -> None:
    """Labels and hard counts exactly; sums and probabilities to fp32 rounding."""
    torch.testing.assert_close(got.labels, want.labels, rtol=0, atol=0)
    assert got.counts.dtype == got.sums.dtype == torch.float32
    torch.testing.assert_close(got.counts, want.counts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sums, want.sums, rtol=1e-5, atol=1e-5)
    if want.probs is None:
        assert got.probs is None
    else:
        # logits are -d / T with squared distances d ~ 100 summed in another order: fp32 rounding (6e-8 per
        # term) leaves up to ~1e-5 / T in a logit, so a probability's relative error reaches ~2e-5 at T = 0.5
        torch.testing.assert_close(got.probs, want.probs, rtol=5e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# codebook_assign: Triton against the torch reference


@needs_triton
@pytest.mark.parametrize("temperature", [0.0, 0.5])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_assign_matches_reference(shape, temperature):
    x, codewords = _random_inputs(shape)
    got = codebook_assign(x, codewords, temperature=temperature, precision="ieee", backend="triton")
    want = codebook_assign(x, codewords, temperature=temperature, backend="torch")
    assert isinstance(got, CodebookAssignment) and isinstance(want, CodebookAssignment)
    _assert_same_assignment(got, want)
    if temperature > 0:
        torch.testing.assert_close(got.probs.sum(-1), torch.ones_like(got.labels, dtype=torch.float32))
    else:
        assert got.counts.sum().item() == shape[0] * shape[1]


@needs_triton
@pytest.mark.parametrize(("temperature", "statistics"), [(0.0, "atomic"), (0.0, "onehot"), (2.0, "atomic")])
def test_triton_assign_multi_tile_config(temperature, statistics):
    """Explicit 16-wide blocks: several N, K and D tiles with ragged last tiles, on GPU too."""
    x, codewords = _random_inputs((2, 50, 37, 40), seed=1)
    config = AssignConfig(16, 16, 16, 4, 2, 16, 16, 16, 4)
    got = triton_codebook_assign(x, codewords, temperature, "ieee", config, statistics=statistics)
    _assert_same_assignment(got, reference_codebook_assign(x, codewords, temperature))


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_onehot_statistics_match_reference(shape):
    """Hard statistics from the labels by a one-hot matmul (no atomics): counts exact, sums to fp32 rounding."""
    x, codewords = _random_inputs(shape, seed=6)
    got = codebook_assign(x, codewords, precision="ieee", backend="triton", statistics="onehot")
    want = reference_codebook_assign(x, codewords)
    _assert_same_assignment(got, want)
    torch.testing.assert_close(got.counts, want.counts, rtol=0, atol=0)


@needs_triton
@pytest.mark.parametrize(("temperature", "statistics"), [(0.0, "atomic"), (0.0, "onehot"), (0.5, "atomic")])
def test_triton_split_precision_matches_reference(temperature, statistics):
    """"bf16x3" (16-bit halves on tensor cores; fp16 halves in the interpreter) keeps labels and statistics."""
    x, codewords = _random_inputs((3, 45, 37, 40), seed=7)
    got = codebook_assign(
        x, codewords, temperature=temperature, precision="bf16x3", backend="triton", statistics=statistics
    )
    want = reference_codebook_assign(x, codewords, temperature)
    torch.testing.assert_close(got.labels, want.labels, rtol=0, atol=0)
    torch.testing.assert_close(got.counts, want.counts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sums, want.sums, rtol=1e-5, atol=1e-5)
    if temperature:
        torch.testing.assert_close(got.probs, want.probs, rtol=1e-4, atol=1e-6)


@needs_triton
@pytest.mark.parametrize("statistics", ["atomic", "onehot"])
def test_triton_half_targets_with_split_precision(statistics):
    """Half-precision frames (the teacher's autocast dtype) are read as they are: labels as fp32 math on the same values."""
    x, codewords = _random_inputs((2, 40, 20, 24), seed=8)
    half = x.bfloat16() if HAS_CUDA else x.half()  # the interpreter mishandles bf16 arithmetic, not fp16
    got = codebook_assign(half, codewords, precision="bf16x3", backend="triton", statistics=statistics)
    _assert_same_assignment(got, reference_codebook_assign(half.float(), codewords))


def _tied_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Small-integer data (exact in fp32 and TF32) with codeword 2 duplicated at 7 (same tile) and 30 (next tile)."""
    gen = torch.Generator().manual_seed(3)
    codewords = torch.randint(-3, 4, (2, 40, 24), generator=gen).float()
    codewords[:, 7] = codewords[:, 2]
    codewords[:, 30] = codewords[:, 2]
    x = torch.randint(-3, 4, (2, 30, 24), generator=gen).float()
    x[:, :10] = codewords[:, 2:3]  # exact hits on the triplicated codeword
    x[:, 10:15] = codewords[:, 2:3] + 1.0  # equidistant from the three copies, not necessarily nearest
    return x.to(DEVICE), codewords.to(DEVICE)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_ties_go_to_the_lowest_index(backend):
    x, codewords = _tied_inputs()
    got = codebook_assign(x, codewords, backend=backend)
    assert (got.labels[:, :10] == 2).all()
    assert not ((got.labels == 7) | (got.labels == 30)).any()
    assert (got.counts[:, [7, 30]] == 0).all()
    # Integer data makes every distance exact, so torch's own argmin rule is the reference.
    torch.testing.assert_close(
        got.labels, torch.cdist(x.double(), codewords.double()).argmin(-1), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("backend", "statistics"),
    [("torch", "auto"), pytest.param("triton", "atomic", marks=needs_triton), pytest.param("triton", "onehot", marks=needs_triton)],
)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_empty_codewords_have_zero_statistics(backend, statistics, temperature):
    x, codewords = _random_inputs((3, 45, 20, 12), seed=2)
    codewords[:, [0, 13, 19]] = 1e3  # far from every frame: never nearest, probability underflows to 0
    got = codebook_assign(x, codewords, temperature=temperature, backend=backend, statistics=statistics)
    assert (got.counts[:, [0, 13, 19]] == 0).all()
    assert (got.sums[:, [0, 13, 19]] == 0).all()
    assert got.counts.sum().item() == pytest.approx(3 * 45, rel=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_no_frames(backend):
    x, codewords = _random_inputs((2, 0, 5, 8))
    got = codebook_assign(x, codewords, temperature=1.0, backend=backend)
    assert got.labels.shape == (2, 0) and got.probs.shape == (2, 0, 5)
    assert (got.counts == 0).all() and (got.sums == 0).all()


@needs_triton
def test_triton_assign_strided_and_half_inputs():
    """Codebook-major views of frame-major data, a strided feature dim, and bf16 inputs."""
    x, codewords = _random_inputs((3, 29, 21, 20), seed=4)
    frame_major = x.transpose(0, 1).contiguous()  # (N, C, D) as a model produces it
    strided = torch.stack([codewords, codewords], dim=-1)[..., 0]  # last stride 2
    for xs, cs in [(frame_major.transpose(0, 1), strided), (x.bfloat16(), codewords.bfloat16())]:
        got = codebook_assign(xs, cs, temperature=0.3, precision="ieee", backend="triton")
        _assert_same_assignment(got, codebook_assign(xs, cs, temperature=0.3, backend="torch"))


# ---------------------------------------------------------------------------------------------------------
# codebook_assign: the reference against the naive cdist / one-hot formulation


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_reference_assign_matches_naive_formulation(temperature):
    x, codewords = _random_inputs((4, 50, 23, 10), seed=5)
    x, codewords = x.cpu(), codewords.cpu()
    got = reference_codebook_assign(x, codewords, temperature, chunk=16)  # several chunks
    distances = torch.cdist(x.double(), codewords.double())
    torch.testing.assert_close(got.labels, distances.argmin(-1), rtol=0, atol=0)
    if temperature > 0:
        weights = torch.softmax(-distances.square() / temperature, dim=-1)
        torch.testing.assert_close(got.probs, weights.float(), rtol=1e-4, atol=1e-6)
    else:
        weights = F.one_hot(got.labels, codewords.shape[1]).double()
    torch.testing.assert_close(got.counts, weights.sum(1).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.sums, (weights.transpose(1, 2) @ x.double()).float(), rtol=1e-4, atol=1e-5)


def test_auto_backend_on_cpu_is_torch():
    assert _dispatch.resolve_backend("auto", torch.device("cpu")) == "torch"
    x, codewords = _random_inputs((2, 9, 4, 3))
    torch.testing.assert_close(
        codebook_assign(x.cpu(), codewords.cpu()).sums,
        reference_codebook_assign(x.cpu(), codewords.cpu()).sums,
    )


# ---------------------------------------------------------------------------------------------------------
# codebook_head_loss


def _head_inputs(shape: tuple[int, int, int], dtype: torch.dtype, seed: int = 0):
    num_books, num_frames, num_codewords = shape
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(num_books, num_frames, num_codewords, generator=gen) * 3).to(DEVICE, dtype)
    labels = torch.randint(0, num_codewords, (num_books, num_frames), generator=gen).to(DEVICE)
    weights = torch.randn(num_books, num_frames, generator=gen).to(DEVICE)
    return logits, labels, weights


def _loss_and_grad(logits, labels, weights, backend):
    leaf = logits.detach().requires_grad_()
    losses, prob_sums = codebook_head_loss(leaf, labels, backend=backend)
    (losses * weights).sum().backward()
    return losses.detach(), prob_sums, leaf.grad


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 70, 40), (8, 33, 17), (3, 5, 1)], ids=lambda s: "x".join(map(str, s)))
def test_triton_head_loss_matches_reference(shape, dtype):
    logits, labels, weights = _head_inputs(shape, dtype)
    got = _loss_and_grad(logits, labels, weights, "triton")
    want = _loss_and_grad(logits, labels, weights, "torch")
    assert got[0].dtype == got[1].dtype == torch.float32 and got[2].dtype == dtype
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], want[2])


@needs_triton
def test_triton_head_loss_strided_logits_and_broadcast_grad():
    """Logits viewed from frame-major storage; ``.sum()`` hands backward a stride-0 gradient."""
    logits, labels, _ = _head_inputs((4, 30, 21), torch.float32, seed=1)
    frame_major = logits.transpose(0, 1).contiguous().transpose(0, 1)
    grads = []
    for backend in ("triton", "torch"):
        leaf = frame_major.detach().requires_grad_()
        losses, _ = codebook_head_loss(leaf, labels, backend=backend)
        losses.sum().backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@needs_triton
def test_triton_head_loss_out_of_range_label_is_nan():
    logits, labels, _ = _head_inputs((2, 6, 5), torch.float32)
    labels[1, 3] = 5
    losses, _ = codebook_head_loss(logits, labels, backend="triton")
    assert losses[1, 3].isnan() and losses.isnan().sum() == 1


def test_reference_head_loss_matches_naive_formulation():
    logits, labels, weights = _head_inputs((3, 40, 11), torch.float32, seed=2)
    logits, labels, weights = logits.cpu(), labels.cpu(), weights.cpu()
    got = _loss_and_grad(logits, labels, weights, "torch")
    leaf = logits.detach().requires_grad_()
    log_probs = leaf.log_softmax(-1)
    losses = -(F.one_hot(labels, 11).float() * log_probs).sum(-1)
    (losses * weights).sum().backward()
    torch.testing.assert_close(got[0], losses.detach())
    torch.testing.assert_close(got[1], log_probs.detach().exp().sum(1))
    torch.testing.assert_close(got[2], leaf.grad)


# ---------------------------------------------------------------------------------------------------------
# The custom operators: registration, fake tensors, autograd, torch.compile
# Their kernels: Triton on CUDA or under the interpreter, the torch formulas on other CPUs.


def test_ops_are_registered_once_under_the_package_namespace():
    assert str(ASSIGN_OP) == "spidr_hf.codebook_assign_v1.default"
    assert str(HEAD_LOSS_OP) == "spidr_hf.codebook_head_loss_v1.default"
    assert str(HEAD_LOSS_BACKWARD_OP) == "spidr_hf.codebook_head_loss_backward_v1.default"

    def broken(*args):
        raise AssertionError("a second registration must not replace the first")

    # What a second import of modeling/ (a saved model's remote code) does: the first op stays.
    again = _dispatch.define_op("codebook_assign", "(Tensor x) -> Tensor", broken, broken)
    assert again is ASSIGN_OP
    x, codewords = _random_inputs((2, 9, 4, 3))
    labels, _, counts, _ = ASSIGN_OP(x, codewords, 0.0, "ieee", "atomic")
    assert labels.shape == (2, 9) and counts.sum() == 18


@pytest.mark.parametrize(("temperature", "statistics"), [(0.0, "atomic"), (0.0, "onehot"), (0.7, "atomic")])
def test_assign_op_passes_opcheck_and_matches_reference(temperature, statistics):
    """Schema, fake tensor and dynamic-shape tracing checks of torch.library.opcheck, and the op's values."""
    x, codewords = _random_inputs((2, 19, 6, 5), seed=9)
    args = (x, codewords, temperature, "ieee", statistics)
    torch.library.opcheck(ASSIGN_OP, args)
    labels, probs, counts, sums = ASSIGN_OP(*args)
    want = reference_codebook_assign(x, codewords, temperature)
    got = CodebookAssignment(labels, probs if temperature else None, counts, sums)
    _assert_same_assignment(got, want)
    assert probs.shape == ((2, 19, 6) if temperature else (2, 0, 6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_head_loss_ops_pass_opcheck_and_match_reference(dtype):
    logits, labels, weights = _head_inputs((3, 11, 7), dtype, seed=3)
    leaf = logits.detach().requires_grad_()
    torch.library.opcheck(HEAD_LOSS_OP, (leaf, labels))
    losses, log_norms, prob_sums = HEAD_LOSS_OP(leaf, labels)
    assert not log_norms.requires_grad and not prob_sums.requires_grad
    (losses * weights).sum().backward()
    torch.library.opcheck(HEAD_LOSS_BACKWARD_OP, (logits, labels, log_norms, weights))
    want = _loss_and_grad(logits, labels, weights, "torch")
    torch.testing.assert_close(losses.detach(), want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prob_sums, want[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(leaf.grad, want[2])


def test_ops_compile_without_graph_breaks():
    """Assignment, head loss and its backward inside one fullgraph-compiled function equal eager."""
    from torch._dynamo.utils import counters

    x, codewords = _random_inputs((2, 23, 7, 6), seed=10)
    logits, _, weights = _head_inputs((2, 23, 7), torch.float32, seed=4)

    def step(x, codewords, logits):
        labels, _, counts, sums = ASSIGN_OP(x, codewords, 0.0, "ieee", "atomic")
        losses, _, prob_sums = HEAD_LOSS_OP(logits, labels)
        return (losses * weights).sum(), labels, counts, sums, prob_sums

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (step, compiled):
        leaf = logits.detach().requires_grad_()
        loss, *outputs = fn(x, codewords, leaf)
        loss.backward()  # through the compiled graph's backward, which calls the backward op
        results.append((*outputs, leaf.grad))
    assert sum(counters["graph_break"].values()) == 0
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want)


def test_tuning_configs_fit_the_codebook_size():
    """On a GPU, triton.autotune tries only codeword tiles as wide as K needs (a narrow K keeps the narrowest)."""
    from spidr_hf.modeling.codebook_assign import _prune_wide_codeword_tiles, _tuning_configs

    configs = _tuning_configs(ASSIGN_TUNING)
    assert len(configs) == len(ASSIGN_TUNING)
    assert _prune_wide_codeword_tiles(configs, {"K": 256}) == configs
    kept = _prune_wide_codeword_tiles(configs, {"K": 100})
    assert kept and all(c.kwargs["BLOCK_K"] <= 128 for c in kept)
    (narrowest,) = _prune_wide_codeword_tiles(configs, {"K": 20})
    assert narrowest.kwargs["BLOCK_K"] == 64


@needs_triton
def test_triton_training_step_compiles_without_graph_breaks():
    """The pretraining step with the Triton backend (its custom ops) under torch.compile(fullgraph=True) equals eager."""
    from compile_checks import compare_compiled_step

    assert compare_compiled_step("triton") == 0


# ---------------------------------------------------------------------------------------------------------
# Input validation and backend selection


@pytest.mark.parametrize(
    ("x_shape", "c_shape", "kwargs", "error", "match"),
    [
        ((2, 5, 4), (2, 3, 4), {"temperature": -1.0}, ValueError, "temperature must be a finite number >= 0"),
        ((2, 5, 4), (2, 3, 4), {"temperature": float("nan")}, ValueError, "temperature"),
        ((2, 5, 4), (2, 3, 4), {"temperature": torch.tensor(1.0)}, TypeError, "Python float"),
        ((2, 5, 4), (3, 3, 4), {}, ValueError, "codebooks"),
        ((2, 5, 4), (2, 3, 6), {}, ValueError, "feature size"),
        ((5, 4), (2, 3, 4), {}, ValueError, r"x must have shape \(C, N, D\)"),
        ((2, 5, 4), (3, 4), {}, ValueError, r"codewords must have shape \(C, K, D\)"),
        ((2, 5, 4), (2, 0, 4), {}, ValueError, "K=0"),
        ((2, 5, 4), (2, 3, 4), {"precision": "fp16"}, ValueError, "precision must be one of"),
        ((2, 5, 4), (2, 3, 4), {"statistics": "sorted"}, ValueError, "statistics must be one of"),
        ((2, 5, 4), (2, 3, 4), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_assign_rejects_bad_inputs(x_shape, c_shape, kwargs, error, match):
    with pytest.raises(error, match=match):
        codebook_assign(torch.randn(x_shape), torch.randn(c_shape), **kwargs)


def test_assign_rejects_integer_tensors():
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        codebook_assign(torch.ones(2, 5, 4, dtype=torch.int64), torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="codewords must be a floating-point tensor"):
        codebook_assign(torch.randn(2, 5, 4), torch.ones(2, 3, 4, dtype=torch.int32))


@pytest.mark.parametrize(
    ("logits", "labels", "error", "match"),
    [
        (
            torch.ones(2, 5, 3, dtype=torch.int64),
            torch.zeros(2, 5, dtype=torch.int64),
            TypeError,
            "logits must be",
        ),
        (torch.randn(2, 5, 3), torch.zeros(2, 5), TypeError, "labels must be an integer"),
        (torch.randn(5, 3), torch.zeros(5, dtype=torch.int64), ValueError, r"shape \(C, N, K\)"),
        (
            torch.randn(2, 5, 3),
            torch.zeros(2, 4, dtype=torch.int64),
            ValueError,
            r"labels must have shape \(C, N\)",
        ),
        (torch.randn(2, 5, 0), torch.zeros(2, 5, dtype=torch.int64), ValueError, "K=0"),
    ],
)
def test_head_loss_rejects_bad_inputs(logits, labels, error, match):
    with pytest.raises(error, match=match):
        codebook_head_loss(logits, labels)


def test_forced_triton_explains_what_is_missing(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _dispatch.resolve_backend("triton", torch.device("cpu"))
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="pip install triton"):
        _dispatch.resolve_backend("triton", torch.device("cuda"))
    assert _dispatch.resolve_backend("auto", torch.device("cuda")) == "torch"
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    assert _dispatch.resolve_backend("auto", torch.device("cuda")) == "triton"
    # an op whose Triton kernel loses to compiled torch routes "auto" to torch on CUDA too
    assert _dispatch.resolve_backend("auto", torch.device("cuda"), cuda_auto="torch") == "torch"
    assert _dispatch.resolve_backend("auto", torch.device("cpu"), cuda_auto="triton") == "torch"


def test_interpreter_version_clash_gets_a_clear_error(monkeypatch):
    """Triton 3.6's interpreter + NumPy 2.4 failed deep in Triton (seen on the GPU machine's image)."""
    problem = _dispatch.interpreter_incompatibility("3.6.0", "2.4.6")
    assert "Triton 3.6.0" in problem and "NumPy 2.4.6" in problem and "triton>=3.7" in problem
    assert _dispatch.interpreter_incompatibility("3.6.0", "2.3.5") is None
    assert _dispatch.interpreter_incompatibility("3.7.0", "2.4.6") is None
    assert _dispatch.interpreter_incompatibility("3.8.0", "2.5.2") is None
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(_dispatch, "triton_interpreting", lambda: True)
    monkeypatch.setattr(_dispatch, "installed_interpreter_incompatibility", lambda: problem)
    with pytest.raises(RuntimeError, match="cannot run with NumPy"):
        _dispatch.resolve_backend("triton", torch.device("cpu"))
    assert _dispatch.resolve_backend("auto", torch.device("cpu")) == "torch"


def test_package_works_without_triton():
    """With ``import triton`` failing, the package imports, runs the torch path, and says what is missing."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from spidr_hf.kernels import codebook_assign, codebook_head_loss\n"
        "a = codebook_assign(torch.randn(2, 7, 3), torch.randn(2, 4, 3), temperature=0.5)\n"
        "codebook_head_loss(torch.randn(2, 7, 4), a.labels)\n"
        "try:\n"
        "    codebook_assign(torch.randn(2, 7, 3), torch.randn(2, 4, 3), backend='triton')\n"
        "except RuntimeError as error:\n"
        "    assert 'pip install triton' in str(error)\n"
        "else:\n"
        "    raise AssertionError('backend=triton did not fail')\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


# Ahead-of-time compilation for an H100/H200 (sm90) with Triton's bundled ptxas: the interpreter cannot catch
# what only the GPU compiler checks (dot operand types and shapes, shared memory), and CI has no GPU.
AOT_SCRIPT = """
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

assign = importlib.import_module("spidr_hf.modeling.codebook_assign")
frames = {"N": "i32", "K": "i32", "D": "i32", "stride_xc": "i64", "stride_xn": "i64"}
kernels = {
    "assign": (assign._assign_kernel, lambda x, w: {
        "x_ptr": x, "c_ptr": "*fp32", "labels_ptr": "*i64", "counts_ptr": "*fp32", "sums_ptr": "*fp32",
        "probs_ptr": "*fp32", **frames, "stride_cc": "i64", "stride_ck": "i64", "neg_inv_temp": "fp32"}),
    "stats": (assign._stats_kernel, lambda x, w: {
        "x_ptr": x, "weights_ptr": w, "counts_ptr": "*fp32", "sums_ptr": "*fp32", **frames}),
}
cases = [  # kernel, frames dtype, weights dtype, constexprs
    ("assign", "*fp32", None, dict(SOFT=False, ATOMIC_STATS=True, PRECISION="tf32x3")),
    ("assign", "*bf16", None, dict(SOFT=False, ATOMIC_STATS=False, PRECISION="bf16x3")),
    ("assign", "*fp32", None, dict(SOFT=True, ATOMIC_STATS=False, PRECISION="bf16x3")),
    ("stats", "*fp32", "*i64", dict(HARD=True, PRECISION="bf16x3")),
    ("stats", "*fp32", "*fp32", dict(HARD=False, PRECISION="tf32x3")),
]
tuning = {"assign": assign.ASSIGN_TUNING[0], "stats": assign.STATS_TUNING[-1]}
for name, x, w, modes in cases:
    fn, signature = kernels[name]
    n, k, d, warps, stages = tuning[name]
    constexprs = {**modes, "BLOCK_N": n, "BLOCK_K": k, "BLOCK_D": d}
    signature = {**signature(x, w), **{key: "constexpr" for key in constexprs}}
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": warps, "num_stages": stages},
    )
    assert compiled.metadata.shared <= 227 * 1024, (name, modes, compiled.metadata.shared)
    print("compiled", name, modes)
"""


@pytest.mark.slow
@pytest.mark.skipif(not _dispatch.triton_available(), reason="needs the triton package")
def test_kernels_compile_for_a_gpu_without_one():
    """The assignment and statistics kernels in their GPU-only variants compile for sm90 (no GPU needed)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", AOT_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0 and "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("Triton's bundled ptxas is missing here")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("compiled") == 5


# ---------------------------------------------------------------------------------------------------------
# The Triton cases in a child process, when this one imported Triton in compiled mode without a GPU


@pytest.mark.skipif(
    TRITON_HERE
    or not _dispatch.triton_available()
    or bool(INTERPRETER_PROBLEM)
    or os.environ.get(CHILD_ENV) == "1",
    reason="the Triton tests run in this process (or Triton is not installed, or its interpreter cannot run)",
)
def test_triton_cases_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD_ENV: "1"}
    selection = "triton and not subprocess"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection]
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " skipped" not in done.stdout.splitlines()[-1], done.stdout[-2000:]


# ---------------------------------------------------------------------------------------------------------
# GPU only: the labels rule and statistics at the training shape


@gpu
@needs_cuda
def test_gpu_labels_rule_at_training_shape():
    """Labels equal fp32 cdist argmin wherever the two nearest codewords differ by > 1e-4 relative distance."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 9590, 768, device="cuda", generator=gen)
    codewords = x[:, torch.randperm(9590, device="cuda", generator=gen)[:256]] * 0.9
    got = codebook_assign(x, codewords)  # precision "auto"
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        want = torch.cdist(x, codewords).argmin(-1)
        nearest_two = torch.cdist(x.double(), codewords.double()).topk(2, dim=-1, largest=False).values
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    clear = (nearest_two[..., 1] - nearest_two[..., 0]) > 1e-4 * nearest_two[..., 0]
    assert (got.labels == want)[clear].all()
    counts = torch.zeros(8, 256, device="cuda").scatter_add_(1, got.labels, torch.ones_like(x[..., 0]))
    torch.testing.assert_close(got.counts, counts, rtol=0, atol=0)
    sums = torch.zeros(8, 256, 768, device="cuda").scatter_add_(1, got.labels[..., None].expand_as(x), x)
    torch.testing.assert_close(got.sums, sums, rtol=1e-5, atol=1e-4)


@gpu
@needs_cuda
def test_gpu_head_loss_at_training_shape():
    logits, labels, weights = _head_inputs((8, 9590, 256), torch.bfloat16)
    got = _loss_and_grad(logits, labels, weights, "triton")
    want = _loss_and_grad(logits, labels, weights, "torch")
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got[2], want[2])


# ---------------------------------------------------------------------------------------------------------
# The benchmark scripts still run (CPU smoke mode: tiny shapes, Triton interpreter, no torch.compile)


@pytest.mark.slow
@pytest.mark.skipif(not _dispatch.triton_available(), reason="the scripts time the Triton kernels")
@pytest.mark.skipif(
    bool(INTERPRETER_PROBLEM), reason=f"the CPU smoke runs need the interpreter: {INTERPRETER_PROBLEM}"
)
def test_benchmark_scripts_cpu_smoke(tmp_path):
    """Both scripts' main() in one child process (one interpreter start-up instead of two), then the session table."""
    rows = tmp_path / "kernels.rows.json"
    code = (
        "import sys; sys.path.insert(0, 'benchmarks')\n"
        "import bench_codebook, gpu_kernels_check, session_table\n"
        f"assert bench_codebook.main(['--cpu-smoke', '--no-compile', '--rows', {str(rows)!r}]) == 0\n"
        "assert gpu_kernels_check.main(['--cpu-smoke', '--no-compile']) == 0\n"
        f"assert session_table.main([{str(tmp_path)!r}]) == 0\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("assign + statistics") == 3 and "RESULT: PASS" in done.stdout
    table = done.stdout[done.stdout.index("what "):]
    for column in ("eager", "compiled", "default", "peak MiB", "graphs", "breaks", "syncs"):
        assert column in table.splitlines()[0]
    assert "  onehot statistics" in table and "head loss fwd+bwd" in table
