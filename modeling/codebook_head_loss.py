"""Fused cross-entropy of SpidR's C student heads against codebook labels.

``codebook_head_loss(logits (C, N, K), labels (C, N))`` returns per-frame losses
``logsumexp(logits) - logits[label]`` (differentiable w.r.t. logits) and ``prob_sums`` (C, K), the
sum over frames of ``softmax(logits)`` used for the prediction perplexity. Everything is computed
in fp32 whatever the logits' dtype.

Triton path: the forward kernel (grid (N-blocks, C)) streams K tiles with an online log-sum-exp,
gathers the label's logit with one load per frame, saves the log-sum-exp for backward, and then
sweeps K again to add ``softmax`` column sums into ``prob_sums`` with atomics (K per program: a
handful). The backward kernel writes ``(softmax - onehot(label)) * grad`` tile by tile, comparing
the column index with the label instead of building a one-hot. Labels outside [0, K) give a NaN
loss on that frame (the torch path raises instead).

The Triton path is two custom operators, ``spidr_hf::codebook_head_loss_v1`` (forward) and
``spidr_hf::codebook_head_loss_backward_v1``, joined by ``register_autograd``, so that
``torch.compile(fullgraph=True)`` keeps them in the graph; the torch path is plain PyTorch (autograd
gives its gradient, and the compiler sees through it).
"""

from __future__ import annotations

import torch

from .kernel_dispatch import (
    cdiv,
    define_op,
    device_guard,
    next_power_of_2,
    op_runs_triton,
    resolve_backend,
    tl,
    triton,
    triton_interpreting,
    unit_last_stride,
)

# What backend="auto" runs on CUDA tensors: the Triton kernel stays only where it beats compiled torch
# in the same GPU run (benchmarks/gpu_session.sh; the README's Performance section has the numbers).
CUDA_AUTO_BACKEND = "triton"


def codebook_head_loss(
    logits: torch.Tensor, labels: torch.Tensor, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame cross-entropy of each codebook head and the per-codeword sum of predicted probabilities.

    Args:
        logits: (C, N, K) floating head outputs (any float dtype; computed in fp32).
        labels: (C, N) integer targets in [0, K), e.g. ``codebook_assign(...).labels``.
        backend: "auto" (Triton on CUDA tensors when available, else torch), "triton" or "torch".

    Returns:
        frame_losses: (C, N) float32, ``-log_softmax(logits)[label]``, differentiable w.r.t. logits.
        prob_sums: (C, K) float32, ``softmax(logits).sum(1)``, without gradient.
    """
    _validate_inputs(logits, labels)
    if resolve_backend(backend, logits.device, CUDA_AUTO_BACKEND) == "torch":
        return reference_head_loss(logits, labels)
    frame_losses, _, prob_sums = HEAD_LOSS_OP(logits, labels)
    return frame_losses, prob_sums


def _validate_inputs(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Check types, shapes and devices with messages that say how to fix them."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("logits and labels must be torch.Tensors")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}; cast it with .float()")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (int64), got {labels.dtype}; cast it with .long()")
    if logits.dim() != 3:
        raise ValueError(
            f"logits must have shape (C, N, K), got {tuple(logits.shape)}; for one head use logits.unsqueeze(0)"
        )
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape (C, N) = {tuple(logits.shape[:2])} to match logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if logits.shape[2] == 0:
        raise ValueError("logits has K=0 classes (dim 2); at least one is needed")
    if labels.device != logits.device:
        raise ValueError(
            f"logits are on {logits.device} but labels on {labels.device}; move them to one device"
        )


def reference_head_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch :func:`codebook_head_loss` (inputs assumed valid); autograd gives the gradient."""
    log_probs = logits.float().log_softmax(-1)
    frame_losses = -log_probs.gather(-1, labels.long()[..., None]).squeeze(-1)
    prob_sums = log_probs.detach().exp().sum(1)
    return frame_losses, prob_sums


# ------------------------------------------------------------------------------------- the custom operators


def _head_loss_op_impl(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame losses, per-frame log-sum-exp (saved for backward) and probability sums."""
    logits = unit_last_stride(logits)
    labels = labels.long()
    if op_runs_triton(logits):
        return _launch_forward(logits, labels)
    scores = logits.float()
    log_norms = scores.logsumexp(-1)
    frame_losses = log_norms - scores.gather(-1, labels[..., None]).squeeze(-1)
    return frame_losses, log_norms, (scores - log_norms[..., None]).exp().sum(1)


def _head_loss_op_fake(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_books, num_frames, num_classes = logits.shape
    per_frame = logits.new_empty((num_books, num_frames), dtype=torch.float32)
    return per_frame, torch.empty_like(per_frame), logits.new_empty((num_books, num_classes), dtype=torch.float32)


def _head_loss_backward_impl(
    logits: torch.Tensor, labels: torch.Tensor, log_norms: torch.Tensor, grad_losses: torch.Tensor
) -> torch.Tensor:
    """d loss / d logits = (softmax - onehot(label)) * grad, in the logits' dtype."""
    logits = unit_last_stride(logits)
    labels = labels.long()
    if op_runs_triton(logits):
        return _launch_backward(logits, labels, log_norms, grad_losses)
    probs = (logits.float() - log_norms[..., None]).exp()
    probs.scatter_add_(-1, labels[..., None], torch.full_like(probs[..., :1], -1.0))
    return (probs * grad_losses[..., None]).to(logits.dtype)


def _head_loss_backward_fake(
    logits: torch.Tensor, labels: torch.Tensor, log_norms: torch.Tensor, grad_losses: torch.Tensor
) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _head_loss_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    logits, labels = inputs
    _, log_norms, prob_sums = output
    ctx.save_for_backward(logits, labels, log_norms)
    ctx.mark_non_differentiable(log_norms, prob_sums)


def _head_loss_backward(ctx, grad_losses: torch.Tensor, _grad_log_norms, _grad_prob_sums) -> tuple:
    logits, labels, log_norms = ctx.saved_tensors
    return HEAD_LOSS_BACKWARD_OP(logits, labels, log_norms, grad_losses), None


# spidr_hf::codebook_head_loss_backward_v1(logits, labels, log_norms, grad_losses) -> grad_logits
HEAD_LOSS_BACKWARD_OP = define_op(
    "codebook_head_loss_backward",
    "(Tensor logits, Tensor labels, Tensor log_norms, Tensor grad_losses) -> Tensor",
    _head_loss_backward_impl,
    _head_loss_backward_fake,
)
# spidr_hf::codebook_head_loss_v1(logits, labels) -> (frame_losses, log_norms, prob_sums), differentiable in logits
HEAD_LOSS_OP = define_op(
    "codebook_head_loss",
    "(Tensor logits, Tensor labels) -> (Tensor, Tensor, Tensor)",
    _head_loss_op_impl,
    _head_loss_op_fake,
    backward=_head_loss_backward,
    setup_context=_head_loss_setup_context,
)


def _block_sizes(num_classes: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps): small blocks in the interpreter so tests cross several K tiles."""
    if triton_interpreting():
        return 16, 16, 1
    block_k = min(256, max(16, next_power_of_2(num_classes)))
    return 32, block_k, 4


def _launch_forward(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run the forward kernel: frame losses, per-frame log-sum-exp, probability sums."""
    num_books, num_frames, num_classes = logits.shape
    device = logits.device
    frame_losses = torch.empty(num_books, num_frames, dtype=torch.float32, device=device)
    log_norms = torch.empty(num_books, num_frames, dtype=torch.float32, device=device)
    prob_sums = torch.zeros(num_books, num_classes, dtype=torch.float32, device=device)
    if num_frames == 0:
        return frame_losses, log_norms, prob_sums
    block_n, block_k, num_warps = _block_sizes(num_classes)
    with device_guard(logits):
        _head_loss_fwd_kernel[(cdiv(num_frames, block_n), num_books)](
            logits, labels, frame_losses, log_norms, prob_sums,
            num_frames, num_classes,
            logits.stride(0), logits.stride(1), labels.stride(0), labels.stride(1),
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
        )  # fmt: skip
    return frame_losses, log_norms, prob_sums


def _launch_backward(
    logits: torch.Tensor, labels: torch.Tensor, log_norms: torch.Tensor, grad_losses: torch.Tensor
) -> torch.Tensor:
    """Run the backward kernel: d loss / d logits in the logits' dtype."""
    num_books, num_frames, num_classes = logits.shape
    grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if num_frames == 0:
        return grad_logits
    block_n, block_k, num_warps = _block_sizes(num_classes)
    with device_guard(logits):
        _head_loss_bwd_kernel[(cdiv(num_frames, block_n), num_books)](
            logits, labels, log_norms, grad_losses, grad_logits,
            num_frames, num_classes,
            logits.stride(0), logits.stride(1), labels.stride(0), labels.stride(1),
            grad_losses.stride(0), grad_losses.stride(1),
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
        )  # fmt: skip
    return grad_logits


if triton is not None:  # the kernels exist where Triton does; the reference runs everywhere

    @triton.jit
    def _head_loss_fwd_kernel(
        logits_ptr, labels_ptr, losses_ptr, log_norms_ptr, prob_sums_ptr,
        N, K,
        stride_zc, stride_zn, stride_lc, stride_ln,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """One program: BLOCK_N frames of one head; online log-sum-exp over K tiles, then softmax column sums."""
        pid_n = tl.program_id(0)
        book = tl.program_id(1).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        # Padding rows read the last frame so every value stays finite; their results are never stored.
        rows = tl.minimum(offs_n, N - 1).to(tl.int64)
        z_rows = logits_ptr + book * stride_zc + rows[:, None] * stride_zn

        run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        run_sum = tl.zeros((BLOCK_N,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            z = tl.load(z_rows + offs_k[None, :], mask=(offs_k < K)[None, :], other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(run_max, tl.max(z, axis=1))
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
            run_max = new_max
        log_norm = run_max + tl.log(run_sum)

        labels = tl.load(labels_ptr + book * stride_lc + rows * stride_ln)
        in_range = (labels >= 0) & (labels < K)
        z_label = tl.load(z_rows + labels[:, None], mask=in_range[:, None], other=float("nan"))
        tl.store(losses_ptr + book * N + rows, log_norm - tl.sum(z_label.to(tl.float32), axis=1), mask=mask_n)
        tl.store(log_norms_ptr + book * N + rows, log_norm, mask=mask_n)

        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            z = tl.load(z_rows + offs_k[None, :], mask=mask_k[None, :], other=float("-inf")).to(tl.float32)
            probs = tl.where(mask_n[:, None], tl.exp(z - log_norm[:, None]), 0.0)
            tl.atomic_add(prob_sums_ptr + book * K + offs_k, tl.sum(probs, axis=0), mask=mask_k, sem="relaxed")


    @triton.jit
    def _head_loss_bwd_kernel(
        logits_ptr, labels_ptr, log_norms_ptr, grad_losses_ptr, grad_logits_ptr,
        N, K,
        stride_zc, stride_zn, stride_lc, stride_ln, stride_gc, stride_gn,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """One program: BLOCK_N frames of one head; grad = (softmax - onehot(label)) * grad_loss, tile by tile."""
        pid_n = tl.program_id(0)
        book = tl.program_id(1).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rows = offs_n.to(tl.int64)
        labels = tl.load(labels_ptr + book * stride_lc + rows * stride_ln, mask=mask_n, other=-1)
        log_norm = tl.load(log_norms_ptr + book * N + rows, mask=mask_n, other=0.0)
        grad_loss = tl.load(grad_losses_ptr + book * stride_gc + rows * stride_gn, mask=mask_n, other=0.0)
        z_rows = logits_ptr + book * stride_zc + rows[:, None] * stride_zn
        g_rows = grad_logits_ptr + (book * N + rows[:, None]) * K
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask = mask_n[:, None] & (offs_k < K)[None, :]
            z = tl.load(z_rows + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
            # Compare column indices with the label instead of reading a one-hot matrix.
            is_label = (offs_k[None, :] == labels[:, None]).to(tl.float32)
            grad = (tl.exp(z - log_norm[:, None]) - is_label) * grad_loss.to(tl.float32)[:, None]
            tl.store(g_rows + offs_k[None, :], grad.to(grad_logits_ptr.dtype.element_ty), mask=mask)
