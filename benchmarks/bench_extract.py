"""End-to-end extraction throughput (files on disk -> features on disk) and peak memory on a long file.

Three ways of writing the last layer's features of a folder of FLAC files to safetensors:

* ``spidr-hf extract`` (:func:`spidr_hf.extract.extract`: length-sorted batches under a sample
  budget, decoding in DataLoader workers);
* a plain loop over transformers' ``HubertModel`` of the same size (read, standardise, forward
  one file at a time, save), the usual baseline script;
* the same plain loop over ``SpidRModel``, which separates what the architecture gives from
  what the extraction engine gives.

Throughput is audio hours per hour of wall time, and per CPU hour (process and finished
workers, which a loaded shared machine distorts less); the model is loaded beforehand,
decoding and writing are included; each method's best of ``--repeats`` interleaved rounds.
Peak memory of ``spidr-hf extract`` on one long file is measured in a subprocess without
decoding workers: its peak RSS (``VmHWM``), and ``torch.cuda.max_memory_allocated`` on a GPU;
the same on a 1 s file gives the fixed cost (Python, torch, the model).
``--compare-windowing`` measures windowed vs whole-file features on a 60 s file. ``--small``
means 4 layers x 256 with 128 conv channels, 96 files, 8 min of audio. The results are in the
README's Performance table.

    python benchmarks/bench_extract.py --small                 # quick CPU run (small models, 10 min file)
    python benchmarks/bench_extract.py --small --long-minutes 60
    python benchmarks/bench_extract.py --device cuda --dtype bf16 --files 200
    python benchmarks/bench_extract.py --compare-windowing [--windowing-model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file
from transformers import HubertConfig, HubertModel

from spidr_hf import SpidRConfig, SpidRForPreTraining, SpidRModel
from spidr_hf.audio import load_audio, standardize
from spidr_hf.extract import DTYPES, ExtractionOptions, FrameEncoder, extract
from spidr_hf.units import head_units_from_features

SMALL = dict(
    conv_dim=[128] * 7,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
    num_codebooks=2,
)


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """A gliding harmonic tone gated at 2.5 Hz, plus noise: deterministic, cheap, not silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    phase = (
        2
        * np.pi
        * np.cumsum(150 + 60 * np.sin(2 * np.pi * 0.3 * t) + 30 * np.sin(2 * np.pi * 1.7 * t))
        / 16000
    )
    gate = 0.2 + 0.8 * (np.sin(2 * np.pi * 2.5 * t) > 0)
    return (
        gate * (0.3 * np.sin(phase) + 0.1 * np.sin(3 * phase)) + 0.03 * rng.standard_normal(t.shape)
    ).astype(np.float32)


def write_corpus(folder: Path, count: int, shortest: float, longest: float) -> float:
    """``count`` FLAC files with lengths uniform in [shortest, longest] s; returns the total seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.random.default_rng(0).uniform(shortest, longest, count)
    for index, seconds in enumerate(lengths):
        sf.write(folder / f"utt{index:04d}.flac", speech_like(seconds, index), 16000)
    return float(lengths.sum())


def make_models(small: bool, model_dir: Path) -> tuple[SpidRModel, HubertModel]:
    """SpidR (saved to ``model_dir`` for the CLI) and HuBERT of the same size, random weights."""
    torch.manual_seed(0)
    spidr_config = SpidRConfig(**(SMALL if small else {}))
    hubert_config = HubertConfig(
        conv_dim=spidr_config.conv_dim,
        hidden_size=spidr_config.hidden_size,
        num_hidden_layers=spidr_config.num_hidden_layers,
        num_attention_heads=spidr_config.num_attention_heads,
        intermediate_size=spidr_config.intermediate_size,
    )
    SpidRModel(spidr_config).save_pretrained(model_dir)
    return SpidRModel.from_pretrained(model_dir), HubertModel(hubert_config)


@torch.inference_mode()
def plain_loop(model: torch.nn.Module, files: list[Path], out: Path, device: str, dtype: torch.dtype) -> None:
    """The baseline script: one file at a time, read -> standardise -> forward -> save."""
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        wave = torch.from_numpy(standardize(load_audio(path)))[None].to(device, dtype)
        features = model(wave).last_hidden_state[0].float().cpu().contiguous()
        save_file({"last_hidden_state": features}, out / f"{path.stem}.safetensors")


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (DataLoader workers), user + system."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed(function, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``function()``; CPU time is what a loaded shared machine distorts least."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), cpu_seconds()
    function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, cpu_seconds() - cpu


def throughput(args: argparse.Namespace, work: Path) -> None:
    corpus = work / "corpus"
    audio_seconds = write_corpus(corpus, args.files, args.shortest, args.longest)
    files = sorted(corpus.glob("*.flac"))
    dtype = DTYPES[args.dtype]
    spidr, hubert = make_models(args.small, work / "model")
    spidr, hubert = spidr.to(args.device, dtype).eval(), hubert.to(args.device, dtype).eval()
    print(f"corpus: {len(files)} files, {audio_seconds / 60:.1f} min of audio ({args.shortest:g}-{args.longest:g} s); "
          f"models: {'small' if args.small else 'base'} size, {args.device} {args.dtype}, {torch.get_num_threads()} threads")  # fmt: skip

    def options(repeat: int) -> ExtractionOptions:  # a fresh folder each time: extract would skip done files
        return ExtractionOptions(output_dir=str(work / f"out-extract-{repeat}"), device=args.device, dtype=args.dtype,
                                 max_batch_samples=args.max_batch_samples, num_workers=args.num_workers,
                                 progress=False)  # fmt: skip

    runs = {
        "spidr-hf extract": lambda r: extract(work / "model", [corpus], options(r), model=spidr),
        "plain loop, HubertModel": lambda r: plain_loop(
            hubert, files, work / f"out-hubert-{r}", args.device, dtype
        ),
        "plain loop, SpidRModel": lambda r: plain_loop(
            spidr, files, work / f"out-spidr-{r}", args.device, dtype
        ),
    }
    # alternate the three and keep each one's best time: a shared machine's drift hits them alike
    best = _interleaved_best(runs, args)
    speeds, cpu_speeds = {}, {}
    for name, (wall, cpu) in best.items():
        speeds[name], cpu_speeds[name] = audio_seconds / wall, audio_seconds / cpu
        print(f"  {name:<26} {wall:7.1f} s wall {speeds[name]:7.1f} audio h/h | {cpu:7.1f} CPU s "
              f"{cpu_speeds[name]:7.1f} audio h per CPU h")  # fmt: skip
    for label, values in (("wall", speeds), ("CPU", cpu_speeds)):
        base = values["plain loop, HubertModel"]
        print(f"  {label:>4}: spidr-hf extract / HuBERT loop {values['spidr-hf extract'] / base:.2f}x, "
              f"SpidR loop / HuBERT loop {values['plain loop, SpidRModel'] / base:.2f}x  (best of {args.repeats})")  # fmt: skip


def _interleaved_best(runs: dict, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Each run's best (wall, CPU) seconds over ``args.repeats`` rounds of all runs in turn."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            times[name].append(timed(lambda run=run, repeat=repeat: run(repeat), args.device))
    return {name: (min(w for w, _ in values), min(c for _, c in values)) for name, values in times.items()}


_CHILD = """
import json, re, sys, torch
from pathlib import Path
from spidr_hf.extract import ExtractionOptions, extract
model, audio, out, device, dtype = sys.argv[1:6]
# no decoding workers: the whole cost (decoded audio included) is in this one process
options = ExtractionOptions(output_dir=out, device=device, dtype=dtype, progress=False, num_workers=0)
report = extract(model, [audio], options)
assert report.written == 1, report.summary()
# VmHWM is this address space's peak RSS; ru_maxrss would include the parent's, inherited through fork
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1])
print(json.dumps({
    "rss_mib": peak_kib / 1024,
    "gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
}))
"""


def child_peaks(command: list[str]) -> tuple[dict[str, float], float]:
    """Run an extraction child; return the peaks it measured on itself and its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def long_file_memory(args: argparse.Namespace, work: Path) -> None:
    model_dir = work / "model"
    if not model_dir.is_dir():
        make_models(args.small, model_dir)
    short, long = work / "one-second.flac", work / "long.flac"
    sf.write(short, speech_like(1.0, 0), 16000)
    # written in blocks: the benchmark itself should not hold an hour of float audio at once
    with sf.SoundFile(long, "w", 16000, 1, format="FLAC") as f:
        for block in range(int(args.long_minutes)):
            f.write(speech_like(60.0, 1000 + block))
    command = [sys.executable, "-c", _CHILD, str(model_dir)]
    base, _ = child_peaks([*command, str(short), str(work / "mem-short"), args.device, args.dtype])
    peak, seconds = child_peaks([*command, str(long), str(work / "mem-long"), args.device, args.dtype])
    speed = args.long_minutes * 60 / seconds
    print(
        f"long file: {args.long_minutes:g} min, spidr-hf extract (windows of 20 s + 5 s of context), "
        f"{seconds:.0f} s wall ({speed:.1f} audio s/s, start-up included):"
    )
    print(f"  peak RSS {peak['rss_mib']:.0f} MiB (1 s file: {base['rss_mib']:.0f} MiB; no decoding workers)")
    if peak["gpu_mib"] is not None:
        print(f"  GPU max_memory_allocated: {peak['gpu_mib']:.0f} MiB (1 s file: {base['gpu_mib']:.0f} MiB)")
    hidden = SpidRConfig(**(SMALL if args.small else {})).hidden_size
    frames = args.long_minutes * 60 * 50
    print(f"  for scale: the waveform is {args.long_minutes * 60 * 16000 * 4 / 2**20:.0f} MiB in fp32, the last "
          f"layer's features {frames * hidden * 4 / 2**20:.0f} MiB; one whole-file attention matrix would be "
          f"{frames**2 * 4 / 2**30:.0f} GiB per head")  # fmt: skip


def compare_windowing(args: argparse.Namespace) -> None:
    """Windowed (20 s + C s of context) vs whole-file features on a 60 s file, for several C."""
    if args.windowing_model:
        model = SpidRForPreTraining.from_pretrained(args.windowing_model).eval()
    else:
        torch.manual_seed(0)
        config = SpidRConfig(hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0)
        model = SpidRForPreTraining(config).eval()
    config = model.config
    keys = [(layer, "hidden_state") for layer in range(1, config.num_hidden_layers + 1)]
    keys += [(layer, "before_residual") for layer in config.codebook_layers]
    encoder = FrameEncoder(model, keys, max_batch_samples=10**9)
    wave = standardize(speech_like(60.0, 0))
    whole = encoder.encode([wave])[0]
    last = (config.num_hidden_layers, "hidden_state")
    print(
        f"windowed (20 s core) vs whole, 60 s file, {config.num_hidden_layers} layers x {config.hidden_size}:"
    )
    for context in (0, 1, 2, 5, 10):
        windowed = encoder.encode_windowed(wave, 20 * 50, context * 50, torch.float32)
        errors = {key: float((windowed[key] - whole[key]).norm() / whole[key].norm()) for key in keys}
        agree = [
            float((head_units_from_features(model, windowed[(layer, "before_residual")], layer)
                   == head_units_from_features(model, whole[(layer, "before_residual")], layer)).float().mean())
            for layer in config.codebook_layers
        ]  # fmt: skip
        print(f"  context {context:2d} s: last layer {100 * errors[last]:.2f} %, worst layer "
              f"{100 * max(errors.values()):.2f} %, head units agreeing {100 * min(agree):.1f}-{100 * max(agree):.1f} %")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--small", action="store_true", help="small models (4 x 256) and a small corpus: a quick CPU run"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--files", type=int, help="corpus files (default: 96 small, 100 base)")
    parser.add_argument("--shortest", type=float, default=2.0)
    parser.add_argument("--longest", type=float, help="longest file in seconds (default: 8 small, 16 base)")
    parser.add_argument(
        "--long-minutes", type=float, help="length of the long file, 0 to skip (default: 60; --small: 10)"
    )
    parser.add_argument(
        "--max-batch-samples", type=int, help="default: extract's (3.2M on GPU, 1 file on CPU)"
    )
    parser.add_argument("--num-workers", type=int, help="decoding processes (default: extract's, the spare cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each method (best is kept)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (1 gives steadier numbers on a busy machine)"
    )
    parser.add_argument("--work-dir", help="keep the corpus and outputs here (default: a temporary folder)")
    parser.add_argument(
        "--compare-windowing", action="store_true", help="only the windowed vs whole comparison"
    )
    parser.add_argument(
        "--windowing-model", help="a SpidR directory for --compare-windowing (default: random base)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.files = args.files or (96 if args.small else 100)
    args.longest = args.longest or (8.0 if args.small else 16.0)
    if args.long_minutes is None:
        args.long_minutes = 10.0 if args.small else 60.0
    if args.compare_windowing:
        compare_windowing(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        throughput(args, work)
        if args.long_minutes > 0:
            long_file_memory(args, work)


if __name__ == "__main__":
    main()
