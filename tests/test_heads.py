"""SpidRForCTC and SpidRForSequenceClassification: shapes, losses with padding, freezing, loading,
the Auto classes, remote code, and the ASR / audio-classification pipelines on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from pretrain_worker import micro_config, micro_model, padded_batch
from transformers import (
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForCTC,
    AutoTokenizer,
    Wav2Vec2Processor,
    pipeline,
)

from spidr_hf import SpidRFeatureExtractor, SpidRForCTC, SpidRForSequenceClassification
from spidr_hf.downstream import build_tokenizer, greedy_ctc, load_ctc_tokenizer, speech_recognizer
from spidr_hf.model_dir import save_pretrained_with_code

LENGTHS = (6400, 4000)
TRANSCRIPTS = [list("abcab"), list("ca")]


def _config(**overrides):
    fields = dict(vocab_size=7, num_labels=3, final_dropout=0.0, num_hidden_layers=3, num_attention_heads=4)
    return micro_config(**{**fields, **overrides})


def _model(model_class, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return model_class(_config(**overrides)).eval()


def _batch() -> dict[str, torch.Tensor]:
    return padded_batch(LENGTHS)


def _labels() -> torch.Tensor:
    return torch.tensor([[2, 3, 4, 2, 3], [4, 2, -100, -100, -100]])


@pytest.mark.parametrize("weighted", [False, True])
def test_head_shapes(weighted):
    batch = _batch()
    ctc = _model(SpidRForCTC, use_weighted_layer_sum=weighted)
    classifier = _model(SpidRForSequenceClassification, use_weighted_layer_sum=weighted, classifier_proj_size=16)
    frames = ctc.config.frame_geometry.num_frames(max(LENGTHS))
    with torch.no_grad():
        out = ctc(**batch, output_hidden_states=True)
        plain = ctc(**batch)
        classes = classifier(**batch)
    assert out.logits.shape == (2, frames, 7)
    assert len(out.hidden_states) == 4 and plain.hidden_states is None  # states only on request
    assert classes.logits.shape == (2, 3) and classifier.projector.out_features == 16
    assert hasattr(ctc, "layer_weights") == weighted
    if weighted:
        assert ctc.layer_weights.shape == (4,)  # the transformer input and 3 layers


def test_ctc_loss_ignores_padded_labels_and_padded_audio():
    """The batch's summed loss is the sum of each utterance's own loss, computed alone and unpadded."""
    model = _model(SpidRForCTC, use_weighted_layer_sum=True)
    batch, labels = _batch(), _labels()
    with torch.no_grad():
        together = model(**batch, labels=labels).loss
        alone = [
            model(batch["input_values"][row : row + 1, :length], labels=labels[row : row + 1, labels[row] >= 0]).loss
            for row, length in enumerate(LENGTHS)
        ]
    torch.testing.assert_close(together, sum(alone), atol=1e-4, rtol=1e-5)
    assert together > 0


def test_classification_pools_valid_frames_only():
    model = _model(SpidRForSequenceClassification, use_weighted_layer_sum=True)
    batch = _batch()
    with torch.no_grad():
        together = model(**batch, labels=torch.tensor([0, 2]))
        alone = model(batch["input_values"][1:, : LENGTHS[1]]).logits
    torch.testing.assert_close(together.logits[1:], alone, atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.cross_entropy(together.logits, torch.tensor([0, 2]))
    torch.testing.assert_close(together.loss, expected)


@pytest.mark.parametrize("model_class", [SpidRForCTC, SpidRForSequenceClassification])
def test_frozen_base_trains_only_the_layer_weights_and_the_head(model_class):
    model = _model(model_class, use_weighted_layer_sum=True).train()
    model.freeze_base_model()
    out = model(**_batch(), labels=_labels() if model_class is SpidRForCTC else torch.tensor([0, 2]))
    out.loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    head = {"lm_head.weight", "lm_head.bias"} if model_class is SpidRForCTC else {
        "projector.weight", "projector.bias", "classifier.weight", "classifier.bias"}  # fmt: skip
    assert with_grad == {"layer_weights", *head}
    assert model.layer_weights.grad.abs().sum() > 0


def test_freeze_feature_encoder_keeps_the_transformer_trainable():
    model = _model(SpidRForCTC)
    model.freeze_feature_encoder()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("spidr.feature_extractor.", "spidr.feature_projection.")) for n in frozen)
    assert all(p.requires_grad for p in model.spidr.encoder.parameters())


def test_bad_labels_are_refused_with_the_fix():
    model = _model(SpidRForCTC)
    batch = _batch()
    with pytest.raises(ValueError, match=r"label 7 is outside the vocabulary \(vocab_size 7\).*tokenizer"):
        model(**batch, labels=torch.tensor([[7], [1]]))
    too_long = torch.full((2, 30), 3)  # 30 equal labels need 59 frames; the audio has 19 and 12
    with pytest.raises(ValueError, match="labels of row 0 need 59 CTC frames but its audio has 19.*ctc_zero_infinity"):
        model(**batch, labels=too_long)
    model.config.ctc_zero_infinity = True  # transformers' behaviour on request: such rows add nothing
    assert torch.isfinite(model(**batch, labels=too_long).loss)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("vocab_size", 0, "vocab_size must be a positive integer"),
        ("ctc_loss_reduction", "none", "ctc_loss_reduction must be 'sum' or 'mean'"),
        ("pad_token_id", 7, r"pad_token_id \(the CTC blank\) must be an id below vocab_size \(7\)"),
        ("final_dropout", 1.5, "final_dropout must be a number between 0 and 1"),
        ("use_weighted_layer_sum", "yes", "use_weighted_layer_sum must be true or false"),
    ],
)
def test_head_fields_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        _config(**{field: value})


def test_heads_from_a_pretraining_checkpoint_load_the_encoder_and_initialise_the_head(tmp_path):
    pretrained = micro_model(seed=0, num_hidden_layers=3, num_attention_heads=4)
    save_pretrained_with_code(pretrained, tmp_path / "pretrained")
    for auto_class, head in ((AutoModelForCTC, "lm_head"), (AutoModelForAudioClassification, "classifier")):
        model, info = auto_class.from_pretrained(tmp_path / "pretrained", output_loading_info=True)
        assert not info["unexpected_keys"]  # teacher, heads, codebooks: dropped quietly
        assert info["missing_keys"] and all(k.startswith(("lm_head.", "projector.", "classifier.")) for k in info["missing_keys"])
        assert any(k.startswith(head) for k in info["missing_keys"])
        _assert_same_encoder(model, pretrained.spidr.state_dict())


def test_heads_from_a_converted_checkpoint(converted_dir):
    """A converted reference checkpoint: the encoder's weights load, only the head is new."""
    encoder = AutoModel.from_pretrained(converted_dir)
    model, info = AutoModelForCTC.from_pretrained(converted_dir, output_loading_info=True)
    assert not info["unexpected_keys"] and sorted(info["missing_keys"]) == ["lm_head.bias", "lm_head.weight"]
    _assert_same_encoder(model, encoder.state_dict())


def _assert_same_encoder(model, state: dict[str, torch.Tensor]) -> None:
    for key, value in state.items():
        assert torch.equal(model.spidr.state_dict()[key], value), key


@pytest.fixture(scope="module")
def ctc_dir(tmp_path_factory):
    """A tiny SpidRForCTC saved with its remote code and a processor (feature extractor + CTC tokenizer)."""
    folder = tmp_path_factory.mktemp("ctc") / "model"
    tokenizer = build_tokenizer(TRANSCRIPTS, "chars")
    model = _model(SpidRForCTC, vocab_size=len(tokenizer), use_weighted_layer_sum=True)
    save_pretrained_with_code(model, folder)
    Wav2Vec2Processor(feature_extractor=SpidRFeatureExtractor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_auto_classes_round_trip(ctc_dir, tmp_path):
    model = AutoModelForCTC.from_pretrained(ctc_dir).eval()
    assert type(model) is SpidRForCTC
    batch = _batch()
    with torch.no_grad():
        before = model(**batch).logits
    model.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        after = AutoModelForCTC.from_pretrained(tmp_path / "again").eval()(**batch).logits
    assert torch.equal(before, after)
    config = json.loads((ctc_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCTC"] == "modeling_spidr_heads.SpidRForCTC"
    assert config["auto_map"]["AutoModelForAudioClassification"] == "modeling_spidr_heads.SpidRForSequenceClassification"


def test_trust_remote_code_loads_the_heads_without_the_package(ctc_dir, tmp_path):
    batch = _batch()
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        want = AutoModelForCTC.from_pretrained(ctc_dir).eval()(**batch).logits
    code = f"""
import sys
sys.modules["spidr_hf"] = None  # any import of the package now fails
import torch
from transformers import AutoModelForAudioClassification, AutoModelForCTC
model = AutoModelForCTC.from_pretrained({str(ctc_dir)!r}, trust_remote_code=True).eval()
assert not type(model).__module__.startswith("spidr_hf"), type(model).__module__
classifier = AutoModelForAudioClassification.from_pretrained({str(ctc_dir)!r}, trust_remote_code=True)
assert type(classifier).__name__ == "SpidRForSequenceClassification"
with torch.no_grad():
    torch.save(model(**torch.load({str(tmp_path / "batch.pt")!r})).logits, {str(tmp_path / "out.pt")!r})
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), want)


def test_asr_pipeline_transcribes_with_the_saved_tokenizer(ctc_dir):
    model = AutoModelForCTC.from_pretrained(ctc_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(ctc_dir)
    wave = np.random.default_rng(0).standard_normal(16_000).astype(np.float32)
    inputs = SpidRFeatureExtractor()(wave, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    expected = tokenizer.decode(logits.argmax(-1))  # the pipeline's own CTC decoding
    recognizer = pipeline("automatic-speech-recognition", model=str(ctc_dir))
    assert recognizer(wave)["text"] == expected
    assert speech_recognizer(ctc_dir)(wave)["text"] == expected
    assert "".join(tokenizer.convert_ids_to_tokens(greedy_ctc(logits, len(logits)))).replace("|", " ") == expected


def test_asr_pipeline_chunks_long_files(ctc_dir):
    wave = np.random.default_rng(1).standard_normal(16_000 * 12).astype(np.float32)
    recognizer = pipeline("automatic-speech-recognition", model=str(ctc_dir))
    calls = []
    hook = recognizer.model.register_forward_hook(lambda module, args, output: calls.append(output.logits.shape[1]))
    text = recognizer(wave, chunk_length_s=4, stride_length_s=1)["text"]
    hook.remove()
    assert len(calls) >= 3 and max(calls) < 12 * 50  # the 12 s went through in 4 s chunks
    assert text and set(text) <= set("abc ")


def test_asr_needs_a_tokenizer_that_matches_the_head(ctc_dir, tmp_path):
    bare = tmp_path / "bare"
    save_pretrained_with_code(AutoModelForCTC.from_pretrained(ctc_dir), bare)
    missing = r"has no CTC tokenizer \(tokenizer_config.json, vocab.json missing\).*Wav2Vec2Processor"
    with pytest.raises(FileNotFoundError, match=missing):
        speech_recognizer(bare)
    with pytest.raises(FileNotFoundError, match=missing):  # transformers' own fallback blamed a missing sentencepiece
        pipeline("automatic-speech-recognition", model=str(bare))
    features = pipeline("feature-extraction", model=str(bare))  # speech features need no tokenizer
    assert features.tokenizer is None
    build_tokenizer([list("abcdefg")], "chars").save_pretrained(bare)  # 10 tokens for a head of 6
    with pytest.raises(ValueError, match=r"vocab.json has 10 tokens but the model's vocab_size is 6"):
        load_ctc_tokenizer(bare)


def test_audio_classification_pipeline_names_the_labels(tmp_path):
    labels = {0: "yes", 1: "no", 2: "stop"}
    model = _model(SpidRForSequenceClassification, id2label=labels, label2id={v: k for k, v in labels.items()})
    save_pretrained_with_code(model, tmp_path / "classifier")
    wave = np.random.default_rng(2).standard_normal(8000).astype(np.float32)
    scores = pipeline("audio-classification", model=str(tmp_path / "classifier"))(wave, top_k=3)
    inputs = SpidRFeatureExtractor()(wave, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**inputs).logits.softmax(-1)[0]
    assert [s["label"] for s in scores] == [labels[int(i)] for i in probabilities.argsort(descending=True)]
    assert [s["score"] for s in scores] == pytest.approx(sorted(probabilities.tolist(), reverse=True), abs=1e-6)


def test_feature_extraction_pipeline_still_serves_a_head_model(ctc_dir):
    """The registered feature-extraction dispatcher reads the encoder of a fine-tuned model too."""
    model = AutoModelForCTC.from_pretrained(ctc_dir).eval()
    wave = np.random.default_rng(3).standard_normal(8000).astype(np.float32)
    features = pipeline("feature-extraction", model=str(ctc_dir))(wave, return_tensors=True)
    inputs = SpidRFeatureExtractor()(wave, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        want = model.spidr(inputs["input_values"]).last_hidden_state[0]
    torch.testing.assert_close(features, want, atol=1e-5, rtol=0)
