"""One prepared run for a GPU session: correctness of the fused codebook kernels on CUDA, then the benchmark.

Checks, at the training shape (C=8, N=9590, K=256, D=768) on two kinds of data:

1. the labels rule, for every ``tl.dot`` input precision ("bf16x3" included): labels equal fp32
   ``torch.cdist(x, c).argmin(-1)`` (TF32 off) on every frame whose two nearest codewords differ by
   more than 1e-4 relative distance (distances in fp64); "auto" must pass, and the line says which
   precisions do; then bf16 frames (the teacher's autocast dtype): against cdist of the same bf16
   values (must pass with "bf16x3") and, for information, against the fp32 frames they were rounded from;
2. statistics, with atomic and one-hot reductions: hard counts exactly equal to a bincount of our
   labels, hard sums and soft (temperature > 0) probs / counts / sums against fp64 math from the same
   labels / the reference;
3. head loss: frame losses, prob sums and gradients against autograd of the reference, fp32 and bf16;
4. a short sweep of fixed assignment block sizes next to what ``triton.autotune`` chose, and the
   time of each input precision and statistics reduction;
5. ``bench_codebook``'s benchmark (``--rows FILE``: its rows for the session table).

Prints one compact line per check and exits 1 if a required check fails. ``--cpu-smoke`` runs it all
on tiny shapes in Triton's interpreter, only to prove that the script works.
Run: ``python benchmarks/gpu_kernels_check.py`` (a few minutes on an H100, most of it torch.compile).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_codebook  # noqa: E402

PRECISIONS = ("ieee", "tf32x3", "tf32", "bf16x3")
SMOKE_SHAPE = (2, 40, 20, 24)
RULE_MARGIN = 1e-4


class Report:
    """Collects PASS/FAIL/INFO lines; ``failed`` is set by required checks only."""

    def __init__(self) -> None:
        self.failed = False

    def line(self, name: str, ok: bool | None, detail: str) -> None:
        status = {True: "PASS", False: "FAIL", None: "INFO"}[ok]
        self.failed |= ok is False
        print(f"[{status}] {name:<34} {detail}", flush=True)


def make_data(kind: str, shape, device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """'gaussian': centred frames; 'offset': a shared mean offset makes ||x||^2 dominate the distances."""
    num_books, num_frames, num_codewords, dim = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(num_books, num_frames, dim, device=device, generator=gen)
    if kind == "offset":
        x += 4.0 * torch.randn(num_books, 1, dim, device=device, generator=gen)
    picks = torch.randperm(num_frames, device=device, generator=gen)[:num_codewords]
    codewords = x[:, picks] + 0.3 * torch.randn(num_books, num_codewords, dim, device=device, generator=gen)
    return x, codewords


def exact_fp32(fn):
    """Run ``fn`` with TF32 off, so that torch matmuls are true fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return fn()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rule_reference(x: torch.Tensor, codewords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `cdist` labels of `x`, and which frames are clear: two nearest codewords apart by more than RULE_MARGIN."""
    want = exact_fp32(lambda: torch.cdist(x, codewords).argmin(-1))
    nearest = torch.cdist(x.double(), codewords.double()).topk(2, dim=-1, largest=False).values
    return want, (nearest[..., 1] - nearest[..., 0]) > RULE_MARGIN * nearest[..., 0]


def check_labels_rule(report: Report, shape, device) -> None:
    from spidr_hf.modeling.codebook_assign import resolve_precision

    from spidr_hf.kernels import codebook_assign

    auto = resolve_precision("auto", device)
    for kind in ("gaussian", "offset"):
        x, codewords = make_data(kind, shape, device)
        want, clear = rule_reference(x, codewords)
        for precision in PRECISIONS:
            got = codebook_assign(x, codewords, precision=precision, backend="triton").labels
            bad = int(((got != want) & clear).sum())
            ok = bad == 0 if precision in (auto, "ieee") else None  # the others: information for choosing
            report.line(
                f"labels rule {kind} {precision}",
                ok,
                f"{bad} violations on {int(clear.sum())} clear frames; {int((got != want).sum())} differ in all",
            )
        check_bf16_targets(report, x, codewords, want)


def check_bf16_targets(report: Report, x: torch.Tensor, codewords: torch.Tensor, want_fp32: torch.Tensor) -> None:
    """Frames in bf16: the rule on the bf16 values themselves, and how many labels the rounding moves."""
    from spidr_hf.kernels import codebook_assign

    half = x.bfloat16()
    want, clear = rule_reference(half.float(), codewords)
    got = codebook_assign(half, codewords, precision="bf16x3", backend="triton").labels
    bad = int(((got != want) & clear).sum())
    report.line("labels rule bf16 frames bf16x3", bad == 0, f"{bad} violations on {int(clear.sum())} clear frames")
    moved = int((got != want_fp32).sum())
    report.line("bf16 frames vs fp32 frames", None, f"{moved} of {got.numel()} labels differ from the fp32 frames'")


def check_statistics(report: Report, shape, device) -> None:
    from spidr_hf.modeling.codebook_assign import reference_codebook_assign

    from spidr_hf.kernels import codebook_assign

    num_books, _, num_codewords, dim = shape
    x, codewords = make_data("gaussian", shape, device, seed=1)
    for statistics in ("atomic", "onehot"):
        hard = codebook_assign(x, codewords, backend="triton", statistics=statistics)
        counts = torch.zeros(num_books, num_codewords, device=device).scatter_add_(
            1, hard.labels, torch.ones_like(x[..., 0])
        )
        sums = torch.zeros(num_books, num_codewords, dim, device=device, dtype=torch.float64)
        sums.scatter_add_(1, hard.labels[..., None].expand_as(x), x.double())
        report.line(
            f"hard counts {statistics}",
            bool((hard.counts == counts).all()),
            "exactly equal to a bincount of the labels",
        )
        report.line(f"hard sums {statistics}", *_close(hard.sums, sums, 1e-5))

    temperature = float(torch.cdist(x[:1, :256], codewords[:1]).square().std())  # spreads the softmax
    soft = codebook_assign(x, codewords, temperature=temperature, backend="triton")
    want = exact_fp32(lambda: reference_codebook_assign(x, codewords, temperature))
    report.line(f"soft probs (T={temperature:.3g})", *_close(soft.probs, want.probs, 1e-4))
    report.line("soft counts", *_close(soft.counts, want.counts, 1e-4))
    report.line("soft sums", *_close(soft.sums, want.sums, 1e-4))


def _close(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> tuple[bool, str]:
    """Max error relative to the largest reference magnitude."""
    error = float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))
    return error <= tolerance, f"max error {error:.2e} of max |value| (tolerance {tolerance:.0e})"


def check_head_loss(report: Report, shape, device) -> None:
    from spidr_hf.kernels import codebook_head_loss

    num_books, num_frames, num_codewords, _ = shape
    gen = torch.Generator(device=device).manual_seed(2)
    labels = torch.randint(0, num_codewords, (num_books, num_frames), device=device, generator=gen)
    weights = torch.randn(num_books, num_frames, device=device, generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (3 * torch.randn(num_books, num_frames, num_codewords, device=device, generator=gen)).to(
            dtype
        )
        results = []
        for backend in ("triton", "torch"):
            leaf = logits.detach().requires_grad_()
            losses, prob_sums = codebook_head_loss(leaf, labels, backend=backend)
            (losses * weights).sum().backward()
            results.append((losses.detach(), prob_sums, leaf.grad))
        (losses, prob_sums, grad), (want_losses, want_sums, want_grad) = results
        grad_tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 grads: one rounding each
        name = str(dtype).removeprefix("torch.")
        report.line(f"head loss {name} losses", *_close(losses, want_losses, 1e-5))
        report.line(f"head loss {name} prob sums", *_close(prob_sums, want_sums, 1e-5))
        report.line(f"head loss {name} grads", *_close(grad, want_grad, grad_tolerance))


def sweep_configs(report: Report, shape, device) -> None:
    """Time the hard assignment kernel's block configurations, then what autotune picks (informational)."""
    from spidr_hf.modeling.codebook_assign import (
        ASSIGN_TUNING,
        AssignConfig,
        resolve_precision,
        triton_codebook_assign,
    )

    x, codewords = make_data("gaussian", shape, device, seed=3)
    precision = resolve_precision("auto", device)
    timer = bench_codebook.make_timer(device)
    if device.type == "cpu":
        configs = [AssignConfig(16, 16, 16, 1, 1), AssignConfig(32, 16, 32, 1, 1)]
    else:
        # every shape autotune may pick, each timed alone
        configs = [
            AssignConfig(block_n=n, block_k=k, block_d=d, num_warps=w, num_stages=s)
            for n, k, d, w, s in ASSIGN_TUNING
        ]
    timings = []
    for config in configs:
        try:
            micros = timer(lambda config=config: triton_codebook_assign(x, codewords, 0.0, precision, config))
        except Exception as error:  # e.g. out of shared memory for this block shape
            report.line("config", None, f"{_describe(config)} failed: {type(error).__name__}")
            continue
        timings.append((micros, config))
        report.line("config", None, f"{_describe(config)}: {micros:.1f} us")
    if timings:
        micros, config = min(timings, key=lambda item: item[0])
        report.line("best fixed config", None, f"{_describe(config)}: {micros:.1f} us ({precision})")
    # What the labels rule and the statistics reduction cost, with the block shapes autotune picks
    # (each pair tunes anew: one-hot only with the two candidate precisions).
    for other in PRECISIONS:
        for statistics in ("atomic", "onehot") if other in (precision, "bf16x3") else ("atomic",):
            micros = timer(
                lambda other=other, statistics=statistics: triton_codebook_assign(
                    x, codewords, 0.0, other, statistics=statistics
                )
            )
            report.line(f"precision {other} {statistics}", None, f"{micros:.1f} us, {_tuned_choice()}")


def _tuned_choice() -> str:
    """The block shapes triton.autotune picked for the last assignment call (GPU only)."""
    module = importlib.import_module("spidr_hf.modeling.codebook_assign")  # the module, not the function
    best = getattr(getattr(module, "_assign_kernel_tuned", None), "best_config", None)
    return "interpreter blocks" if best is None else f"autotuned {best}"


def _describe(config) -> str:
    return f"N{config.block_n} K{config.block_k} D{config.block_d} w{config.num_warps} s{config.num_stages}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run under the Triton interpreter")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile benchmark column")
    parser.add_argument("--rows", help="write the benchmark's rows for the session table (JSON) to this file")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before spidr_hf imports triton
        device, shape = torch.device("cpu"), SMOKE_SHAPE
    elif not torch.cuda.is_available():
        print(
            "gpu_kernels_check: no CUDA device; run it on a GPU machine (--cpu-smoke only tests the script)"
        )
        return 2
    else:
        device, shape = torch.device("cuda"), bench_codebook.TRAINING_SHAPE
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, Triton interpreter"
    print(f"device: {name}; C, N, K, D = {shape}", flush=True)
    report = Report()
    check_labels_rule(report, shape, device)
    check_statistics(report, shape, device)
    check_head_loss(report, shape, device)
    sweep_configs(report, shape, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = bench_codebook.run_benchmark(shape, device, "auto", not args.no_compile)
    print(bench_codebook.format_rows(rows))
    if args.rows:
        bench_codebook.write_session_rows(args.rows, rows)
    print("RESULT:", "FAIL" if report.failed else "PASS", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
