"""Inference speed of SpidRModel vs transformers' HubertModel (base size, random weights), same batch, same run.

Prints audio seconds processed per second of wall time for each model and their ratio.
The two models are timed alternately (A, B, A, B, ...) so that drift of a shared machine
affects both alike; the median over repeats is reported.

The results are in the README's Performance table.

    python benchmarks/bench_inference.py                                  # CPU, fp32
    python benchmarks/bench_inference.py --device cuda --dtype bf16 --batch-size 8 --seconds 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import HubertConfig, HubertModel

from spidr_hf import SpidRConfig, SpidRModel
from spidr_hf.extract import DTYPES


def build_models(device: str, dtype: torch.dtype, attn: str) -> dict[str, torch.nn.Module]:
    """Both encoders at base size (12 x 768, FFN 3072), random weights, inference mode."""
    torch.manual_seed(0)
    spidr = SpidRModel(SpidRConfig(attn_implementation=attn))
    hubert = HubertModel(HubertConfig(attn_implementation=attn))
    return {name: m.to(device, dtype).eval() for name, m in (("SpidRModel", spidr), ("HubertModel", hubert))}


def timer(device: str) -> Callable[[], tuple[float, float]]:
    """A clock returning (wall, process CPU) seconds; CPU time suffers least from a loaded shared machine."""

    def now() -> tuple[float, float]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    return now


@torch.inference_mode()
def measure(
    models: dict[str, torch.nn.Module], batch: torch.Tensor, repeats: int, warmup: int, device: str
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per forward pass of each model, alternating models on every repeat."""
    now = timer(device)
    for model in models.values():
        for _ in range(warmup):
            model(batch)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            wall, cpu = now()
            model(batch)
            end_wall, end_cpu = now()
            times[name].append((end_wall - wall, end_cpu - cpu))
    return times


def parameters(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="audio seconds per utterance")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dtype = DTYPES[args.dtype]
    models = build_models(args.device, dtype, args.attn)
    batch = torch.randn(args.batch_size, int(args.seconds * 16000), device=args.device, dtype=dtype)
    times = measure(models, batch, args.repeats, args.warmup, args.device)

    audio_seconds = args.batch_size * args.seconds
    print(f"device={args.device} dtype={args.dtype} attn={args.attn} batch={args.batch_size} x {args.seconds:g} s "
          f"threads={torch.get_num_threads()} repeats={args.repeats} (median)")  # fmt: skip
    wall_speed, cpu_speed = {}, {}
    for name, model in models.items():
        wall = statistics.median(w for w, _ in times[name])
        cpu = statistics.median(c for _, c in times[name])
        wall_speed[name], cpu_speed[name] = audio_seconds / wall, audio_seconds / cpu
        print(f"  {name:<12} {parameters(model):6.1f}M params  {wall * 1000:8.1f} ms/batch  "
              f"{wall_speed[name]:7.1f} audio s/s  | {cpu * 1000:8.1f} CPU ms  {cpu_speed[name]:7.1f} audio s per CPU s")  # fmt: skip
    ratio = wall_speed["SpidRModel"] / wall_speed["HubertModel"]
    print(f"  ratio SpidRModel / HubertModel: {ratio:.2f}x (wall)", end="")
    if not args.device.startswith("cuda"):  # on a GPU the host CPU time says nothing about the model
        print(f", {cpu_speed['SpidRModel'] / cpu_speed['HubertModel']:.2f}x (CPU time)", end="")
    print()


if __name__ == "__main__":
    main()
