"""Speed of one SpidR pretraining step, and where its time goes.

One step is what `SpidRPretrainer` runs per optimizer update, without data loading and logging:
forward (bf16 autocast on GPU), loss over the masked frames, backward, gradient clipping at 10,
AdamW, codebook update and teacher EMA. Reported per device:

* audio seconds per second and steps per second, eager and with `torch.compile` (model forward);
* peak memory (CUDA: `max_memory_allocated`; CPU: the process's peak resident set size);
* a table of the step time by phase from `torch.profiler` (eager step): feature extractor,
  student, teacher, codebook assignment, heads + loss, other forward work (masking, instance norm),
  backward, optimizer, EMA + codebook update. On CUDA the phases are kernel times; backward is the
  kernel time outside the other phases (autograd launches its kernels from its own thread).

Usage::

    python benchmarks/bench_pretrain_step.py                 # base config, 12 x 20 s, bf16, eager + compile
    python benchmarks/bench_pretrain_step.py --small         # tiny config, short audio: runs on a CPU in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from spidr_hf.modeling import SAMPLING_RATE, SpidRConfig, SpidRForPreTraining, num_frames
from spidr_hf.modeling import modeling_spidr_pretraining as pretraining_module
from spidr_hf.training import compute_span_mask, pretraining_param_groups
from torch.profiler import ProfilerActivity, profile, record_function

FORWARD_PHASES = ("feature extractor", "student", "teacher", "codebook assign", "heads + loss")
PHASES = (*FORWARD_PHASES, "forward (other)", "backward", "optimizer", "EMA + codebook update")


# ------------------------------------------------------------------------------ setup
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny config, 4 x 2 s, eager only: a CPU smoke run")
    parser.add_argument("--batch", type=int, help="utterances per device (default 12; --small: 4)")
    parser.add_argument("--seconds", type=float, help="seconds per utterance (default 20; --small: 2)")
    parser.add_argument("--steps", type=int, help="timed steps per mode (default 10; --small: 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; --small: 1)")
    parser.add_argument("--modes", help="comma-separated: eager,compile (default both; --small: eager)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-phase profile")
    args = parser.parse_args(argv)
    small = args.small
    args.batch = args.batch or (4 if small else 12)
    args.seconds = args.seconds or (2.0 if small else 20.0)
    args.steps = args.steps or (3 if small else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if small else 3)
    args.modes = (args.modes or ("eager" if small else "eager,compile")).split(",")
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
    mask: torch.Tensor
    autocast: Callable[[], contextlib.AbstractContextManager]

    @property
    def audio_seconds(self) -> float:
        return self.waves.numel() / SAMPLING_RATE


def build_workload(args: argparse.Namespace) -> Workload:
    config = SpidRConfig.tiny() if args.small else SpidRConfig()
    torch.manual_seed(0)
    model = SpidRForPreTraining(config).to(args.device).train()
    model.defer_codebook_update = True  # as in the trainer: one codebook update per optimizer step
    fused = args.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        pretraining_param_groups(model, 0.01), lr=5e-4, betas=(0.9, 0.95), eps=1e-6, fused=fused
    )
    samples = int(args.seconds * SAMPLING_RATE)
    waves = torch.randn(args.batch, samples, device=args.device)
    waves = (waves - waves.mean(1, keepdim=True)) / waves.std(1, keepdim=True)
    frames = num_frames(samples, config.conv_kernel, config.conv_stride)
    mask = compute_span_mask((args.batch, frames), generator=torch.Generator().manual_seed(0)).to(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None

    def autocast() -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(args.device.type, dtype=dtype)

    return Workload(model, optimizer, waves, mask, autocast)


# ------------------------------------------------------------------------------ one step
def train_step(work: Workload, forward: Callable) -> float:
    """Forward, loss over the masked frames, backward, clip, AdamW, codebooks, EMA (the trainer's step)."""
    with record_function("forward"), work.autocast():
        out = forward(work.waves, mask_time_indices=work.mask)
        loss = out.frame_losses.sum() / out.frame_losses.numel()
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        torch.nn.utils.clip_grad_norm_(work.model.parameters(), 10.0)
        work.optimizer.step()
        work.optimizer.zero_grad(set_to_none=True)
    with record_function("EMA + codebook update"):
        work.model.apply_codebook_update()
        work.model.ema_step()
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(work: Workload, forward: Callable, args: argparse.Namespace) -> dict[str, float]:
    for _ in range(args.warmup):
        train_step(work, forward)
    synchronize(args.device)
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = train_step(work, forward)
    synchronize(args.device)
    elapsed = time.perf_counter() - start
    return {
        "audio_s_per_s": work.audio_seconds * args.steps / elapsed,
        "steps_per_s": args.steps / elapsed,
        "step_ms": 1e3 * elapsed / args.steps,
        "peak_mem_gib": peak_memory_gib(args.device),
        "loss": float(loss),
    }


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux: the whole process, including Python and the libraries
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


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
        train_step(work, work.model)  # warm-up inside the hooks
        synchronize(args.device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                train_step(work, work.model)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"device: {describe_device(args.device)}")
    if args.device.type != "cuda":
        print("note: CPU run: these numbers say nothing about GPU speed.")
    work = build_workload(args)
    config = "tiny" if args.small else "base"
    print(
        f"config: {config} ({sum(p.numel() for p in work.model.parameters()) / 1e6:.1f}M parameters incl. teacher), "
        f"batch {args.batch} x {args.seconds:g} s per device, {args.dtype}, {args.steps} timed steps after {args.warmup}"
    )
    print(f"\n{'mode':<10} {'audio s/s':>12} {'steps/s':>10} {'ms/step':>10} {'peak GiB':>10}")
    for mode in args.modes:
        try:
            forward = work.model if mode == "eager" else torch.compile(work.model)
            result = time_steps(work, forward, args)
        except Exception as err:  # a compile failure is a result to report, not a crash of the benchmark
            print(f"{mode:<10} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
            continue
        print(
            f"{mode:<10} {result['audio_s_per_s']:>12.1f} {result['steps_per_s']:>10.2f} "
            f"{result['step_ms']:>10.1f} {result['peak_mem_gib']:>10.2f}"
        )
    if not args.no_profile:
        print_phase_table(profile_phases(work, args), args.device.type == "cuda")
    return 0


if __name__ == "__main__":
    sys.exit(main())
