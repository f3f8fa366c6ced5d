"""Helpers for the pretraining tests, and the script `torchrun` runs for the DDP test.

* `micro_config()`: a SpidR small enough that a training step takes milliseconds on a CPU;
* `write_speechlike_corpus()`: short "speech-like" WAV files (harmonic vowels through formant
  resonators, noise bursts like fricatives, pauses), deterministic for a seed;
* `run_pretraining()`: one `SpidRPretrainer` run, shared by the in-process and torchrun tests;
* as a script (`torchrun ... pretrain_worker.py DATA OUT --max_steps N ...`): each rank trains and
  saves its final state dict to `OUT/rank{r}.pt`, with the log history; `--kill_during_save_at N`
  makes the process SIGKILL itself in the middle of writing checkpoint N (the resume tests).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from spidr_hf import SpidRConfig, SpidRForPreTraining

SR = 16_000

# F1, F2, F3 (Hz) of a few vowels (Peterson & Barney averages, male voices)
VOWEL_FORMANTS = {
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}


def micro_config(**overrides) -> SpidRConfig:
    """Hidden 32, 2 layers, 16 conv channels, 2 codebooks of 8 codewords, no dropout."""
    values = dict(
        conv_dim=[16] * 7,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_conv_pos_embedding_groups=4,
        num_codebooks=2,
        codebook_size=8,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        codebook_backend="torch",
    )
    values.update(overrides)
    return SpidRConfig(**values)


def micro_model(seed: int = 0, **overrides) -> SpidRForPreTraining:
    torch.manual_seed(seed)
    return SpidRForPreTraining(micro_config(**overrides))


def padded_batch(lengths: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random waveforms of `lengths` samples, zero-padded, with their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    waves = torch.zeros(len(lengths), max(lengths))
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        waves[row, :length] = torch.randn(length, generator=generator)
        mask[row, :length] = 1
    return {"input_values": waves, "attention_mask": mask}


def _resonate(signal: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    """A two-pole resonator (one formant) applied with torchaudio's IIR filter."""
    r = np.exp(-np.pi * bandwidth / SR)
    a = torch.tensor([1.0, -2 * r * np.cos(2 * np.pi * freq / SR), r * r], dtype=torch.float64)
    b = torch.tensor([1.0 - r, 0.0, 0.0], dtype=torch.float64)
    out = AF.lfilter(torch.from_numpy(signal).double()[None], a, b, clamp=False)[0]
    return out.numpy()


def _vowel(rng: np.random.Generator, duration: float) -> np.ndarray:
    n = int(duration * SR)
    f0 = rng.uniform(90, 220) * np.linspace(1.0, rng.uniform(0.85, 1.15), n)  # a gliding pitch
    phase = np.cumsum(f0 / SR)
    pulses = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)  # glottal pulse train
    source = pulses + 0.02 * rng.standard_normal(n)
    formants = VOWEL_FORMANTS[rng.choice(list(VOWEL_FORMANTS))]
    voiced = sum(_resonate(source, f, 60 + 40 * k) / (k + 1) for k, f in enumerate(formants))
    return voiced / (np.abs(voiced).max() + 1e-9)


def _fricative(rng: np.random.Generator, duration: float) -> np.ndarray:
    noise = rng.standard_normal(int(duration * SR))
    shaped = _resonate(noise, rng.uniform(3500, 6500), rng.uniform(800, 2000))
    return 0.5 * shaped / (np.abs(shaped).max() + 1e-9)


def _envelope(n: int) -> np.ndarray:
    ramp = min(n // 4, int(0.01 * SR))
    env = np.ones(n)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[n - ramp :] = np.linspace(1, 0, ramp)
    return env


def speechlike_utterance(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Segments of vowels (80-220 ms), fricative-like noise bursts (50-120 ms) and pauses (30-80 ms)."""
    segments, total = [], 0
    while total < seconds * SR:
        kind = rng.choice(["vowel", "vowel", "fricative", "pause"])
        if kind == "vowel":
            seg = _vowel(rng, rng.uniform(0.08, 0.22))
        elif kind == "fricative":
            seg = _fricative(rng, rng.uniform(0.05, 0.12))
        else:
            seg = 0.01 * rng.standard_normal(int(rng.uniform(0.03, 0.08) * SR))
        segments.append(seg * _envelope(len(seg)))
        total += len(seg)
    wave = np.concatenate(segments)[: int(seconds * SR)]
    return (0.3 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)


def write_speechlike_corpus(
    folder: Path, num_files: int, seconds: tuple[float, float] = (0.6, 1.2), seed: int = 0
) -> list[Path]:
    """`num_files` 16 kHz mono WAVs of `speechlike_utterance`, lengths uniform in `seconds`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_files):
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, speechlike_utterance(rng, rng.uniform(*seconds)), SR, subtype="FLOAT")
        paths.append(path)
    return paths


def run_pretraining(data: Path, output_dir: Path, model: SpidRForPreTraining | None = None, **arguments):
    """Train a micro model on `data` with `SpidRPretrainer`; returns the trainer."""
    from spidr_hf.training import SpidRPretrainer, SpidRTrainingArguments

    defaults = dict(
        output_dir=str(output_dir),
        per_device_max_batch_samples=32_000,
        max_samples=16_000,
        logging_steps=1,
        save_steps=10_000,
        report_to="none",
        disable_tqdm=True,
        lr_warmup_steps=2,
        lr_hold_steps=4,
        lr_decay_steps=4,
        seed=0,
    )
    defaults.update(arguments)
    args = SpidRTrainingArguments(**defaults)
    trainer = SpidRPretrainer(model if model is not None else micro_model(), args, train_dataset=str(data))
    trainer.train(resume_from_checkpoint=arguments.get("resume_from_checkpoint"))
    return trainer


def _main() -> None:
    """torchrun entry point: train on DATA and save this rank's final state and logs in OUT."""
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max_steps", type=int, default=3)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--freeze_feature_encoder_step", type=int, default=200_000)
    parser.add_argument("--save_steps", type=int, default=10_000)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--kill_during_save_at", type=int, help="SIGKILL this process while writing this checkpoint")
    options = parser.parse_args()
    torch.backends.mkldnn.enabled = False  # oneDNN re-plans every new input shape: slow for tiny convs
    if options.kill_during_save_at is not None:
        _kill_during_save(options.kill_during_save_at)
    model = micro_model(freeze_feature_encoder_step=options.freeze_feature_encoder_step,
                        feat_proj_dropout=options.dropout, hidden_dropout=options.dropout)  # fmt: skip
    trainer = run_pretraining(
        options.data,
        options.out / "run",
        model=model,
        max_steps=options.max_steps,
        save_steps=options.save_steps,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    rank = trainer.args.process_index
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(state, options.out / f"rank{rank}.pt")
    (options.out / f"rank{rank}.json").write_text(json.dumps(trainer.state.log_history))


def _kill_during_save(step: int) -> None:
    """Make the Trainer SIGKILL this process at checkpoint `step`, after its weights, optimizer and scheduler are written."""
    import signal

    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def save_then_die(self, output_dir):
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)  # the RNG state and trainer_state.json are never written
        save_rng_state(self, output_dir)

    Trainer._save_rng_state = save_then_die


if __name__ == "__main__":
    _main()
