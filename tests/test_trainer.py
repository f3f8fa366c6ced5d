"""SpidR pretraining through SpidRPretrainer: reference math, schedules, accumulation, resume, bad data, learning."""

from __future__ import annotations

import logging
import math
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from pretrain_worker import micro_model, run_pretraining, write_speechlike_corpus
from safetensors.torch import load_file
from spidr_hf.modeling import num_frames
from spidr_hf.training import (
    PreparedBatches,
    PretrainingError,
    SpidRPretrainer,
    SpidRTeacherCallback,
    SpidRTrainingArguments,
    TriStageSchedule,
    compute_span_mask,
)
from spidr_hf.training.trainer import feature_encoder_parameters
from transformers import TrainerCallback

from spidr_hf import SpidRConfig, SpidRForPreTraining

SR = 16_000


@pytest.fixture(autouse=True)
def _plain_cpu_convolutions():
    """oneDNN plans every new input shape anew: slower than the plain kernels for these tiny convs."""
    with torch.backends.mkldnn.flags(enabled=False):
        yield


class GradientRecorder(TrainerCallback):
    """Copies the (clipped) gradients the optimizer is about to use, at every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


class StateRecorder(TrainerCallback):
    """Copies the model's state dict at the end of every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})


class BatchRecorder(SpidRPretrainer):
    """Records a fingerprint of every micro-batch it trains on (data-order checks)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.__dict__.setdefault("seen", []).append(
            (tuple(inputs["input_values"].shape), float(inputs["input_values"].double().sum()))
        )
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _arguments(tmp_path: Path, **overrides) -> SpidRTrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "run"),
        logging_steps=1,
        save_steps=10_000,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return SpidRTrainingArguments(**values)


def _write_waves(folder: Path, waves: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, wave in enumerate(waves):
        sf.write(folder / f"utt{i:03d}.wav", np.asarray(wave, dtype=np.float32), SR, subtype="FLOAT")
    return folder


def _assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=lambda m, key=key: f"{key}: {m}")


# ------------------------------------------------------------------------------ schedules
def test_tri_stage_schedule_matches_its_formula():
    schedule = TriStageSchedule()  # the recipe: 12k warm-up, 188k hold, 200k decay, 0.01 scales
    assert schedule(0) == pytest.approx(0.01)
    assert schedule(6_000) == pytest.approx(0.01 + 0.99 * 0.5)
    assert schedule(12_000) == 1.0
    assert schedule(199_999) == 1.0
    assert schedule(200_000) == pytest.approx(1.0)
    assert schedule(300_000) == pytest.approx(math.exp(math.log(0.01) * 0.5))  # halfway: 0.1
    assert schedule(399_999) == pytest.approx(0.01, rel=1e-4)
    assert schedule(400_000) == schedule(10**6) == 0.01
    scaled = schedule.scaled_to(1_000)
    assert (scaled.warmup_steps, scaled.hold_steps, scaled.decay_steps) == (30, 470, 500)


def test_trainer_follows_the_tri_stage_learning_rate(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 4)[0].parent
    trainer = run_pretraining(
        data, tmp_path / "run", max_steps=8, learning_rate=1e-3, lr_warmup_steps=3, lr_hold_steps=2, lr_decay_steps=2
    )
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    schedule = TriStageSchedule(warmup_steps=3, hold_steps=2, decay_steps=2)
    # the Trainer logs the rate that step k (1-based) used: lr x factor(k - 1)
    assert logged == pytest.approx([1e-3 * schedule(k) for k in range(8)], rel=1e-6)
    assert logged[-1] == pytest.approx(1e-5)  # after all stages: final_lr_scale x lr


@pytest.mark.parametrize("step", [0, 1, 5_000, 20_000, 100_000, 184_000, 185_000, 400_000])
def test_spidr_ema_decay_matches_its_formula(step):
    model = micro_model()
    remaining = (1 - 0.999) * math.exp(-step / 20_000)
    expected = 1.0 if remaining <= 1e-7 else 1 - remaining
    assert model.ema_decay(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.999), (15_000, 0.999 + 0.0009 * 0.5), (30_000, 0.9999), (150_000, 0.9999), (200_000, 1.0), (300_000, 1.0)],
)
def test_dinosr_ema_decay_matches_its_formula(step, expected):
    model = micro_model(ema_schedule="dinosr", head_input="last_hidden_state")
    assert model.ema_decay(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "schedule",
    [
        dict(ema_threshold=0.01),  # SpidR: 1 - d(1) < 0.01, so d = 1 from the first step
        dict(ema_schedule="dinosr", head_input="last_hidden_state", ema_frozen_step=1),  # DinoSR, frozen teacher
        dict(ema_schedule="dinosr", head_input="last_hidden_state", ema_start_decay=0.0, ema_final_decay=0.0),
    ],
    ids=["spidr-decay-1", "dinosr-decay-1", "dinosr-decay-0"],
)
def test_the_teacher_is_untouched_at_decay_0_or_1(schedule):
    """As in the reference: the EMA runs only for 0 < d < 1; the positional convolution is not copied either."""
    model = micro_model(**schedule)
    with torch.no_grad():  # a student unlike its teacher everywhere, positional convolution included
        for p in model.spidr.encoder.parameters():
            p.add_(1.0)
    teacher = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    assert model.ema_step(1) in (0.0, 1.0)
    _assert_states_equal(teacher, model.teacher.state_dict(), atol=0)
    assert int(model.current_step) == 1


def test_the_teacher_moves_and_copies_the_positional_convolution_below_decay_1():
    model = micro_model()
    with torch.no_grad():
        for p in model.spidr.encoder.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    decay = model.ema_step(1)
    assert 0 < decay < 1
    student = model.spidr.encoder.state_dict()
    for name, value in model.teacher.state_dict().items():
        want = student[name] if name.startswith("pos_conv_embed.") else before[name] + (1 - decay) * (student[name] - before[name])
        torch.testing.assert_close(value, want, atol=1e-6, rtol=0, msg=name)


# ------------------------------------------------------------------------------ replayed batches
def test_prepared_batches_are_checked_naming_the_step_and_the_fix(tmp_path):
    config = micro_model().config
    frames = config.frame_geometry.num_frames(8_000)
    good = {"input_values": torch.randn(2, 8_000), "mask_time_indices": compute_span_mask((2, frames))}
    cases = [
        ({"input_values": good["input_values"]}, r"prepared batch 2 \(step 2\) has keys \['input_values'\]: it needs exactly"),
        ({**good, "attention_mask": torch.ones(2, 8_000)}, r"prepared batch 2 \(step 2\) has keys .*attention_mask"),
        ({**good, "mask_time_indices": good["mask_time_indices"][:1]}, r"batch 2 \(step 2\): input_values has 2 rows but mask_time_indices has 1: give one mask row per utterance"),
        ({**good, "mask_time_indices": torch.zeros(2, frames, dtype=torch.bool)}, r"batch 2 \(step 2\): mask_time_indices has no masked frame.*compute_span_mask"),
        ({**good, "input_values": good["input_values"].long()}, r"batch 2 \(step 2\): input_values must be a non-empty float tensor"),
        ({**good, "mask_time_indices": good["mask_time_indices"].long()}, r"batch 2 \(step 2\): mask_time_indices must be a bool tensor"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            PreparedBatches([good, bad])
    wrong_frames = PreparedBatches([good, {**good, "mask_time_indices": good["mask_time_indices"][:, :-1]}])
    args = _arguments(tmp_path, max_steps=2)
    with pytest.raises(ValueError, match=rf"prepared batch 2 \(step 2\): 8000 samples give {frames} frames but mask_time_indices has {frames - 1}"):
        SpidRPretrainer(micro_model(), args, train_dataset=wrong_frames)


def test_prepared_batches_are_trained_on_in_order(tmp_path):
    """Each step trains on its prepared batch: the logged loss is that batch's loss under the weights of the time."""
    config = micro_model().config
    frames = config.frame_geometry.num_frames(8_000)
    batches = [
        {"input_values": torch.randn(2, 8_000, generator=torch.Generator().manual_seed(i)),
         "mask_time_indices": compute_span_mask((2, frames), generator=torch.Generator().manual_seed(i))}
        for i in range(3)
    ]  # fmt: skip
    trainer = BatchRecorder(micro_model(), _arguments(tmp_path, max_steps=4), train_dataset=PreparedBatches(batches))
    trainer.train()
    expected = [batches[i % 3]["input_values"] for i in range(4)]  # the sequence starts over after its end
    assert trainer.seen == [(tuple(x.shape), float(x.double().sum())) for x in expected]
    assert "6 utterances" in trainer.run_facts()["training data"]


# ------------------------------------------------------------------------------ reference math
def test_one_optimizer_step_reproduces_the_reference(converted_dir, expected, tmp_path):
    """Loss, gradients, AdamW update, codebooks and teacher after one step of the reference batch."""
    waves, mask = expected["pretrain.waveforms"], expected["pretrain.mask"]
    model = SpidRForPreTraining.from_pretrained(converted_dir, codebook_backend="torch")
    teacher_before = {n: p.detach().clone() for n, p in model.teacher.named_parameters()}
    student_before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("teacher.")}
    grads = GradientRecorder()
    batches = PreparedBatches([{"input_values": waves, "mask_time_indices": mask}])  # the fixture's batch
    trainer = SpidRPretrainer(model, _arguments(tmp_path, max_steps=1), train_dataset=batches, callbacks=[grads])
    trainer.train()

    # the loss of the step is the mean of the reference's per-frame losses
    frame_losses = expected["pretrain.frame_losses"]
    assert trainer.state.log_history[0]["loss"] == pytest.approx(float(frame_losses.mean()), abs=1e-4)

    # the gradients are those of mean(frame_losses), computed here by plain autograd
    reference = SpidRForPreTraining.from_pretrained(converted_dir, codebook_backend="torch").train()
    reference.defer_codebook_update = True
    reference(waves, mask_time_indices=mask).frame_losses.mean().backward()
    (step_grads,) = grads.steps
    for name, p in reference.named_parameters():
        if name in step_grads:
            torch.testing.assert_close(step_grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    last_norm = f"spidr.encoder.layers.{model.config.num_hidden_layers - 1}.final_layer_norm.weight"
    assert last_norm not in step_grads  # SpidR never uses the last LayerNorm: frozen as in the reference
    assert not any(name.startswith("teacher.") for name in step_grads)

    # AdamW's first update, by hand: p <- p (1 - lr wd) - lr g / (|g| + eps), lr = 0.01 x 5e-4 (warm-up start)
    lr, wd, eps = 5e-4 * 0.01, 0.01, 1e-6
    for name, p in model.named_parameters():
        if name in step_grads:
            g = step_grads[name]
            expected_p = student_before[name] * (1 - lr * wd) - lr * g / (g.abs() + eps)
            torch.testing.assert_close(p.detach(), expected_p, atol=1e-7, rtol=1e-5, msg=name)
        elif not name.startswith("teacher."):
            assert torch.equal(p.detach(), student_before[name]), name

    # codebooks: the reference's update after this batch
    for i in range(model.config.num_codebooks):
        torch.testing.assert_close(model.codebook_sums[i], expected[f"pretrain.updated_codebook{i + 1}"], atol=1e-5, rtol=0)
        torch.testing.assert_close(model.codebook_counts[i], expected[f"pretrain.updated_counts{i + 1}"], atol=1e-5, rtol=0)

    # teacher: one EMA step t + (1 - d)(s - t) with d = d(1) (after the first optimizer step),
    # the positional convolution copied
    decay = 1 - (1 - 0.999) * math.exp(-1 / model.config.ema_timescale)
    student = dict(model.spidr.encoder.named_parameters())
    for name, t in model.teacher.named_parameters():
        if name.startswith("pos_conv_embed."):
            want = student[name].detach()
        else:
            want = teacher_before[name] + (1 - decay) * (student[name].detach() - teacher_before[name])
        torch.testing.assert_close(t.detach(), want, atol=1e-7, rtol=0, msg=name)
    assert int(model.current_step) == 1


# ------------------------------------------------------------------------------ accumulation
class FixedMaskCollator:
    """Stacks equal-length utterances with a fixed span mask per utterance (independent of batching)."""

    def __init__(self, num_utterances: int, frames: int) -> None:
        self.masks = [
            compute_span_mask((1, frames), generator=torch.Generator().manual_seed(i))[0] for i in range(num_utterances)
        ]

    def __call__(self, items):
        return {
            "input_values": torch.stack([item["input_values"] for item in items]),
            "mask_time_indices": torch.stack([self.masks[item["index"]] for item in items]),
            "num_skipped": 0,
        }


def _accumulation_run(tmp_path: Path, data: Path, name: str, budget: int, accumulation: int, length: int):
    grads, states = GradientRecorder(), StateRecorder()
    config = micro_model().config
    args = _arguments(
        tmp_path / name,
        max_steps=2,
        max_samples=length,
        per_device_max_batch_samples=budget,
        gradient_accumulation_steps=accumulation,
    )
    collator = FixedMaskCollator(4, num_frames(length, config.conv_kernel, config.conv_stride))
    trainer = SpidRPretrainer(
        micro_model(), args, train_dataset=str(data), data_collator=collator, callbacks=[grads, states]
    )
    trainer.train()
    return trainer, grads, states


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """2 micro-batches of 2 utterances give the update of 1 batch of 4; the EMA runs once per step."""
    length = 8_000
    rng = np.random.default_rng(0)
    data = _write_waves(tmp_path / "data", [0.1 * rng.standard_normal(length) for _ in range(4)])
    big, big_grads, big_states = _accumulation_run(tmp_path, data, "big", 4 * length, 1, length)
    small, small_grads, small_states = _accumulation_run(tmp_path, data, "small", 2 * length, 2, length)

    assert len(big_grads.steps) == len(small_grads.steps) == 2
    for big_step, small_step in zip(big_grads.steps, small_grads.steps, strict=True):
        assert big_step.keys() == small_step.keys()
        for name in big_step:
            torch.testing.assert_close(small_step[name], big_step[name], atol=1e-7, rtol=1e-5, msg=name)
    for big_state, small_state in zip(big_states.steps, small_states.steps, strict=True):
        _assert_states_equal(big_state, small_state)  # student, teacher, codebooks after each step
    assert int(big.model.current_step) == int(small.model.current_step) == 2  # one EMA per optimizer step
    big_losses = [e["loss"] for e in big.state.log_history if "loss" in e]
    small_losses = [e["loss"] for e in small.state.log_history if "loss" in e]
    assert small_losses == pytest.approx(big_losses, abs=1e-6)


# ------------------------------------------------------------------------------ resume
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """3 steps, stop, resume, 3 more == 6 uninterrupted: weights, teacher, codebooks, data order."""
    data = write_speechlike_corpus(tmp_path / "data", 10, seconds=(0.6, 1.4))[0].parent

    def run(name, **kwargs):
        trainer = BatchRecorder(
            micro_model(feat_proj_dropout=0.1, hidden_dropout=0.1),  # dropout: the RNG state must resume too
            _arguments(tmp_path / name, max_steps=6, save_steps=3, max_samples=16_000, per_device_max_batch_samples=40_000),
            train_dataset=str(data),
        )
        trainer.train(**kwargs)
        return trainer

    full = run("full")
    epoch_batches = len(full.get_train_dataloader())
    assert epoch_batches < 6  # the resumed part crosses an epoch boundary
    checkpoint = Path(full.args.output_dir) / "checkpoint-3"
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()
    }
    resumed = run("resumed", resume_from_checkpoint=str(checkpoint))

    assert resumed.seen == full.seen[3:]
    assert int(resumed.model.current_step) == 6
    _assert_states_equal(full.model.state_dict(), resumed.model.state_dict())


def test_data_order_is_a_function_of_the_seed_not_of_the_workers(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 8, seconds=(0.6, 1.4))[0].parent

    def run(name, seed, workers):
        args = _arguments(
            tmp_path / name, max_steps=4, max_samples=16_000, per_device_max_batch_samples=40_000, seed=seed,
            dataloader_num_workers=workers,
        )  # fmt: skip
        trainer = BatchRecorder(micro_model(), args, train_dataset=str(data))
        trainer.train()
        return trainer

    in_process, with_workers, other_seed = run("a", 0, 0), run("b", 0, 2), run("c", 1, 0)
    assert with_workers.seen == in_process.seen
    _assert_states_equal(in_process.model.state_dict(), with_workers.model.state_dict())
    assert other_seed.seen != in_process.seen


def test_trains_from_a_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    rows = [{"array": 0.1 * rng.standard_normal(12_000), "sampling_rate": SR} for _ in range(4)]
    dataset = datasets.Dataset.from_dict({"audio": rows})
    args = _arguments(tmp_path, max_steps=2, max_samples=12_000, per_device_max_batch_samples=24_000)
    trainer = SpidRPretrainer(micro_model(), args, train_dataset=dataset)
    trainer.train()
    assert len(trainer.train_dataset) == 4 and int(trainer.model.current_step) == 2
    assert "in-memory dataset: 4 utterances" in trainer.run_facts()["training data"]


# ------------------------------------------------------------------------------ data problems
def test_bad_files_are_dropped_or_skipped_and_counted(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 6, seconds=(0.6, 1.0))[0].parent
    (data / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" + bytes(range(256)) * 8)
    sf.write(data / "short.wav", np.zeros(1_000, dtype=np.float32), SR)  # under min_samples: dropped
    rng = np.random.default_rng(1)
    sf.write(data / "stereo.wav", 0.1 * rng.standard_normal((12_000, 2)).astype(np.float32), SR)  # down-mixed
    sf.write(data / "rate8k.wav", 0.1 * rng.standard_normal(6_000).astype(np.float32), 8_000)  # resampled
    args = _arguments(tmp_path, max_steps=8, max_samples=16_000, per_device_max_batch_samples=32_000)

    with pytest.raises(ValueError, match="corrupt.wav"):
        SpidRPretrainer(micro_model(), _arguments(tmp_path, strict_audio=True), train_dataset=str(data))

    trainer = SpidRPretrainer(micro_model(), args, train_dataset=str(data))
    indexed = {Path(u.source).name: u.num_samples for u in trainer.train_dataset.utterances}
    assert "corrupt.wav" not in indexed and "short.wav" not in indexed
    assert indexed["stereo.wav"] == 12_000 and indexed["rate8k.wav"] == 12_000
    (data / "utt000.wav").unlink()  # a file that disappears after indexing: skipped when its batch comes
    trainer.train()

    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 8 and all(math.isfinite(e["loss"]) for e in logs)
    epochs = math.ceil(trainer.state.epoch)
    assert sum(e["skipped_files"] for e in logs) == trainer.metrics.total_skipped_files == epochs
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_a_batch_of_unreadable_files_is_skipped(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 3, seconds=(1.1, 1.3))[0].parent
    # one utterance per batch: the budget holds exactly one 1 s crop
    args = _arguments(tmp_path, max_steps=3, max_samples=16_000, per_device_max_batch_samples=16_000)
    model = micro_model()
    trainer = SpidRPretrainer(model, args, train_dataset=str(data))
    for name in ("utt000.wav", "utt001.wav"):
        (data / name).unlink()
    trainer.train()
    assert trainer.metrics.total_skipped_files == 2
    assert int(model.current_step) == 3  # empty steps still count as optimizer steps
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_audio_that_cannot_be_read_stops_the_run_before_step_1(tmp_path):
    """A manifest of missing files used to train 5 "steps" with loss 0 and write a model."""
    lines = "".join(f"{tmp_path / 'gone'}/{i}.wav,16000\n" for i in range(3))
    (tmp_path / "missing.csv").write_text("path,num_samples\n" + lines)
    args = _arguments(tmp_path, max_steps=2, max_samples=16_000, per_device_max_batch_samples=32_000)
    with pytest.raises(ValueError, match=r"none of the 3 training utterance\(s\) can be read \(e.g. .*gone/0.wav"):
        SpidRPretrainer(micro_model(), args, train_dataset=str(tmp_path / "missing.csv"))
    _write_waves(tmp_path / "short", [np.zeros(1_000), np.zeros(500)])
    with pytest.raises(ValueError, match=r"no usable audio in .*short: 2 utterance\(s\) found, 0 unreadable, 2 shorter than"):
        SpidRPretrainer(micro_model(), args, train_dataset=str(tmp_path / "short"))


def test_steps_without_audio_stop_the_run(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 3, seconds=(1.1, 1.3))[0].parent
    args = _arguments(tmp_path, max_steps=6, max_samples=16_000, per_device_max_batch_samples=16_000, max_empty_steps=2)
    trainer = SpidRPretrainer(micro_model(), args, train_dataset=str(data))
    for path in data.iterdir():  # the files go missing after indexing
        path.unlink()
    with pytest.raises(PretrainingError, match="stopped at step 2: 2 consecutive optimizer steps found no readable audio"):
        trainer.train()


class PoisonWeights(TrainerCallback):
    """Makes the run diverge at the end of optimizer step `step`: a NaN in the feature projection."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.spidr.feature_projection.projection.weight[0, 0] = float("nan")


@pytest.mark.parametrize(
    ("poisoned_after", "save_steps", "logging_steps", "problem", "kept"),
    [  # caught at a training log, before a checkpoint, and (weights only) before a checkpoint
        (3, 2, 1, "stopped at step 4: the loss or its gradient is not finite (NaN or inf) from step 4 on", "checkpoint-2"),
        (3, 2, 100, "stopped at step 4: the loss or its gradient is not finite (NaN or inf) from step 4 on", "checkpoint-2"),
        (4, 4, 100, "stopped at step 4: the model's weights are not finite", None),
    ],
    ids=["logged", "saved", "weights"],
)
def test_a_non_finite_run_stops_and_keeps_its_last_good_checkpoint(
    tmp_path, poisoned_after, save_steps, logging_steps, problem, kept
):
    """The Trainer's NaN filter logged such a run as loss 0 and it saved non-finite weights, exiting 0."""
    data = write_speechlike_corpus(tmp_path / "data", 4)[0].parent
    args = _arguments(tmp_path, max_steps=8, max_samples=16_000, per_device_max_batch_samples=32_000,
                      save_steps=save_steps, logging_steps=logging_steps)  # fmt: skip
    trainer = SpidRPretrainer(micro_model(), args, train_dataset=str(data), callbacks=[PoisonWeights(poisoned_after)])
    intact = f"the last complete checkpoint, {kept}, is intact" if kept else "no checkpoint was written"
    with pytest.raises(PretrainingError, match=f"{re.escape(problem)}.*{intact}"):
        trainer.train()
    out = Path(args.output_dir)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ([kept] if kept else [])
    for weights in out.rglob("*.safetensors"):  # nothing non-finite was ever written
        assert all(torch.isfinite(t).all() for t in load_file(weights).values()), weights


def test_a_batch_budget_below_max_samples_shortens_the_crops(tmp_path, caplog):
    """--per_device_max_batch_samples 64000 used to be refused (it must hold one 320000-sample crop)."""
    with caplog.at_level(logging.WARNING):
        args = _arguments(tmp_path, per_device_max_batch_samples=64_000)
    assert args.max_samples == 64_000
    assert "cropping utterances to 64000 samples" in caplog.text


# ------------------------------------------------------------------------------ optimizer, freezing, EMA hook
def test_optimizer_excludes_the_teacher_and_freezes_the_feature_encoder(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 4)[0].parent
    states = StateRecorder()
    model = micro_model(freeze_feature_encoder_step=2)
    args = _arguments(tmp_path, max_steps=4, max_samples=16_000, per_device_max_batch_samples=32_000)
    trainer = SpidRPretrainer(model, args, train_dataset=str(data), callbacks=[states])
    trainer.train()

    groups = {g["name"]: {id(p) for p in g["params"]} for g in trainer.optimizer.param_groups}
    assert set(groups) == {"student", "feature_encoder"}
    assert not any(id(p) in groups["student"] | groups["feature_encoder"] for p in model.teacher.parameters())
    assert groups["feature_encoder"] == {id(p) for p in feature_encoder_parameters(model)}
    assert all(g["weight_decay"] == 0.01 for g in trainer.optimizer.param_groups)

    encoder_keys = [k for k in states.steps[0] if k.startswith(("spidr.feature_extractor.", "spidr.feature_projection."))]
    moved = [any(not torch.equal(a[k], b[k]) for k in encoder_keys) for a, b in pairwise(states.steps)]
    assert moved == [True, False, False]  # trained for steps 1-2, frozen from step 3 on
    assert not any(p.requires_grad for p in feature_encoder_parameters(model))


def test_a_skipped_optimizer_step_moves_neither_codebooks_nor_teacher():
    model = micro_model().train()
    model.defer_codebook_update = True
    waves = torch.randn(2, 8_000)
    mask = compute_span_mask((2, num_frames(8_000, model.config.conv_kernel, model.config.conv_stride)))
    with torch.no_grad():
        model(waves, mask_time_indices=mask)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    class SkippedStep:
        step_was_skipped = True

    SpidRTeacherCallback().on_optimizer_step(None, None, None, model=model, optimizer=SkippedStep())
    _assert_states_equal(before, model.state_dict(), atol=0)
    model.apply_codebook_update()  # nothing left pending from the skipped step
    _assert_states_equal(before, model.state_dict(), atol=0)


# ------------------------------------------------------------------------------ learning
def test_tiny_config_learns_on_speechlike_audio(tmp_path):
    """The tiny config on synthetic vowels/fricatives: the loss falls, the targets do not collapse."""
    data = write_speechlike_corpus(tmp_path / "data", 16, seconds=(1.0, 2.0))[0].parent
    torch.manual_seed(0)
    model = SpidRForPreTraining(SpidRConfig.tiny(codebook_backend="torch"))
    trainer = run_pretraining(
        data,
        tmp_path / "run",
        model=model,
        max_steps=24,
        learning_rate=2e-3,
        lr_warmup_steps=2,
        lr_hold_steps=100,
        per_device_max_batch_samples=64_000,
        max_samples=32_000,
        logging_steps=4,
    )
    logs = [e for e in trainer.state.log_history if "loss" in e]
    first, last = logs[0], logs[-1]
    uniform = math.log(model.config.codebook_size)
    assert first["loss"] == pytest.approx(uniform, abs=0.2)  # untrained heads: about uniform
    assert last["loss"] < first["loss"] - 1.0
    assert last["prediction_perplexity"] < 0.25 * first["prediction_perplexity"]
    assert all(e["target_perplexity"] > 2.5 for e in logs)  # several codewords in use: no collapse to one
    assert all(e["audio_seconds_per_second"] > 0 for e in logs)


def test_time_budget_stops_at_the_first_step_past_it():
    from spidr_hf.training import TimeBudget
    from transformers import TrainerControl, TrainerState

    now = [100.0]
    budget = TimeBudget(10.0, clock=lambda: now[0])
    state, control = TrainerState(max_steps=50), TrainerControl()
    budget.on_train_begin(None, state, control)
    for step, seconds in ((1, 104.0), (2, 109.9)):
        state.global_step, now[0] = step, seconds
        budget.on_step_end(None, state, control)
        assert not control.should_training_stop and not budget.stopped_early
    state.global_step, now[0] = 3, 110.0
    budget.on_step_end(None, state, control)
    assert control.should_training_stop and budget.stopped_early
    # a run that reaches max_steps past its budget ended by max_steps, not by the budget
    budget.on_train_begin(None, state, TrainerControl())
    state.global_step, now[0] = 50, 200.0
    budget.on_step_end(None, state, control := TrainerControl())
    assert not budget.stopped_early
    with pytest.raises(ValueError, match="time budget must be a positive number of seconds"):
        TimeBudget(0)
