"""Nearest-codeword assignment with codebook statistics, for SpidR's online clustering.

For each of C codebooks, frames ``x[c]`` (N, D) are assigned to the nearest of K codewords
``codewords[c]`` (K, D) by squared L2 distance, and the per-codeword statistics that the EMA update
needs (counts and sums of the assigned frames) are accumulated. With ``temperature > 0`` the
assignment is also soft: ``probs = softmax(-||x - c||^2 / temperature)`` over codewords, and the
statistics are probability-weighted.

Distances are ranked through ``score = ||c||^2 - 2 x.c``: ``||x||^2`` is the same for every codeword
of a frame, so dropping it changes neither the argmin nor the softmax, and it avoids adding a large
term that would cost precision.

Two implementations share one entry point, :func:`codebook_assign`:

* a plain-PyTorch reference, chunked over frames so memory stays bounded, which runs anywhere and
  which ``torch.compile`` traces like any PyTorch code (in one chunk);
* Triton kernels behind the custom operator ``spidr_hf::codebook_assign_v1`` (``ASSIGN_OP``: a fake
  implementation gives ``torch.compile`` its output shapes, so a compiled step keeps it in its graph).
  Hard assignment is ONE launch for all codebooks: the grid is (N-blocks, C), N-blocks on the fast
  axis so that programs running together share one codebook's codewords in L2; each program streams
  K tiles, each an accumulation of ``tl.dot`` over D tiles, and keeps a running (min, argmin) per
  frame. The statistics then come one of two ways (``statistics``):

  - ``"atomic"`` (the default, ``DEFAULT_STATISTICS``): the same program adds its frames with relaxed
    ``tl.atomic_add`` (one per frame for counts, one per frame element for sums); it rereads each
    frame block once (from L2), and fp32 summation order, hence the sums' last bits, vary from run
    to run;
  - ``"onehot"``: the kernel writes labels only, then ``_stats_kernel`` computes
    ``sums = onehot(labels)^T x`` as a deterministic blocked matmul (the one-hot made in registers,
    never in memory; x in three 16-bit pieces, so every product is exact and only the fp32
    summation rounds): another C x N x K x D of tensor-core work instead of N x D atomics.

  Soft assignment uses two launches: the assignment kernel also runs an online softmax (running max
  and sum over K tiles), keeps the scaled scores in the ``probs`` output between its two sweeps
  (that N x K buffer is written anyway; no other exists) and normalises them in place in a second
  sweep over its own rows; then ``_stats_kernel`` computes ``counts = sum_n probs`` and
  ``sums = probs^T x``, because probability-weighted sums by atomics would cost K x D atomics per
  frame block.

On a GPU, ``triton.autotune`` picks both kernels' block shapes, warps and stages once per (K, D,
mode, precision, dtypes) from ``ASSIGN_TUNING`` / ``STATS_TUNING``; an explicit
:class:`AssignConfig` or Triton's interpreter bypasses it. No one-hot matrix is materialised by any
path; the soft one writes only its ``probs`` output.

``precision`` picks how ``tl.dot`` multiplies fp32 operands on CUDA: ``"ieee"`` (exact fp32 FMA,
slowest), ``"tf32x3"`` (each operand split into two TF32 halves, three tensor-core products: error
~2^-22 relative to |x||c|, close to fp32), ``"bf16x3"`` (the same split into bf16 halves, by hand:
about 2^-16 relative, on tensor cores twice as fast as TF32) or ``"tf32"`` (10-bit mantissa: error
~5e-4 |x||c|, which can swap codewords whose distances differ by 1e-4 relative). ``"auto"`` is
``"tf32x3"`` on GPUs with TF32 (compute capability >= 8), else ``"ieee"``; it is the cheapest
setting expected to meet the labels rule (labels equal fp32 ``torch.cdist(x, c).argmin(-1)`` on
frames whose two nearest codewords differ by more than 1e-4 relative distance), as argued from the
error bounds; ``benchmarks/gpu_kernels_check.py`` checks the rule for every precision (its results
are in the README's Performance table), and "bf16x3" becomes "auto" only if it passes there.
Frames may be bf16 or fp16 (the teacher's autocast dtype): they are read as they are and computed
in fp32. Triton's interpreter ignores ``input_precision`` and runs "bf16x3" with fp16 halves.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

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

PRECISIONS: tuple[str, ...] = ("auto", "ieee", "tf32x3", "tf32", "bf16x3")
STATISTICS: tuple[str, ...] = ("auto", "atomic", "onehot")
# What "auto" statistics mean. Atomics stay the default until a GPU run shows the one-hot matmul faster
# at the training shape (benchmarks/gpu_session.sh times both in one run).
DEFAULT_STATISTICS = "atomic"
# What backend="auto" runs on CUDA tensors: the Triton kernel stays only where it beats compiled torch
# in the same GPU run (benchmarks/gpu_session.sh; the README's Performance section has the numbers).
CUDA_AUTO_BACKEND = "triton"
# Frames per chunk in the torch reference: bounds its (C, chunk, K) score buffer.
REFERENCE_CHUNK = 4096


class CodebookAssignment(NamedTuple):
    """Result of :func:`codebook_assign`.

    labels: (C, N) int64, index of the nearest codeword (lowest index on exact ties).
    probs: (C, N, K) float32 soft assignment when ``temperature > 0``, else None.
    counts: (C, K) float32, frames assigned per codeword (total probability when soft).
    sums: (C, K, D) float32, sum of the frames assigned per codeword (probability-weighted when soft).
    """

    labels: torch.Tensor
    probs: torch.Tensor | None
    counts: torch.Tensor
    sums: torch.Tensor


@dataclass(frozen=True)
class AssignConfig:
    """Triton block sizes: assignment kernel (``block_*``) and statistics kernel (``stats_*``)."""

    block_n: int = 128
    block_k: int = 128
    block_d: int = 32
    num_warps: int = 8
    num_stages: int = 3
    stats_block_n: int = 64
    stats_block_k: int = 64
    stats_block_d: int = 64
    stats_num_warps: int = 4


# Small blocks for Triton's interpreter: it runs programs one by one, and small blocks make tests
# cross several K and D tiles on tiny shapes.
INTERPRETER_CONFIG = AssignConfig(16, 16, 16, 1, 1, 16, 16, 16, 1)

# What triton.autotune tries on a GPU, per (K, D, mode, precision, input dtype); the first of each
# list was the untuned default. (block_n, block_k, block_d, num_warps, num_stages)
ASSIGN_TUNING: tuple[tuple[int, int, int, int, int], ...] = (
    (128, 128, 32, 8, 3),
    (128, 128, 32, 4, 3),
    (64, 128, 32, 4, 3),
    (128, 64, 32, 4, 3),
    (128, 256, 32, 8, 2),
    (64, 256, 32, 8, 3),
    (128, 128, 64, 8, 2),
    (256, 128, 32, 8, 2),
    (64, 64, 64, 4, 3),
)
# Statistics kernel: (block_n, block_k, block_d, num_warps, num_stages); block_n is the reduction over frames.
STATS_TUNING: tuple[tuple[int, int, int, int, int], ...] = (
    (64, 64, 64, 4, 3),
    (32, 64, 128, 4, 3),
    (64, 128, 64, 8, 3),
    (64, 64, 128, 8, 3),
    (128, 64, 64, 8, 2),
    (32, 128, 128, 8, 2),
    (64, 256, 64, 8, 2),
)


def codebook_assign(
    x: torch.Tensor,
    codewords: torch.Tensor,
    temperature: float = 0.0,
    precision: str = "auto",
    backend: str = "auto",
    statistics: str = "auto",
) -> CodebookAssignment:
    """Assign frames to their nearest codeword and accumulate per-codeword statistics.

    Args:
        x: (C, N, D) floating frames, one set per codebook. Computed in fp32.
        codewords: (C, K, D) floating codeword means.
        temperature: 0 for hard assignment only; > 0 also returns
            ``probs = softmax(-||x - c||^2 / temperature)`` and weights the statistics by it.
        precision: ``tl.dot`` input precision of the Triton path: "auto", "ieee", "tf32x3", "tf32" or
            "bf16x3" (see the module docstring). The torch path ignores it and follows torch's matmul
            settings (``torch.backends.cuda.matmul.allow_tf32``).
        backend: "auto" (Triton on CUDA tensors when available, else torch), "triton" or "torch".
        statistics: how the Triton path sums hard statistics: "atomic" (in the assignment kernel),
            "onehot" (a second, deterministic kernel) or "auto" (``DEFAULT_STATISTICS``).

    Returns:
        A :class:`CodebookAssignment`. No gradient flows through this function.
    """
    temperature = _validate_inputs(x, codewords, temperature, precision, statistics)
    if resolve_backend(backend, x.device, CUDA_AUTO_BACKEND) == "torch":
        return reference_codebook_assign(x, codewords, temperature)
    labels, probs, counts, sums = ASSIGN_OP(
        x, codewords, temperature, resolve_precision(precision, x.device), resolve_statistics(statistics)
    )
    return CodebookAssignment(labels, probs if temperature > 0 else None, counts, sums)


def _validate_inputs(
    x: torch.Tensor, codewords: torch.Tensor, temperature: float, precision: str, statistics: str = "auto"
) -> float:
    """Check shapes, dtypes, devices and options; return the temperature as a float."""
    for name, tensor in (("x", x), ("codewords", codewords)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got {tensor.dtype}; cast it with .float()"
            )
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape (C, N, D), got {tuple(x.shape)}; for a single codebook use x.unsqueeze(0)"
        )
    if codewords.dim() != 3:
        raise ValueError(
            f"codewords must have shape (C, K, D), got {tuple(codewords.shape)}; "
            "for a single codebook use codewords.unsqueeze(0)"
        )
    if x.shape[0] != codewords.shape[0]:
        raise ValueError(
            f"x has {x.shape[0]} codebooks (dim 0) but codewords has {codewords.shape[0]}; "
            "pass one codeword set per codebook, shapes (C, N, D) and (C, K, D)"
        )
    if x.shape[2] != codewords.shape[2]:
        raise ValueError(
            f"x has feature size {x.shape[2]} but codewords has {codewords.shape[2]} (dim 2); they must match"
        )
    if codewords.shape[1] == 0:
        raise ValueError("codewords has K=0 codewords (dim 1); at least one is needed")
    if x.device != codewords.device:
        raise ValueError(f"x is on {x.device} but codewords on {codewords.device}; move them to one device")
    if not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a Python float, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = hard assignment), got {temperature}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
    return temperature


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map "auto" to the cheapest ``tl.dot`` input precision expected to meet the labels rule."""
    if precision != "auto":
        return precision
    return "tf32x3" if _has_tf32_cores(device.type, device.index or 0) else "ieee"


@torch.compiler.assume_constant_result  # a fact of the machine: torch.compile need not trace the query
def _has_tf32_cores(device_type: str, index: int) -> bool:
    """TF32 tensor cores exist on NVIDIA GPUs from Ampere (sm80) on; elsewhere only exact fp32 is available."""
    if device_type != "cuda" or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(index)[0] >= 8


def resolve_statistics(statistics: str) -> str:
    """Map "auto" to ``DEFAULT_STATISTICS``."""
    return DEFAULT_STATISTICS if statistics == "auto" else statistics


@torch.no_grad()
def reference_codebook_assign(
    x: torch.Tensor, codewords: torch.Tensor, temperature: float = 0.0, chunk: int = REFERENCE_CHUNK
) -> CodebookAssignment:
    """Plain-PyTorch :func:`codebook_assign` (inputs assumed valid), chunked over frames.

    Under ``torch.compile`` it runs in one chunk: the number of frames may be symbolic there (a loop
    over it cannot be traced), and the compiler plans the memory itself.
    """
    num_books, num_frames, dim = x.shape
    num_codewords = codewords.shape[1]
    device = x.device
    codewords = codewords.float()
    codewords_t = codewords.transpose(1, 2)
    squared_norms = codewords.square().sum(-1)  # (C, K)
    counts = torch.zeros(num_books, num_codewords, dtype=torch.float32, device=device)
    sums = torch.zeros(num_books, num_codewords, dim, dtype=torch.float32, device=device)
    if torch.compiler.is_compiling():
        labels, probs = _reference_chunk(x.float(), codewords_t, squared_norms, temperature, counts, sums)
        return CodebookAssignment(labels, probs, counts, sums)
    labels = torch.empty(num_books, num_frames, dtype=torch.int64, device=device)
    probs = None
    if temperature > 0:
        probs = torch.empty(num_books, num_frames, num_codewords, dtype=torch.float32, device=device)
    for start in range(0, num_frames, chunk):
        frames = x[:, start : start + chunk].float()
        chunk_labels, chunk_probs = _reference_chunk(frames, codewords_t, squared_norms, temperature, counts, sums)
        labels[:, start : start + chunk] = chunk_labels
        if probs is not None:
            probs[:, start : start + chunk] = chunk_probs
    return CodebookAssignment(labels, probs, counts, sums)


def _reference_chunk(
    frames: torch.Tensor,
    codewords_t: torch.Tensor,
    squared_norms: torch.Tensor,
    temperature: float,
    counts: torch.Tensor,
    sums: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Labels (and probabilities) of fp32 ``frames``; their statistics are added to ``counts`` and ``sums``."""
    # ||c||^2 - 2 x.c: the squared distance up to ||x||^2, which is constant per frame.
    scores = torch.baddbmm(squared_norms[:, None, :], frames, codewords_t, alpha=-2.0)
    labels = scores.argmin(-1)
    if temperature == 0:
        counts.scatter_add_(1, labels, torch.ones_like(frames[..., 0]))
        sums.scatter_add_(1, labels[..., None].expand_as(frames), frames)
        return labels, None
    probs = torch.softmax(scores * (-1.0 / temperature), dim=-1)
    counts += probs.sum(1)
    sums.baddbmm_(probs.transpose(1, 2), frames)
    return labels, probs


# ------------------------------------------------------------------------------------- the custom operator
def _assign_op_impl(
    x: torch.Tensor, codewords: torch.Tensor, temperature: float, precision: str, statistics: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's kernel: Triton on CUDA (and on CPU under the interpreter), the reference on other CPUs."""
    if op_runs_triton(x):
        result = triton_codebook_assign(x, codewords, temperature, precision, statistics=statistics)
    else:
        result = reference_codebook_assign(x, codewords, temperature)
    probs = result.probs if result.probs is not None else _no_probs(x, codewords)
    return result.labels, probs, result.counts, result.sums


def _assign_op_fake(
    x: torch.Tensor, codewords: torch.Tensor, temperature: float, precision: str, statistics: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output shapes and dtypes for torch.compile: probs is (C, 0, K) when hard (an op cannot return None)."""
    num_books, num_frames, dim = x.shape
    num_codewords = codewords.shape[1]
    labels = x.new_empty((num_books, num_frames), dtype=torch.int64)
    probs = x.new_empty((num_books, num_frames, num_codewords), dtype=torch.float32)
    if temperature == 0:
        probs = _no_probs(x, codewords)
    counts = x.new_empty((num_books, num_codewords), dtype=torch.float32)
    sums = x.new_empty((num_books, num_codewords, dim), dtype=torch.float32)
    return labels, probs, counts, sums


def _no_probs(x: torch.Tensor, codewords: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], 0, codewords.shape[1]), dtype=torch.float32)


# spidr_hf::codebook_assign_v1(x, codewords, temperature, precision, statistics) -> (labels, probs, counts, sums)
ASSIGN_OP = define_op(
    "codebook_assign",
    "(Tensor x, Tensor codewords, float temperature, str precision, str statistics) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _assign_op_impl,
    _assign_op_fake,
)


# ------------------------------------------------------------------------------------------ Triton launches
@torch.no_grad()
def triton_codebook_assign(
    x: torch.Tensor,
    codewords: torch.Tensor,
    temperature: float,
    precision: str,
    config: AssignConfig | None = None,
    statistics: str = DEFAULT_STATISTICS,
) -> CodebookAssignment:
    """Triton :func:`codebook_assign` (inputs assumed valid, ``precision`` and ``statistics`` not "auto").

    Without ``config``, ``triton.autotune`` picks the block shapes on a GPU (once per shape class, see
    ``ASSIGN_TUNING``); the interpreter runs ``INTERPRETER_CONFIG``.
    """
    num_books, num_frames, dim = x.shape
    num_codewords = codewords.shape[1]
    x = unit_last_stride(x)
    codewords = unit_last_stride(codewords)
    interpret = triton_interpreting()
    if config is None and interpret:
        config = INTERPRETER_CONFIG
    split = "fp16x3" if interpret else "bf16x3"  # the interpreter's bf16 dots are wrong; fp16 halves test the same split
    if precision == "bf16x3":
        precision = split
    device = x.device
    soft = temperature > 0
    fused_stats = not soft and statistics == "atomic"
    labels = torch.empty(num_books, num_frames, dtype=torch.int64, device=device)
    # Atomic statistics accumulate into zeros; the statistics kernel writes every element.
    make = torch.zeros if fused_stats else torch.empty
    counts = make(num_books, num_codewords, dtype=torch.float32, device=device)
    sums = make(num_books, num_codewords, dim, dtype=torch.float32, device=device)
    probs = None
    if soft:
        probs = torch.empty(num_books, num_frames, num_codewords, dtype=torch.float32, device=device)
    if num_frames == 0:
        counts.zero_()
        sums.zero_()
        return CodebookAssignment(labels, probs, counts, sums)
    with device_guard(x):
        args = (
            x, codewords, labels, counts, sums, probs if soft else counts,
            num_frames, num_codewords, dim,
            x.stride(0), x.stride(1), codewords.stride(0), codewords.stride(1),
            -1.0 / temperature if soft else 0.0,
        )  # fmt: skip
        modes = dict(SOFT=soft, ATOMIC_STATS=fused_stats, PRECISION=precision)
        if config is None:
            _assign_kernel_tuned[lambda meta: (cdiv(num_frames, meta["BLOCK_N"]), num_books)](*args, **modes)
        else:
            _assign_kernel[(cdiv(num_frames, config.block_n), num_books)](
                *args, **modes, BLOCK_N=config.block_n, BLOCK_K=config.block_k, BLOCK_D=config.block_d,
                num_warps=config.num_warps, num_stages=config.num_stages,
            )  # fmt: skip
        if fused_stats:
            return CodebookAssignment(labels, probs, counts, sums)
        args = (
            x, probs if soft else labels, counts, sums, num_frames, num_codewords, dim, x.stride(0), x.stride(1),
        )  # fmt: skip
        # Hard one-hot sums split the frames into three halves of `split`: exact products, fp32 sums.
        modes = dict(HARD=not soft, PRECISION=precision if soft else split)
        if config is None:
            _stats_kernel_tuned[
                lambda meta: (cdiv(num_codewords, meta["BLOCK_K"]), cdiv(dim, meta["BLOCK_D"]), num_books)
            ](*args, **modes)
        else:
            grid = (cdiv(num_codewords, config.stats_block_k), cdiv(dim, config.stats_block_d), num_books)
            _stats_kernel[grid](
                *args, **modes, BLOCK_N=config.stats_block_n, BLOCK_K=config.stats_block_k,
                BLOCK_D=config.stats_block_d, num_warps=config.stats_num_warps,
            )  # fmt: skip
    return CodebookAssignment(labels, probs, counts, sums)


def _tuning_configs(table: tuple[tuple[int, int, int, int, int], ...]) -> list:
    return [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k, "BLOCK_D": d}, num_warps=w, num_stages=s)
        for n, k, d, w, s in table
    ]


def _prune_wide_codeword_tiles(configs: list, named_args: dict, **kwargs) -> list:
    """Drop configurations whose codeword tile is wider than K needs (they would only compute padding)."""
    widest = max(16, next_power_of_2(int(named_args["K"])))
    kept = [c for c in configs if c.kwargs["BLOCK_K"] <= widest]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_K"])]


if triton is not None:  # the kernels exist where Triton does; the reference runs everywhere

    @triton.jit
    def _dot(a, b, acc, PRECISION: tl.constexpr):
        """``acc + a @ b`` for fp32 tiles: ``tl.dot`` at ``PRECISION``, or "bf16x3" / "fp16x3" by hand.

        The split forms write each operand as a high and a low half of 16-bit floats and add the three
        products that matter (lo.hi + hi.lo + hi.hi, small terms first) on 16-bit tensor cores: about
        16 bits of mantissa for bf16, twice the speed of "tf32x3". "fp16x3" serves Triton's interpreter,
        whose bf16 dots are wrong; it needs values within fp16's range.
        """
        if PRECISION == "bf16x3" or PRECISION == "fp16x3":
            half = tl.bfloat16 if PRECISION == "bf16x3" else tl.float16
            a_hi = a.to(half)
            a_lo = (a - a_hi.to(tl.float32)).to(half)
            b_hi = b.to(half)
            b_lo = (b - b_hi.to(tl.float32)).to(half)
            acc = tl.dot(a_lo, b_hi, acc)
            acc = tl.dot(a_hi, b_lo, acc)
            acc = tl.dot(a_hi, b_hi, acc)
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _onehot_dot(onehot, x, acc, PRECISION: tl.constexpr):
        """``acc + onehot @ x`` exactly up to fp32 summation: x in three 16-bit pieces (>= 24 bits), 0/1 weights exact."""
        half = tl.bfloat16 if PRECISION == "bf16x3" else tl.float16
        weights = onehot.to(half)
        x_hi = x.to(half)
        rest = x - x_hi.to(tl.float32)
        x_mid = rest.to(half)
        x_lo = (rest - x_mid.to(tl.float32)).to(half)
        acc = tl.dot(weights, x_lo, acc)
        acc = tl.dot(weights, x_mid, acc)
        acc = tl.dot(weights, x_hi, acc)
        return acc

    @triton.jit
    def _assign_kernel(
        x_ptr, c_ptr, labels_ptr, counts_ptr, sums_ptr, probs_ptr,
        N, K, D,
        stride_xc, stride_xn, stride_cc, stride_ck,
        neg_inv_temp,
        SOFT: tl.constexpr, ATOMIC_STATS: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One program: BLOCK_N frames of one codebook against all K codewords, streamed in K tiles."""
        pid_n = tl.program_id(0)
        book = tl.program_id(1).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rows = offs_n.to(tl.int64)  # int64 so that offsets past 2^31 elements do not wrap
        x_rows = x_ptr + book * stride_xc + rows[:, None] * stride_xn
        c_book = c_ptr + book * stride_cc
        probs_rows = probs_ptr + (book * N + rows[:, None]) * K

        best = tl.full((BLOCK_N,), float("inf"), tl.float32)
        best_idx = tl.zeros((BLOCK_N,), tl.int32)
        run_max = tl.full((BLOCK_N,), float("-inf"), tl.float32)
        run_sum = tl.zeros((BLOCK_N,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            dots = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
            sq_norms = tl.zeros((BLOCK_K,), tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < D
                x_tile = tl.load(x_rows + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
                c_tile = tl.load(
                    c_book + offs_k[None, :] * stride_ck + offs_d[:, None],
                    mask=mask_d[:, None] & mask_k[None, :],
                    other=0.0,
                )  # (BLOCK_D, BLOCK_K): codewords transposed for the dot
                x_tile = x_tile.to(tl.float32)
                c_tile = c_tile.to(tl.float32)
                dots = _dot(x_tile, c_tile, dots, PRECISION)
                sq_norms += tl.sum(c_tile * c_tile, axis=0)
            # Squared distance minus ||x||^2; padding codewords can never win.
            scores = tl.where(mask_k[None, :], sq_norms[None, :] - 2.0 * dots, float("inf"))
            tile_best, tile_idx = tl.min(scores, axis=1, return_indices=True, return_indices_tie_break_left=True)
            # Strict '<': on a tie the earlier tile, hence the lower index, keeps the frame.
            better = tile_best < best
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx + k0, best_idx)
            if SOFT:
                logits = scores * neg_inv_temp  # padding codewords: -inf
                tl.store(probs_rows + offs_k[None, :], logits, mask=mask_n[:, None] & mask_k[None, :])
                new_max = tl.maximum(run_max, tl.max(logits, axis=1))
                run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
                run_max = new_max
        tl.store(labels_ptr + book * N + rows, best_idx.to(tl.int64), mask=mask_n)

        if SOFT:
            # The second sweep reads back what other threads of this program stored.
            tl.debug_barrier()
            inv_sum = 1.0 / run_sum
            for k0 in range(0, K, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask = mask_n[:, None] & (offs_k < K)[None, :]
                logits = tl.load(probs_rows + offs_k[None, :], mask=mask, other=float("-inf"))
                tl.store(
                    probs_rows + offs_k[None, :], tl.exp(logits - run_max[:, None]) * inv_sum[:, None], mask=mask
                )
        elif ATOMIC_STATS:
            slots = book * K + best_idx.to(tl.int64)
            tl.atomic_add(counts_ptr + slots, tl.full((BLOCK_N,), 1.0, tl.float32), mask=mask_n, sem="relaxed")
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask = mask_n[:, None] & (offs_d < D)[None, :]
                x_tile = tl.load(x_rows + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
                tl.atomic_add(sums_ptr + slots[:, None] * D + offs_d[None, :], x_tile, mask=mask, sem="relaxed")


    @triton.jit
    def _stats_kernel(
        x_ptr, weights_ptr, counts_ptr, sums_ptr,
        N, K, D, stride_xc, stride_xn,
        HARD: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        """One program: a (BLOCK_K, BLOCK_D) tile of ``weights^T x`` (and counts) for one codebook, over all N.

        Soft: the weights are ``probs`` (C, N, K). Hard: they are the one-hot of ``labels`` (C, N), made
        in registers by comparing codeword indices with the labels.
        """
        pid_k = tl.program_id(0)
        pid_d = tl.program_id(1)
        book = tl.program_id(2).to(tl.int64)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask_k = offs_k < K
        mask_d = offs_d < D
        acc = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
        counts = tl.zeros((BLOCK_K,), tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            rows = offs_n.to(tl.int64)
            x_tile = tl.load(
                x_ptr + book * stride_xc + rows[:, None] * stride_xn + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :],
                other=0.0,
            ).to(tl.float32)
            if HARD:
                labels = tl.load(weights_ptr + book * N + rows, mask=mask_n, other=-1)
                weights = (offs_k[:, None] == labels[None, :]).to(tl.float32)  # (BLOCK_K, BLOCK_N)
                acc = _onehot_dot(weights, x_tile, acc, PRECISION)
                counts += tl.sum(weights, axis=1)
            else:
                probs = tl.load(
                    weights_ptr + (book * N + rows[:, None]) * K + offs_k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :],
                    other=0.0,
                )
                acc = _dot(tl.trans(probs), x_tile, acc, PRECISION)
                counts += tl.sum(probs, axis=0)
        tl.store(
            sums_ptr + (book * K + offs_k[:, None]) * D + offs_d[None, :],
            acc,
            mask=mask_k[:, None] & mask_d[None, :],
        )
        # Every D-tile program computes the counts; the first one writes them.
        tl.store(counts_ptr + book * K + offs_k, counts, mask=mask_k & (pid_d == 0))

    # On a GPU, block shapes are tuned once per (K, D, mode, precision, dtypes); N is left out of the key
    # so that batches of a new size do not tune again. Atomic statistics accumulate, so tuning runs
    # start from zeros.
    _assign_kernel_tuned = triton.autotune(
        configs=_tuning_configs(ASSIGN_TUNING),
        key=["K", "D", "SOFT", "ATOMIC_STATS", "PRECISION"],
        prune_configs_by={"early_config_prune": _prune_wide_codeword_tiles},
        reset_to_zero=["counts_ptr", "sums_ptr"],
    )(_assign_kernel)
    _stats_kernel_tuned = triton.autotune(
        configs=_tuning_configs(STATS_TUNING),
        key=["K", "D", "HARD", "PRECISION"],
        prune_configs_by={"early_config_prune": _prune_wide_codeword_tiles},
    )(_stats_kernel)
