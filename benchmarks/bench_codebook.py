"""Benchmark SpidR's online-clustering step: the naive PyTorch way, the same under torch.compile, and ours.

At the training shape (C=8 codebooks, N=9590 masked frames, K=256 codewords, D=768, fp32, TF32
allowed for PyTorch matmuls) it times, in microseconds (median of ``triton.testing.do_bench``):

* assignment + statistics: naive = ``cdist`` + ``argmin`` + ``one_hot().float()`` + ``one_hot.T @ x``;
  ours = ``spidr_hf.kernels.codebook_assign`` (Triton, autotuned), then its variants: one-hot
  statistics, "bf16x3" input precision, both, bf16 frames (the teacher's autocast dtype), and the
  fixed pre-tuning block shapes;
* head loss forward + backward: naive = ``log_softmax`` + dense one-hot cross-entropy + softmax sums;
  ours = ``spidr_hf.kernels.codebook_head_loss`` (Triton);
* both together, as one training step runs them.

On CUDA each cell also has its peak memory (``max_memory_allocated`` above what was allocated
before); ``--rows FILE`` writes the session table's rows (``session_table.py``).

Usage: ``python benchmarks/bench_codebook.py`` on a CUDA machine. Without CUDA it exits with a message,
unless ``--cpu-smoke`` is given: then it runs a tiny shape on CPU with the Triton interpreter
(TRITON_INTERPRET=1 is set before Triton is imported), only to prove that the script works; those
timings mean nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

# spidr_hf is imported inside functions: importing it imports Triton (through torch._dynamo), which must
# come after --cpu-smoke sets TRITON_INTERPRET.

TRAINING_SHAPE = (8, 9590, 256, 768)
SMOKE_SHAPE = (2, 40, 20, 24)


@dataclass
class Row:
    """Microseconds of one benchmarked step for each implementation (None when not run), and peak MiB."""

    name: str
    reference: float
    compiled: float | None
    ours: float
    memory_mib: dict[str, float] = field(default_factory=dict)  # "reference" / "compiled" / "ours" (CUDA)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run under the Triton interpreter")
    parser.add_argument("--shape", type=int, nargs=4, metavar=("C", "N", "K", "D"), help="override the shape")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "ieee", "tf32x3", "tf32"],
        help="tl.dot input precision of ours",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument("--rows", help="write the session table's rows (JSON) to this file")
    return parser.parse_args(argv)


def naive_assign(x, codewords):
    """The reference method: dense distances, argmin, a float one-hot, and a matmul for the sums."""
    labels = torch.cdist(x, codewords).argmin(-1)
    one_hot = F.one_hot(labels, codewords.shape[1]).float()
    return labels, one_hot.sum(1), one_hot.transpose(1, 2) @ x


def naive_head_loss(logits, labels):
    """Dense one-hot cross-entropy per frame and the per-codeword sums of softmax."""
    log_probs = logits.float().log_softmax(-1)
    losses = -(F.one_hot(labels, logits.shape[-1]).float() * log_probs).sum(-1)
    return losses, log_probs.detach().exp().sum(1)


def ours_assign(x, codewords, precision: str, **options):
    from spidr_hf.kernels import codebook_assign

    backend = "auto" if x.is_cuda else "triton"  # the package's default path; CPU smoke: the interpreter
    return codebook_assign(x, codewords, precision=precision, backend=backend, **options)


def ours_head_loss(logits, labels):
    from spidr_hf.kernels import codebook_head_loss

    return codebook_head_loss(logits, labels, backend="auto" if logits.is_cuda else "triton")


def head_loss_step(loss_fn: Callable, logits, labels) -> None:
    """Forward and backward of a head loss from a fresh leaf, as in a training step."""
    leaf = logits.detach().requires_grad_()
    losses, _ = loss_fn(leaf, labels)
    losses.sum().backward()


def make_timer(device) -> Callable[[Callable[[], object]], float]:
    """Median microseconds: ``do_bench`` (CUDA events, L2 flushed) on GPU, perf_counter on CPU."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    def cpu_timer(fn: Callable[[], object], reps: int = 1) -> float:
        fn()
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return 1e6 * statistics.median(samples)

    return cpu_timer


def peak_mib(fn: Callable[[], object], device) -> float | None:
    """Peak CUDA memory one call adds to what was allocated before (None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def run_benchmark(
    shape, device, precision: str = "auto", compile_reference: bool = True, seed: int = 0
) -> list[Row]:
    """Time the three steps for the three implementations at ``shape`` = (C, N, K, D)."""
    num_books, num_frames, num_codewords, dim = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(num_books, num_frames, dim, device=device, generator=gen)
    picks = torch.randint(0, num_frames, (num_codewords,), device=device, generator=gen)
    codewords = x[:, picks] + 0.1 * torch.randn(num_books, num_codewords, dim, device=device, generator=gen)
    logits = torch.randn(num_books, num_frames, num_codewords, device=device, generator=gen)
    labels = naive_assign(x, codewords)[0]
    timer = make_timer(device)

    compiled_assign = compiled_loss = None
    if compile_reference:
        compiled_assign = torch.compile(naive_assign)
        compiled_loss = torch.compile(naive_head_loss)

    def together(assign: Callable, loss_fn: Callable) -> Callable[[], None]:
        return lambda: head_loss_step(loss_fn, logits, assign(x, codewords)[0])

    def ours_assign_p(a, b, **options):
        return ours_assign(a, b, precision, **options)

    naive_step = (lambda: naive_assign(x, codewords), compiled_assign and (lambda: compiled_assign(x, codewords)))
    x_bf16 = x.bfloat16()
    steps = {
        "assign + statistics": (*naive_step, lambda: ours_assign_p(x, codewords)),
        "  onehot statistics": (*naive_step, lambda: ours_assign_p(x, codewords, statistics="onehot")),
        "  bf16x3": (*naive_step, lambda: ours_assign(x, codewords, "bf16x3")),
        "  bf16x3 + onehot": (*naive_step, lambda: ours_assign(x, codewords, "bf16x3", statistics="onehot")),
        "  bf16 targets, bf16x3": (*naive_step, lambda: ours_assign(x_bf16, codewords, "bf16x3")),
        "  fixed blocks": (*naive_step, lambda: fixed_blocks_assign(x, codewords, precision)),
        "head loss fwd+bwd": (
            lambda: head_loss_step(naive_head_loss, logits, labels),
            compiled_loss and (lambda: head_loss_step(compiled_loss, logits, labels)),
            lambda: head_loss_step(ours_head_loss, logits, labels),
        ),
        "together": (
            together(naive_assign, naive_head_loss),
            compiled_assign and together(compiled_assign, compiled_loss),
            together(ours_assign_p, ours_head_loss),
        ),
    }
    measured: dict[int, tuple[float, float | None]] = {}  # the naive baselines recur: measure each once

    def measure(fn: Callable) -> tuple[float, float | None]:
        if id(fn) not in measured:
            measured[id(fn)] = (timer(fn), peak_mib(fn, device))
        return measured[id(fn)]

    rows = []
    for name, (reference, compiled, ours) in steps.items():
        results = {"reference": measure(reference), "compiled": compiled and measure(compiled), "ours": measure(ours)}
        row = Row(name, results["reference"][0], compiled and results["compiled"][0], results["ours"][0])
        row.memory_mib = {k: v[1] for k, v in results.items() if v and v[1] is not None}
        rows.append(row)
    return rows


def fixed_blocks_assign(x, codewords, precision: str):
    """The assignment kernel with the block shapes used before autotuning (the interpreter's on CPU)."""
    from spidr_hf.modeling.codebook_assign import AssignConfig, resolve_precision, triton_codebook_assign

    config = AssignConfig() if x.is_cuda else None
    return triton_codebook_assign(x, codewords, 0.0, resolve_precision(precision, x.device), config)


def session_rows(rows: list[Row], graphs: int | None) -> list:
    """``rows`` as the session table's rows: naive eager, naive compiled, the package's default path."""
    from session_table import Row as SessionRow

    columns = {"reference": "eager", "compiled": "compiled", "ours": "default"}
    return [
        SessionRow(
            row.name, "us", row.reference, row.compiled, row.ours,
            {columns[k]: v for k, v in row.memory_mib.items()}, graphs if row.compiled else None,
        )  # fmt: skip
        for row in rows
    ]


def format_rows(rows: list[Row]) -> str:
    """A table of microseconds and speed-ups of ours over the reference and the compiled reference."""
    lines = [f"{'step':<22}{'reference':>12}{'compiled':>12}{'ours':>12}{'ref/ours':>10}{'comp/ours':>11}"]
    for row in rows:
        compiled = f"{row.compiled:12.1f}" if row.compiled else f"{'-':>12}"
        compiled_ratio = f"{row.compiled / row.ours:10.2f}x" if row.compiled else f"{'-':>11}"
        lines.append(
            f"{row.name:<22}{row.reference:12.1f}{compiled}{row.ours:12.1f}"
            f"{row.reference / row.ours:9.2f}x{compiled_ratio}"
        )
    return "\n".join(lines)


def write_session_rows(path: str, rows: list[Row]) -> None:
    """The rows and how many graphs torch.compile made for the compiled column, for session_table.py."""
    from torch._dynamo.utils import counters

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from session_table import write_rows

    write_rows(path, session_rows(rows, counters["stats"]["unique_graphs"] or None))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        # Must precede the first import of triton (spidr_hf imports it through torch._dynamo).
        os.environ["TRITON_INTERPRET"] = "1"
        device, shape = torch.device("cpu"), tuple(args.shape or SMOKE_SHAPE)
    elif not torch.cuda.is_available():
        print("bench_codebook: no CUDA device; the benchmark needs a GPU (--cpu-smoke only tests the script)")
        return 2
    else:
        device, shape = torch.device("cuda"), tuple(args.shape or TRAINING_SHAPE)
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference may use TF32, as training does
        torch.backends.cudnn.allow_tf32 = True
    from spidr_hf.modeling.codebook_assign import resolve_precision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, Triton interpreter"
    tf32 = "TF32 allowed in torch matmuls" if device.type == "cuda" else "no TF32 on CPU"
    precision = resolve_precision(args.precision, device)
    print(f"device: {name}; C, N, K, D = {shape}; fp32 inputs; {tf32}; ours: input_precision={precision}")
    rows = run_benchmark(shape, device, args.precision, not args.no_compile)
    print(format_rows(rows))
    if args.rows:
        write_session_rows(args.rows, rows)
    if device.type == "cpu":
        print("(CPU smoke run: interpreter timings say nothing about GPU speed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
