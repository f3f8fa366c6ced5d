"""SpidR pretraining through a transformers `Trainer` subclass.

The training loop, checkpointing, logging, mixed precision and DDP are the Trainer's (with
accelerate). `SpidRPretrainer` adds only what SpidR needs, through documented hooks:

* `get_train_dataloader`: the audio dataset, a length-budget batch sampler sharded over ranks,
  the pretraining collator (crops, span masks);
* `get_batch_samples` + `compute_loss`: the loss of an optimizer step is the mean over the masked
  frames of *all* its micro-batches on *all* ranks, exactly the loss of one big batch;
* `create_optimizer` / `create_scheduler`: AdamW over the student only (two groups, the teacher
  excluded) and the tri-stage learning rate;
* `SpidRTeacherCallback.on_optimizer_step`: codebook update, then teacher EMA, once per real
  optimizer step; the feature encoder is frozen on schedule;
* `log`: perplexities, EMA decay, skipped files and audio throughput next to the Trainer's
  loss, learning rate and gradient norm (so they reach TensorBoard and every other logger).

Distributed training is DDP, one process per device: `torchrun --nproc_per_node N` (tested on
CPU with gloo: ranks stay identical and equal one process with the same global batch) or
`accelerate launch --multi_gpu` (which starts the same torch.distributed processes; not tested
here, no GPU). The codebook statistics are all-reduced by the model and every rank applies the same
EMA, so all ranks hold identical teachers; DDP does not broadcast buffers. FSDP is untested and not
expected to work: the EMA and the codebook update read full (unsharded) parameters on every rank.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from safetensors import SafetensorError
from spidr_hf.modeling import SAMPLING_RATE, SpidRConfig, SpidRFeatureExtractor, SpidRForPreTraining
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, seed_worker
from transformers.training_args import ParallelMode

from spidr_hf.model_dir import save_pretrained_with_code, write_model_card
from spidr_hf.progress import progress_bar
from spidr_hf.runs import die_with_parent, quiet_pickle_protocol, write_failure

from .arguments import SpidRTrainingArguments
from .checkpoints import STAGING_FOLDER, checkpoint_problem, last_complete_checkpoint, publish_checkpoint
from .data import (
    LengthBudgetBatchSampler,
    PreparedBatches,
    PretrainingCollator,
    SpidRAudioDataset,
    is_empty_batch,
)
from .monitoring import PretrainingError, PretrainingMetrics, TrainingHealth, all_finite
from .recipe import format_hours, hours_of_audio

logger = logging.getLogger(__name__)
# what torch.save's C++ writer says when a write fails (it raises a RuntimeError without an errno)
_TORCH_SAVE_FAILURES = ("iostream error", "PytorchStreamWriter failed", "file write failed")


# ---------------------------------------------------------------------------------- model helpers
def unwrap(model: nn.Module) -> SpidRForPreTraining:
    """The `SpidRForPreTraining` inside a DDP / compiled wrapper."""
    return extract_model_from_parallel(model, keep_torch_compile=False)


def feature_encoder_parameters(model: SpidRForPreTraining) -> list[nn.Parameter]:
    """Parameters of the shared waveform feature extractor and projection (frozen on schedule)."""
    return [*model.spidr.feature_extractor.parameters(), *model.spidr.feature_projection.parameters()]


def freeze_feature_encoder_if_due(model: SpidRForPreTraining, step: int | None = None) -> bool:
    """Freeze the feature encoder once the step reaches `config.freeze_feature_encoder_step`.

    `step` is the number of optimizer (EMA) steps done, `model.current_step` by default, so the
    encoder trains for exactly `freeze_feature_encoder_step` updates, as in the reference.
    Returns whether it is frozen now.
    """
    step = int(model.current_step) if step is None else step
    if step < model.config.freeze_feature_encoder_step:
        return False
    if any(p.requires_grad for p in feature_encoder_parameters(model)):
        logger.info("step %d: freezing the feature extractor and projection", step)
        model.freeze_feature_encoder()
    return True


def pretraining_param_groups(model: SpidRForPreTraining, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: the student (encoder, mask embedding, heads) and the feature encoder.

    The teacher is excluded by name, not only by `requires_grad`: it moves by EMA alone. As in the
    reference, weight decay applies to every parameter. The feature encoder keeps its own group so
    the optimizer's layout is the same before and after it is frozen (checkpoints stay loadable).
    """
    teacher = {id(p) for p in model.teacher.parameters()}
    encoder = {id(p) for p in feature_encoder_parameters(model)}
    student, frozen_later = [], []
    for p in model.parameters():
        if id(p) in teacher:
            continue
        if id(p) in encoder:
            frozen_later.append(p)
        elif p.requires_grad:
            student.append(p)
    return [
        {"params": student, "weight_decay": weight_decay, "name": "student"},
        {"params": frozen_later, "weight_decay": weight_decay, "name": "feature_encoder"},
    ]


# ---------------------------------------------------------------------------------- teacher callback
class SpidRTeacherCallback(TrainerCallback):
    """Codebooks, EMA teacher and feature-encoder freezing, on the Trainer's step events.

    Why `on_optimizer_step`: the Trainer fires it once per optimizer step, right after
    `optimizer.step()` and only after the last micro-batch of a gradient-accumulation cycle, so
    the teacher moves once per update however many micro-batches there were. Micro-batches
    of a step all see the same codebooks because the trainer sets `model.defer_codebook_update`,
    and their statistics are applied here in one collective. When accelerate reports the step as
    skipped (fp16 overflow), neither the codebooks nor the teacher move.
    """

    def __init__(self) -> None:
        self.last_ema_decay: float | None = None
        self._ema_steps: int | None = None  # host copy of model.current_step: no device sync per step
        self._frozen = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self._ema_steps = int(unwrap(kwargs["model"]).current_step)  # after a resume has loaded the checkpoint
        self._frozen = False

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not self._frozen:
            self._frozen = freeze_feature_encoder_if_due(unwrap(kwargs["model"]), self._ema_steps)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # DDP with find_unused_parameters hands frozen parameters zero gradients; AdamW would still
        # apply momentum and weight decay to them. A None gradient makes it skip them.
        if self._frozen:
            for p in feature_encoder_parameters(unwrap(kwargs["model"])):
                p.grad = None

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        model = unwrap(kwargs["model"])
        if getattr(kwargs.get("optimizer"), "step_was_skipped", False):
            model.discard_codebook_update()  # a skipped step changes nothing
            return
        model.apply_codebook_update()
        if self._ema_steps is not None:
            self._ema_steps += 1
        self.last_ema_decay = model.ema_step(self._ema_steps)  # the host count: no wait for the device


class PretrainingProgress(ProgressCallback):
    """The Trainer's progress bar under the package's policy (:mod:`spidr_hf.progress`: a line every few percent
    in a log, nothing with ``--quiet``), with the last logged loss and perplexities in its postfix.

    Each training log (the dict the Trainer writes under its bar) is appended to `log_file` as a JSON line
    when one is given, so that the bar stays the only output; without one it is written under the bar.
    """

    POSTFIX = {"loss": "loss", "target_perplexity": "target ppl", "prediction_perplexity": "predicted ppl"}
    """Log keys shown in the bar's postfix, with their labels."""

    def __init__(self, log_file: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.log_file = Path(log_file) if log_file is not None else None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = progress_bar(state.max_steps, desc="pretrain", unit="step", dynamic_ncols=True)
        self.current_step = 0

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None:
            return
        postfix = {label: f"{logs[key]:.3g}" for key, label in self.POSTFIX.items() if key in logs}
        if postfix and self.training_bar is not None:
            self.training_bar.set_postfix(postfix)
        if self.log_file is None:
            super().on_log(args, state, control, logs=logs, **kwargs)
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a", encoding="utf-8") as log:
            log.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")


class TimeBudget(TrainerCallback):
    """Stop training at the first optimizer step that ends `seconds` or more after training began.

    For runs sized by wall-clock time (the GPU demo): `max_steps` stays an upper bound, and
    `stopped_early` tells whether the budget, not `max_steps`, ended the run.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not seconds > 0:
            raise ValueError(f"the training time budget must be a positive number of seconds, got {seconds!r}.")
        self.seconds, self.clock = seconds, clock
        self.started: float | None = None
        self.stopped_early = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.started, self.stopped_early = self.clock(), False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.clock() - self.started >= self.seconds and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_early = True


# ---------------------------------------------------------------------------------- data loading
class FixedLengthEpochs(Sampler[list]):
    """Every epoch yields exactly as many batches as the first one.

    Length-budget batching fills batches differently each epoch, so the batch count can change by
    a few. The Trainer computes epochs and, on resume, how many batches to skip from one fixed
    length: longer epochs are cut (their last batches, in shuffled order) and shorter ones repeat
    their first batches, which keeps that arithmetic, and so exact resumption, right.
    """

    def __init__(self, sampler: LengthBudgetBatchSampler) -> None:
        self.sampler = sampler
        sampler.set_epoch(0)
        self.num_batches = len(sampler)

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list]:
        return islice(cycle(list(self.sampler)), self.num_batches)


class EpochDataLoader(DataLoader):
    """A DataLoader that forwards `set_epoch` to its batch sampler (the Trainer calls it every epoch)."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def build_train_dataset(source: Any, args: SpidRTrainingArguments) -> SpidRAudioDataset | PreparedBatches:
    """`source` (a `SpidRAudioDataset`, `PreparedBatches`, a folder/manifest path or a `datasets.Dataset`) as a dataset."""
    if isinstance(source, SpidRAudioDataset | PreparedBatches):
        return source
    if source is None:
        raise ValueError("SpidRPretrainer needs training audio: pass train_dataset or set args.train_data.")
    return SpidRAudioDataset.from_source(
        source,
        min_samples=args.min_samples,
        max_samples=args.max_samples,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        strict=args.strict_audio,
    )


# ---------------------------------------------------------------------------------- the trainer
class SpidRPretrainer(Trainer):
    """A `Trainer` for [`SpidRForPreTraining`] with the SpidR recipe (see the module docstring).

    Args:
        model: the pretraining model (student, teacher, codebooks, heads).
        args: a [`SpidRTrainingArguments`].
        train_dataset: a `SpidRAudioDataset`, a folder / manifest path or a `datasets.Dataset`;
            default: `args.train_data`. Or `PreparedBatches`: ready-made batches (audio and
            masks) trained on in their order, one per micro-batch, without the sampler and collator.
        data_collator: default: a `PretrainingCollator` with the arguments' masking settings.
        kwargs: passed to `Trainer` (e.g. `callbacks`).

    Loss normalisation: for an optimizer step with micro-batches `b` on ranks `r`, each
    micro-batch contributes `sum(frame_losses_b) * world_size / N`, where `N` is the number of
    masked frames of the whole step (all micro-batches, all ranks; one all-reduce per step in
    `get_batch_samples`). Gradients add up over micro-batches and DDP averages them over ranks,
    so the update is the gradient of `sum(all frame losses) / N`: one big batch.
    """

    # compute_loss already divides by the step's global masked-frame count: no extra 1/accumulation.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: SpidRForPreTraining,
        args: SpidRTrainingArguments,
        train_dataset: Any = None,
        data_collator: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, SpidRTrainingArguments):
            raise TypeError("SpidRPretrainer needs SpidRTrainingArguments (they carry the data and masking settings).")
        if args.n_gpu > 1:
            raise ValueError(
                "nn.DataParallel (several GPUs in one process) is not supported: the codebooks and teacher must "
                "update once per step. Launch one process per GPU with torchrun or accelerate launch."
            )
        if args.world_size > 1 and args.parallel_mode != ParallelMode.DISTRIBUTED:
            raise RuntimeError(
                f"{args.world_size} processes were launched but the Trainer is not in distributed mode "
                f"({args.parallel_mode}); on CPUs pass --use_cpu true so accelerate forms a gloo process group."
            )
        # Micro-batches of one optimizer step must all see the same codebooks (updated in on_optimizer_step).
        model.defer_codebook_update = True
        if args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = _needs_find_unused_parameters(model, args)
        self.data_seed = args.data_seed if args.data_seed is not None else args.seed
        train_dataset = build_train_dataset(train_dataset if train_dataset is not None else args.train_data, args)
        if isinstance(train_dataset, PreparedBatches):
            train_dataset.check_frames(model.config.frame_geometry)
        else:
            train_dataset.check_readable()  # before step 1: a manifest of missing files would train on nothing
        if data_collator is None:
            data_collator = PretrainingCollator.from_config(
                model.config,
                seed=self.data_seed,
                mask_prob=args.mask_prob,
                mask_length=args.mask_length,
                min_masks=args.min_masks,
            )
        self.teacher_callback = SpidRTeacherCallback()
        callbacks = [self.teacher_callback, *(kwargs.pop("callbacks", None) or [])]
        kwargs.setdefault("processing_class", SpidRFeatureExtractor())  # saved with every checkpoint
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, callbacks=callbacks, **kwargs
        )
        if self.pop_callback(ProgressCallback) is not None:
            self.add_callback(PretrainingProgress())
        self.metrics = PretrainingMetrics()
        self.health = TrainingHealth()
        self._writing_checkpoint = False

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        """Length-budget batches of this rank's shard, collated into cropped, masked batches.

        The order is a function of the data seed and the epoch; crops and masks are functions of
        (seed, epoch, utterances of the batch). The loader is not passed through
        `accelerator.prepare`: the sampler already shards by rank, and the Trainer moves batches to
        the device itself. `PreparedBatches` are yielded as they are, in order.
        """
        if isinstance(self.train_dataset, PreparedBatches):
            return DataLoader(self.train_dataset, batch_size=None, shuffle=False)
        sampler = LengthBudgetBatchSampler(
            self.train_dataset.lengths,
            self.args.per_device_max_batch_samples,
            seed=self.data_seed,
            num_replicas=self.args.world_size,
            rank=self.args.process_index,
            max_samples=self.args.max_samples,
            num_buckets=self.args.num_buckets,
            yield_epoch=True,  # the epoch travels with each key: right even with persistent workers
        )
        workers = self.args.dataloader_num_workers
        return EpochDataLoader(
            self.train_dataset,
            batch_sampler=FixedLengthEpochs(sampler),
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            worker_init_fn=partial(_start_worker, num_workers=workers, rank=self.args.process_index),
        )

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """Fetch the micro-batches of one optimizer step and count, over all ranks, their masked frames.

        The count (a device tensor, at least 1) is what `compute_loss` divides by; the audio and
        skipped-file counts ride along in the same all-reduce for logging. Nothing here waits for
        the device: the values are read at the next log.
        """
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        for batch in batches:  # CPU tensors: the Trainer moves them later
            # the model then gathers the masked frames without waiting for the device (and compiles to a known shape)
            batch["num_masked"] = int(batch["mask_time_indices"].sum())
        counts = torch.tensor(
            [
                sum(b["num_masked"] for b in batches),
                sum(b["input_values"].numel() for b in batches),
                sum(int(b.get("num_skipped", 0)) for b in batches),
            ],
            dtype=torch.long,
        ).to(device, non_blocking=True)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self.metrics.add_step(counts[1:])
        self.health.record_audio(counts[1])
        return batches, counts[0].clamp(min=1)

    # ------------------------------------------------------------------ loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Sum of this micro-batch's frame losses x world size / the step's global masked-frame count.

        Outside the training loop (`num_items_in_batch=None`) it is the batch's own mean. A batch
        whose utterances all failed to decode gives a zero loss that still touches every trainable
        parameter, so DDP's gradient all-reduce runs on every rank.
        """
        if is_empty_batch(inputs):
            outputs = None
            loss = self._empty_batch_loss(model)
        else:
            outputs = model(
                input_values=inputs["input_values"],
                mask_time_indices=inputs["mask_time_indices"],
                num_masked=inputs.get("num_masked"),
            )
            if num_items_in_batch is None:
                loss = outputs.loss
            else:
                loss = outputs.frame_losses.sum() * self.args.world_size / num_items_in_batch
            if model.training:
                self.metrics.add_batch(outputs.target_perplexity, outputs.prediction_perplexity)
                self.health.record_values(self.state.global_step + 1, loss)
        return (loss, outputs) if return_outputs else loss

    def _empty_batch_loss(self, model: nn.Module) -> torch.Tensor:
        """0 x the loss of a small fixed input, run in eval mode (no dropout, no codebook statistics)."""
        config: SpidRConfig = unwrap(model).config
        length = config.receptive_field + config.inputs_to_logits_ratio * 2 * self.args.mask_length
        generator = torch.Generator().manual_seed(0)
        waves = torch.randn(1, length, generator=generator).to(self.args.device)
        mask = torch.ones(1, config.frame_geometry.num_frames(length), dtype=torch.bool)
        was_training = model.training
        model.eval()
        try:
            outputs = model(input_values=waves, mask_time_indices=mask.to(self.args.device))
        finally:
            model.train(was_training)
        return outputs.frame_losses.sum() * 0.0

    # ------------------------------------------------------------------ optimizer and schedule
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """AdamW (or `args.optim`) over `pretraining_param_groups`: the teacher is never optimised.

        A model that resumes at or past `freeze_feature_encoder_step` is frozen here, before DDP
        wraps it, so DDP never waits for gradients of frozen parameters.
        """
        if self.optimizer is None:
            spidr = unwrap(model if model is not None else self.model)
            freeze_feature_encoder_if_due(spidr)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, spidr)
            self.optimizer = optimizer_cls(pretraining_param_groups(spidr, self.args.weight_decay), **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The tri-stage schedule of the recipe (or the Trainer's `lr_scheduler_type` with `lr_schedule='trainer'`)."""
        if self.args.lr_schedule == "trainer":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.args.tri_stage_schedule())
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ------------------------------------------------------------------ resume and checkpoints
    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any):
        """`Trainer.train`, resuming from the newest *complete* checkpoint for `resume_from_checkpoint=True` or `"last"`.

        An explicit checkpoint folder is checked first too: a missing or cut-short file is named
        in a `ValueError` instead of failing half-way through loading.
        """
        require_optimizer = not self.args.save_only_model
        if resume_from_checkpoint is True or resume_from_checkpoint == "last":
            resume_from_checkpoint = str(last_complete_checkpoint(self.args.output_dir, require_optimizer))
            logger.info("resuming from %s", resume_from_checkpoint)
        elif isinstance(resume_from_checkpoint, str | os.PathLike):
            problem = checkpoint_problem(resume_from_checkpoint, require_optimizer)
            if problem is not None:
                raise ValueError(f"cannot resume from {resume_from_checkpoint}: {problem}.")
        try:
            with quiet_pickle_protocol():
                return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        except pickle.UnpicklingError as error:  # a checkpoint's optimizer, scheduler or RNG state
            raise ValueError(
                f"cannot resume from {resume_from_checkpoint}: one of its states (optimizer.pt, scheduler.pt, "
                "rng_state*.pth) is a pickle that torch.load(weights_only=True) refuses; loading it otherwise could "
                "run any code in it. Resume from a checkpoint a run of this package wrote, or start afresh."
            ) from error

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_FOLDER) if self._writing_checkpoint else run_dir

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, written into the staging folder and renamed once complete.

        Nothing is written when the weights or the run are not healthy (`stop_if_unhealthy`): the
        last checkpoint stays the last good one. Old checkpoints are rotated (`save_total_limit`)
        only once the new one is in place.
        """
        self.stop_if_unhealthy(model)
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:  # what a killed save left behind
            shutil.rmtree(run_dir / STAGING_FOLDER, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._writing_checkpoint = True
        try:
            super()._save_checkpoint(model, trial)
        except (OSError, SafetensorError) as error:  # a full disk: the last published checkpoint stays whole
            raise write_failure(run_dir / STAGING_FOLDER / name, error) from error
        except RuntimeError as error:  # torch.save reports a failed write as a RuntimeError without errno
            if not any(sign in str(error) for sign in _TORCH_SAVE_FAILURES):
                raise
            failed = OSError(errno.EIO, f"torch.save failed ({error}); is the disk full?")
            raise write_failure(run_dir / STAGING_FOLDER / name, failed) from error
        finally:
            self._writing_checkpoint = False
        self.accelerator.wait_for_everyone()  # every rank's RNG state is written
        if self.args.should_save:
            publish_checkpoint(run_dir / STAGING_FOLDER / name, run_dir / name)
            shutil.rmtree(run_dir / STAGING_FOLDER, ignore_errors=True)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args: Any, **kwargs: Any) -> None:
        # the gradient norm the Trainer computed for this step (before clipping), still on the device
        if isinstance(grad_norm, torch.Tensor):
            self.health.record_values(self.state.global_step, grad_norm)
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def stop_if_unhealthy(self, model: nn.Module | None = None) -> None:
        """Raise `PretrainingError` when the run must stop (see `TrainingHealth`), or when `model` has non-finite weights.

        Reads the device (one sync): called at training logs, before every checkpoint and before
        the final save, on every rank together.
        """
        problem = self.health.problem(self.args.max_empty_steps, self.args.world_size, self.args.device)
        if problem is None and model is not None and not all_finite(unwrap(model)):
            problem = "the model's weights are not finite (NaN or inf)"
        if problem is None:
            return
        try:
            last = f"the last complete checkpoint, {last_complete_checkpoint(self.args.output_dir).name}, is intact"
        except FileNotFoundError:
            last = "no checkpoint was written"
        raise PretrainingError(
            f"pretraining stopped at step {self.state.global_step}: {problem}; nothing more was saved and {last}."
        )

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add SpidR's training metrics to every training log (all ranks call this together).

        Training logs are also where the run stops on a non-finite loss or gradient, or on too
        many steps without audio (:class:`TrainingHealth`), without a host sync of its own.
        """
        if "loss" in logs:
            self.stop_if_unhealthy()
            logs.update(self.metrics.pop(self.accelerator, self.args.world_size))
            if self.teacher_callback.last_ema_decay is not None:
                logs["ema_decay"] = self.teacher_callback.last_ema_decay
        super().log(logs, start_time)

    # ------------------------------------------------------------------ final model
    def save_pretrained_model(self, output_dir: str | Path | None = None) -> Path:
        """Save the trained model as a transformers directory with remote code and a model card.

        The directory (default `args.output_dir`) loads with `AutoModel` (the student encoder) and
        `SpidRForPreTraining.from_pretrained` (everything, to continue pretraining).
        """
        out = Path(output_dir or self.args.output_dir)
        self.stop_if_unhealthy(self.model)  # the last steps may not have been logged or checkpointed
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            model = unwrap(self.model)
            save_pretrained_with_code(model, out)
            write_model_card(
                out,
                model.config,
                origin="Pretrained with `spidr-hf pretrain` (transformers Trainer, SpidR recipe).",
                facts=self.run_facts(),
                title="SpidR (pretrained with spidr-hf)",
                num_parameters=sum(p.numel() for p in model.spidr.parameters()),
            )
        self.accelerator.wait_for_everyone()
        return out

    def run_facts(self) -> dict[str, object]:
        """What a model card should say about this run: data, steps, final metrics."""
        total_samples = sum(self.train_dataset.lengths)
        last = _last_training_log(self.state.log_history)
        facts: dict[str, object] = {
            "training data": f"{self.args.train_data or 'in-memory dataset'}: {len(self.train_dataset.lengths)} utterances, "
            f"{format_hours(hours_of_audio(total_samples))} of audio",
            "optimizer steps": self.state.global_step,
            "audio seen in this run": format_hours(self.metrics.total_audio_seconds / 3600),
            "teacher EMA steps (current_step)": int(unwrap(self.model).current_step),
            "devices": self.args.world_size,
            "audio per step per device": f"up to {self.args.per_device_max_batch_samples / SAMPLING_RATE:.1f} s",
            "gradient accumulation": self.args.gradient_accumulation_steps,
            "peak learning rate": self.args.learning_rate,
            "precision": "bf16 autocast" if self.args.bf16 else "fp16 autocast" if self.args.fp16 else "fp32",
            "seed": self.args.seed,
        }
        for key, name in (("loss", "final loss"), ("target_perplexity", "final target perplexity"),
                          ("prediction_perplexity", "final prediction perplexity")):
            if key in last:
                facts[name] = f"{last[key]:.4f}"
        if self.metrics.total_skipped_files:
            facts["skipped utterances (unreadable audio)"] = self.metrics.total_skipped_files
        return facts


def _needs_find_unused_parameters(model: SpidRForPreTraining, args: TrainingArguments) -> bool:
    """DDP must look for unused parameters when layers are dropped or the feature encoder freezes mid-run."""
    step, freeze = int(model.current_step), model.config.freeze_feature_encoder_step
    return model.config.layerdrop > 0 or step < freeze < step + args.max_steps


def _last_training_log(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The last log entry with a training loss (the history also holds the final summary)."""
    return next((entry for entry in reversed(history) if "loss" in entry), {})


def _start_worker(worker_id: int, num_workers: int, rank: int) -> None:
    """A DataLoader worker: seeded as the Trainer seeds its own, and killed with the training process."""
    die_with_parent()
    seed_worker(worker_id, num_workers=num_workers, rank=rank)


__all__ = [
    "EpochDataLoader",
    "PretrainingProgress",
    "FixedLengthEpochs",
    "SpidRPretrainer",
    "SpidRTeacherCallback",
    "TimeBudget",
    "build_train_dataset",
    "feature_encoder_parameters",
    "freeze_feature_encoder_if_due",
    "pretraining_param_groups",
]
