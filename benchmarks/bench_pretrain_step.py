"""Speed of one SpidR pretraining step, and where its time goes.

One step is what `SpidRPretrainer` runs per optimizer update, without data loading and logging:
forward (bf16 autocast on GPU) with the masked-frame count known on the host, loss over the masked
frames, backward, gradient clipping at 10, AdamW, codebook update and teacher EMA. Steps cycle
through a few masks (`--masks`), so the masked count changes as in training. Reported per device,
for each mode (`--modes`):

* `default`: what `spidr-hf pretrain` runs by default (eager, codebook kernels "auto", AdamW foreach);
* `eager`: the same with fused AdamW;
* `compile`: `torch.compile(model, fullgraph=True)` (Triton codebook kernels as custom ops), fused AdamW;
* `compile-torch`: the same with `codebook_backend="torch"` (the compiler's own code for the codebooks);
* `compile-mixed`: Triton assignment, torch head loss (each op's `CUDA_AUTO_BACKEND`);
* `regional`: only the encoder layers compiled (student and teacher), fused AdamW;

audio seconds per second, milliseconds per step, peak memory after warm-up (CUDA:
`max_memory_allocated`; CPU: the process's peak resident set size), warm-up time (compilation,
autotuning), graphs compiled, graph breaks and, on CUDA, host synchronisations in one step after
warm-up (`torch.cuda.set_sync_debug_mode`). Then a table of the eager step's time by phase from
`torch.profiler`: feature extractor, student, teacher, codebook assignment, heads + loss, other
forward work (masking, instance norm), backward, optimizer, EMA + codebook update. On CUDA the
phases are kernel times; backward is the kernel time outside the other phases (autograd launches its
kernels from its own thread).

Usage::

    python benchmarks/bench_pretrain_step.py                 # base config, 12 x 20 s, bf16, all modes
    python benchmarks/bench_pretrain_step.py --small         # tiny config, short audio: runs on a CPU in seconds
    python benchmarks/bench_pretrain_step.py --rows step.rows.json   # also the session table's rows
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import platform
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from spidr_hf.modeling import SAMPLING_RATE, SpidRConfig, SpidRForPreTraining, num_frames
from spidr_hf.modeling import modeling_spidr_pretraining as pretraining_module
from spidr_hf.training import compute_span_mask, pretraining_param_groups
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile, record_function

# the module, not the function of the same name that spidr_hf.modeling exports
head_loss_module = importlib.import_module("spidr_hf.modeling.codebook_head_loss")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from session_table import Row, write_rows  # noqa: E402

FORWARD_PHASES = ("feature extractor", "student", "teacher", "codebook assign", "heads + loss")
PHASES = (*FORWARD_PHASES, "forward (other)", "backward", "optimizer", "EMA + codebook update")


@dataclass(frozen=True)
class Mode:
    """How a step runs: compilation ("full", "regional" or None), codebook backend, fused AdamW."""

    compile: str | None
    backend: str
    fused: bool
    head_loss_on_cuda: str = "triton"  # what backend "auto" means for the head loss (compile-mixed: torch)


MODES = {
    "default": Mode(None, "auto", fused=False),
    "eager": Mode(None, "auto", fused=True),
    "compile": Mode("full", "auto", fused=True),
    "compile-torch": Mode("full", "torch", fused=True),
    "compile-mixed": Mode("full", "auto", fused=True, head_loss_on_cuda="torch"),
    "regional": Mode("regional", "auto", fused=True),
}


# ------------------------------------------------------------------------------ setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny config, 4 x 2 s, eager only: a CPU smoke run")
    parser.add_argument("--batch", type=int, help="utterances per device (default 12; --small: 4)")
    parser.add_argument("--seconds", type=float, help="seconds per utterance (default 20; --small: 2)")
    parser.add_argument("--steps", type=int, help="timed steps per mode (default 10; --small: 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; --small: 1)")
    parser.add_argument("--masks", type=int, help="masks the steps cycle through (default 3; --small: 1)")
    parser.add_argument("--modes", help=f"comma-separated, of {', '.join(MODES)} (default all; --small: eager)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (CPU smoke: aot_eager)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-phase profile")
    parser.add_argument("--rows", help="write the session table's rows (JSON) to this file")
    args = parser.parse_args(argv)
    small = args.small
    args.batch = args.batch or (4 if small else 12)
    args.seconds = args.seconds or (2.0 if small else 20.0)
    args.steps = args.steps or (3 if small else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 3)
    args.masks = args.masks or (1 if small else 3)
    args.modes = (args.modes or ("eager" if small else ",".join(MODES))).split(",")
    unknown = [mode for mode in args.modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = args.dtype or ("bf16" if args.device.type == "cuda" else "fp32")
    return args


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads), torch {torch.__version__}"


@dataclass
class Workload:
    model: SpidRForPreTraining
    optimizer: torch.optim.Optimizer
    waves: torch.Tensor
    masks: list[tuple[torch.Tensor, int]]  # (mask on the device, its count on the host)
    autocast: Callable[[], contextlib.AbstractContextManager]
    forward: Callable  # the model, compiled or not
    steps_done: int = 0  # optimizer steps, counted on the host as the trainer does

    @property
    def audio_seconds(self) -> float:
        return self.waves.numel() / SAMPLING_RATE


def build_workload(args: argparse.Namespace, mode: Mode) -> Workload:
    config = SpidRConfig.tiny() if args.small else SpidRConfig()
    config.codebook_backend = mode.backend
    torch.manual_seed(0)
    model = SpidRForPreTraining(config).to(args.device).train()
    model.defer_codebook_update = True  # as in the trainer: one codebook update per optimizer step
    optimizer = torch.optim.AdamW(
        pretraining_param_groups(model, 0.01), lr=5e-4, betas=(0.9, 0.95), eps=1e-6, fused=mode.fused
    )
    samples = int(args.seconds * SAMPLING_RATE)
    waves = torch.randn(args.batch, samples, device=args.device)
    waves = (waves - waves.mean(1, keepdim=True)) / waves.std(1, keepdim=True)
    frames = num_frames(samples, config.conv_kernel, config.conv_stride)
    masks = []
    for seed in range(args.masks):
        mask = compute_span_mask((args.batch, frames), generator=torch.Generator().manual_seed(seed))
        masks.append((mask.to(args.device), int(mask.sum())))
    dtype = torch.bfloat16 if args.dtype == "bf16" else None

    def autocast() -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(args.device.type, dtype=dtype)

    forward = model
    if mode.compile == "full":
        forward = torch.compile(model, fullgraph=True, backend=args.compile_backend)
    elif mode.compile == "regional":  # the repeated blocks only: compiled once, reused by every layer
        for layer in (*model.spidr.encoder.layers, *model.teacher.layers):
            layer.compile(fullgraph=True, backend=args.compile_backend)
    return Workload(model, optimizer, waves, masks, autocast, forward)


# ------------------------------------------------------------------------------ one step
def train_step(work: Workload) -> torch.Tensor:
    """Forward, loss over the masked frames, backward, clip, AdamW, codebooks, EMA (the trainer's step)."""
    mask, count = work.masks[work.steps_done % len(work.masks)]
    with record_function("forward"), work.autocast():
        out = work.forward(work.waves, mask_time_indices=mask, num_masked=count)
        loss = out.frame_losses.sum() / max(count, 1)
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        torch.nn.utils.clip_grad_norm_(work.model.parameters(), 10.0)
        work.optimizer.step()
        work.optimizer.zero_grad(set_to_none=True)
    with record_function("EMA + codebook update"):
        work.model.apply_codebook_update()
        work.steps_done += 1
        work.model.ema_step(work.steps_done)
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_syncs(work: Workload, device: torch.device) -> int | None:
    """Host synchronisations inside one step, from torch.cuda's sync debug mode (None off CUDA)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(work)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(w.message) for w in caught)


def time_steps(work: Workload, args: argparse.Namespace) -> dict[str, float]:
    torch._dynamo.reset()
    counters.clear()
    start = time.perf_counter()
    for _ in range(max(args.warmup, args.masks)):  # every mask once: its compilation is warm-up
        train_step(work)
    synchronize(args.device)
    warmup_s = time.perf_counter() - start
    syncs = count_syncs(work, args.device)
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(work)
    synchronize(args.device)
    elapsed = time.perf_counter() - start
    return {
        "audio_s_per_s": work.audio_seconds * args.steps / elapsed,
        "steps_per_s": args.steps / elapsed,
        "step_ms": 1e3 * elapsed / args.steps,
        "peak_mem_gib": peak_memory_gib(args.device),
        "warmup_s": warmup_s,
        "graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "syncs": syncs,
        "loss": float(loss),
    }


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux: the whole process, including Python and the libraries
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@contextlib.contextmanager
def head_loss_on_cuda(backend: str) -> Iterator[None]:
    """What codebook_head_loss's backend "auto" runs on CUDA, for one mode."""
    saved = head_loss_module.CUDA_AUTO_BACKEND
    head_loss_module.CUDA_AUTO_BACKEND = backend
    try:
        yield
    finally:
        head_loss_module.CUDA_AUTO_BACKEND = saved


def run_mode(name: str, args: argparse.Namespace) -> dict[str, float]:
    mode = MODES[name]
    with head_loss_on_cuda(mode.head_loss_on_cuda):
        work = build_workload(args, mode)
        try:
            return time_steps(work, args)
        finally:
            del work
            gc.collect()
            if args.device.type == "cuda":
                torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ phases
@contextlib.contextmanager
def labelled_phases(model: SpidRForPreTraining) -> Iterator[None]:
    """Wrap the forward's parts in `record_function` ranges named after `FORWARD_PHASES`."""
    handles, open_ranges = [], []

    def label(module: torch.nn.Module, name: str) -> None:
        def enter(*_):
            open_ranges.append(record_function(name).__enter__())

        def leave(*_):
            open_ranges.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))

    label(model.spidr.feature_extractor, "feature extractor")
    label(model.spidr.feature_projection, "feature extractor")
    label(model.spidr.encoder, "student")
    label(model.teacher, "teacher")
    for head in model.heads:
        label(head, "heads + loss")
    originals = {name: getattr(pretraining_module, name) for name in ("codebook_assign", "codebook_head_loss")}

    def wrapped(fn: Callable, name: str) -> Callable:
        def run(*a, **k):
            with record_function(name):
                return fn(*a, **k)

        return run

    pretraining_module.codebook_assign = wrapped(originals["codebook_assign"], "codebook assign")
    pretraining_module.codebook_head_loss = wrapped(originals["codebook_head_loss"], "heads + loss")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, fn in originals.items():
            setattr(pretraining_module, name, fn)


def profile_phases(work: Workload, args: argparse.Namespace, steps: int = 2) -> dict[str, float]:
    """Milliseconds per step spent in each phase of `PHASES` (eager), from torch.profiler."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.type == "cuda" else [])
    with labelled_phases(work.model):
        train_step(work)  # warm-up inside the hooks
        synchronize(args.device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                train_step(work)
            synchronize(args.device)
    on_device = args.device.type == "cuda"
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key in (*FORWARD_PHASES, "forward", "backward", "optimizer", "EMA + codebook update"):
            totals[event.key] = (event.device_time_total if on_device else event.cpu_time_total) / 1e3 / steps
    phases = {name: totals.get(name, 0.0) for name in FORWARD_PHASES}
    phases["forward (other)"] = max(totals.get("forward", 0.0) - sum(phases.values()), 0.0)
    if on_device:  # autograd's kernels are launched from its own thread, outside the "backward" range
        all_kernels = sum(event.self_device_time_total for event in prof.key_averages()) / 1e3 / steps
        labelled = totals.get("forward", 0.0) + totals.get("optimizer", 0.0) + totals.get("EMA + codebook update", 0.0)
        phases["backward"] = max(all_kernels - labelled, 0.0)
    else:
        phases["backward"] = totals.get("backward", 0.0)
    phases["optimizer"] = totals.get("optimizer", 0.0)
    phases["EMA + codebook update"] = totals.get("EMA + codebook update", 0.0)
    return phases


# ------------------------------------------------------------------------------ report
def print_phase_table(phases: dict[str, float], on_device: bool) -> None:
    total = sum(phases.values()) or 1.0
    unit = "GPU kernel ms/step" if on_device else "CPU ms/step"
    print(f"\n{'phase':<24} {unit:>20} {'share':>8}")
    for name in PHASES:
        print(f"{name:<24} {phases[name]:>20.2f} {100 * phases[name] / total:>7.1f}%")
    print(f"{'total':<24} {total:>20.2f}")


def step_rows(results: dict[str, dict], args: argparse.Namespace) -> list[Row]:
    """The session table's rows: the step in eager / compile / default, then the other compiled modes."""
    what = f"step {'tiny' if args.small else 'base'} {args.batch}x{args.seconds:g}s {args.dtype}"

    def value(mode: str) -> float | None:
        return results.get(mode, {}).get("audio_s_per_s")

    def memory(**modes: str) -> dict[str, float]:
        return {path: results[mode]["peak_mem_gib"] * 1024 for path, mode in modes.items() if mode in results}

    compiled = results.get("compile", {})
    rows = [
        Row(
            what, "audio-s/s", value("eager"), value("compile"), value("default"),
            memory(eager="eager", compiled="compile", default="default"),
            compiled.get("graphs"), compiled.get("graph_breaks"), compiled.get("syncs"),
            note="eager and compiled with fused AdamW; default = spidr-hf pretrain's (eager, AdamW foreach)",
        )  # fmt: skip
    ]
    for mode in ("compile-torch", "compile-mixed", "regional"):
        if mode in results:
            r = results[mode]
            rows.append(
                Row(
                    f"  step, {mode}", "audio-s/s", value("eager"), r["audio_s_per_s"], value("default"),
                    memory(eager="eager", compiled=mode, default="default"),
                    r["graphs"], r["graph_breaks"], r["syncs"], note=f"warm-up {r['warmup_s']:.0f} s",
                )  # fmt: skip
            )
    if "compile" in results:
        rows[0].note += f"; compile warm-up {compiled['warmup_s']:.0f} s"
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"device: {describe_device(args.device)}")
    if args.device.type != "cuda":
        print("note: CPU run: these numbers say nothing about GPU speed.")
    config = "tiny" if args.small else "base"
    print(
        f"config: {config}, batch {args.batch} x {args.seconds:g} s per device, {args.dtype}, "
        f"{args.steps} timed steps after {max(args.warmup, args.masks)}, {args.masks} masks, "
        f"compiler backend {args.compile_backend}"
    )
    header = ("mode", "audio s/s", "steps/s", "ms/step", "peak GiB", "warm-up s", "graphs", "breaks", "syncs")
    print("\n" + "".join(f"{h:>11}" if i else f"{h:<14}" for i, h in enumerate(header)))
    results = {}
    for mode in args.modes:
        try:
            result = run_mode(mode, args)
        except Exception as err:  # a compile failure is a result to report, not a crash of the benchmark
            print(f"{mode:<14} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        results[mode] = result
        syncs = "-" if result["syncs"] is None else result["syncs"]
        print(
            f"{mode:<14}{result['audio_s_per_s']:>11.1f}{result['steps_per_s']:>11.2f}{result['step_ms']:>11.1f}"
            f"{result['peak_mem_gib']:>11.2f}{result['warmup_s']:>11.1f}{result['graphs']:>11}"
            f"{result['graph_breaks']:>11}{syncs:>11}"
        )
        if args.rows:  # after every mode: a run cut short by its time limit keeps what it measured
            write_rows(args.rows, step_rows(results, args))
    if not args.no_profile:
        work = build_workload(args, MODES["eager"])
        print_phase_table(profile_phases(work, args), args.device.type == "cuda")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
