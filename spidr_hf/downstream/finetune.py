"""CTC fine-tuning of a SpidR encoder (`SpidRForCTC`) with transformers' `Trainer`, the wav2vec2 recipe.

The run folder holds `checkpoints/` (the Trainer's, for `resume`), `model/` (the fine-tuned
model with its remote code, its processor: the SpidR feature extractor and the CTC tokenizer,
what `pipeline("automatic-speech-recognition")` loads, and a model card saying what it was trained
on and how well it did) and `results.json` (the error rate on held-out speech before and after
fine-tuning).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainingArguments,
    Wav2Vec2Processor,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from ..model_dir import check_model_source, from_pretrained, save_pretrained_with_code
from ..modeling import SpidRFeatureExtractor, SpidRForCTC
from ..pipeline import default_feature_extractor
from ..runs import atomic_write_text, write_failure
from .ctc_data import CTCCollator, TranscribedSpeech, build_tokenizer, encode_targets
from .recognition import error_rate, greedy_ctc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSettings:
    """The recipe: targets, steps, batch and optimiser (AdamW with the Trainer's linear warm-up and decay).

    The fresh head learns at `head_learning_rate`, the pretrained encoder at the lower `learning_rate`.
    """

    targets: str = "phones"
    max_steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-2
    warmup_steps: int = 100
    freeze_feature_encoder: bool = True
    save_steps: int = 200
    seed: int = 0


class _Examples(torch.utils.data.Dataset):
    def __init__(self, speech: TranscribedSpeech, labels: list[list[int]]):
        self.speech, self.labels = speech, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"wave": self.speech.waves[index], "labels": self.labels[index]}


@torch.no_grad()
def transcribe_ids(model: SpidRForCTC, feature_extractor: SpidRFeatureExtractor, speech: TranscribedSpeech) -> list[list[int]]:
    """Greedy CTC token ids of each utterance of `speech`."""
    model.eval()
    hypotheses = []
    for wave in speech.waves:
        inputs = feature_extractor(wave, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt")
        logits = model(inputs["input_values"].to(model.device)).logits[0]
        hypotheses.append(greedy_ctc(logits, logits.shape[0], blank=model.config.pad_token_id))
    return hypotheses


def held_out_error_rate(
    model: SpidRForCTC, feature_extractor: SpidRFeatureExtractor, tokenizer: PreTrainedTokenizerBase, speech: TranscribedSpeech
) -> float:
    """Token error rate (PER or CER) of the model's greedy transcripts of `speech`."""
    return error_rate(transcribe_ids(model, feature_extractor, speech), encode_targets(tokenizer, speech.transcripts))


def head_and_encoder_optimizer(model: SpidRForCTC, settings: FinetuneSettings) -> torch.optim.AdamW:
    """AdamW over the trainable weights: the head (and layer weights) at `head_learning_rate`, the encoder
    at `learning_rate`; the Trainer's scheduler warms up and decays both."""
    encoder = {id(p) for p in model.spidr.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in encoder], "lr": settings.learning_rate},
        {"params": [p for p in trainable if id(p) not in encoder], "lr": settings.head_learning_rate},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.0)


def finetune_ctc(
    model_dir: str | Path,
    train: TranscribedSpeech,
    output_dir: str | Path,
    settings: FinetuneSettings = FinetuneSettings(),
    test: TranscribedSpeech | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Fine-tune the encoder in `model_dir` with a new CTC head on `train`; returns what results.json holds.

    Raises:
        ValueError: an utterance whose targets need more CTC frames than its audio has, or (without
            `resume`) an output folder that already holds a run.
    """
    output_dir = Path(output_dir)
    checkpoints = output_dir / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last is not None and not resume:
        raise ValueError(f"{output_dir} already holds a fine-tuning run ({last}): pass --resume to go on, or give another --output-dir.")
    tokenizer = build_tokenizer(train.transcripts, settings.targets)
    labels = encode_targets(tokenizer, train.transcripts)
    set_seed(settings.seed)  # the fresh head, hence the "before" error rate, is the same on every run
    model = from_pretrained(
        SpidRForCTC, check_model_source(model_dir), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        ctc_loss_reduction="mean",
    )
    train.check_ctc_fits(labels, model.config.frame_geometry)
    if test is not None:
        test.check_ctc_fits(encode_targets(tokenizer, test.transcripts), model.config.frame_geometry)
    if settings.freeze_feature_encoder:
        model.freeze_feature_encoder()
    feature_extractor = default_feature_extractor(model)
    initial = None if test is None else held_out_error_rate(model, feature_extractor, tokenizer, test)
    args = TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=max(1, settings.max_steps // 20),
        seed=settings.seed,
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Examples(train, labels), data_collator=CTCCollator(feature_extractor),
                      optimizers=(head_and_encoder_optimizer(model, settings), None))  # fmt: skip
    if not progress:  # without bars the Trainer prints every log line instead
        trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=last if resume else None)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    results = {
        "model": str(model_dir),
        "settings": asdict(settings),
        "vocab_size": len(tokenizer),
        "train": {"corpus": train.source, "utterances": len(train), "minutes": round(train.minutes, 2)},
        "final_loss": losses[-1] if losses else None,
    }
    if test is not None:
        final = held_out_error_rate(model, feature_extractor, tokenizer, test)
        results["test"] = {"corpus": test.source, "utterances": len(test), "minutes": round(test.minutes, 2)}
        results["error_rate"] = {"metric": "PER" if settings.targets == "phones" else "CER", "initial": initial, "final": final}
    model_out = output_dir / "model"
    save_pretrained_with_code(model, model_out)
    try:
        Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(model_out)
    except OSError as error:
        raise write_failure(model_out / "vocab.json", error) from error
    atomic_write_text(model_out / "README.md", ctc_model_card(results, str(model_out)))
    return results


_CTC_CARD = """---
library_name: transformers
pipeline_tag: automatic-speech-recognition
tags:
- audio
- speech
- ctc
- spidr
license: cc-by-nc-4.0
---

# SpidR + CTC ({what})

A SpidR encoder ({base}) fine-tuned with a linear CTC head to emit {what} ({vocab_size} tokens with
the blank), by `spidr-hf finetune-ctc`: {steps} steps, batch {batch_size}, encoder learning rate
{learning_rate:g}, head {head_learning_rate:g}, feature encoder {feature_encoder}.

## Facts of this model

- **training speech**: {train}
- **held-out {metric}** (greedy decoding): {error_rate}

## How to use

```python
import spidr_hf  # registers SpidR with the Auto classes
from transformers import pipeline

asr = pipeline("automatic-speech-recognition", model="{path}")
asr(audio_16khz, chunk_length_s=20)["text"]
```

or, for files, folders and manifests: `spidr-hf transcribe {path} audio/ --output-dir transcripts`.
Without the package, `AutoModelForCTC.from_pretrained(path, trust_remote_code=True)` loads the model
from the code stored in this directory.

## Intended use and limitations

It recognises what its training speech held, no more: the {what} of that corpus, in its voices.
The error rate above is the one measure of it; greedy decoding, no language model.
"""


def ctc_model_card(results: dict, path: str) -> str:
    """The model card of a fine-tuned model, from what `finetune_ctc` returns."""
    settings = results["settings"]
    rate = results.get("error_rate")
    train = results["train"]
    return _CTC_CARD.format(
        what="phones" if settings["targets"] == "phones" else "characters",
        base=results["model"],
        vocab_size=results["vocab_size"],
        steps=settings["max_steps"],
        batch_size=settings["batch_size"],
        learning_rate=settings["learning_rate"],
        head_learning_rate=settings["head_learning_rate"],
        feature_encoder="frozen" if settings["freeze_feature_encoder"] else "trained",
        train=f"{train['utterances']} utterances, {train['minutes']} min of {train['corpus']}",
        metric=rate["metric"] if rate else "error rate",
        error_rate=(f"{rate['initial']:.3f} with the fresh head, {rate['final']:.3f} after fine-tuning, on "
                    f"{results['test']['utterances']} utterances of {results['test']['corpus']}")
        if rate else "not measured (no --test-corpus)",
        path=path,
    )  # fmt: skip


__all__ = ["FinetuneSettings", "ctc_model_card", "finetune_ctc", "held_out_error_rate", "transcribe_ids"]
