"""What transformers' common model tests check, for every SpidR model class.

transformers runs a shared suite (`ModelTesterMixin`, `FeatureExtractionSavingTestMixin`) over each
of its models; SpidR lives outside that repository, so this module checks the same contracts
itself, on a model small enough for a CPU: a save/load round trip, hidden states and attentions in
the outputs, eager attention equal to sdpa, a deterministic initialisation of every parameter and
buffer under a seed (also for what `from_pretrained` has to initialise), gradient checkpointing
equal to the plain backward, `torch.export` of the encoder, and the feature extractor's
normalisation with padding and truncation. The downstream heads (CTC, classification) run the
same checks, with their weighted layer sum on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pretrain_worker import micro_config, padded_batch
from spidr_hf.training import compute_span_mask
from transformers import initialization as init

from spidr_hf import (
    SpidRFeatureExtractor,
    SpidRForCTC,
    SpidRForPreTraining,
    SpidRForSequenceClassification,
    SpidRModel,
)
from spidr_hf.units import encoder_of

HEAD_CLASSES = [SpidRForCTC, SpidRForSequenceClassification]
MODEL_CLASSES = [SpidRModel, SpidRForPreTraining, *HEAD_CLASSES]
# the heads' own fields: a weighted layer sum (a parameter outside every submodule), no dropout
HEAD_FIELDS = dict(use_weighted_layer_sum=True, vocab_size=12, num_labels=3, final_dropout=0.0)
LENGTHS = (6400, 4000)  # a padded batch: the second utterance is shorter


def _config(**overrides):
    return micro_config(num_hidden_layers=3, num_attention_heads=4, **overrides)


def _model(model_class, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if model_class in HEAD_CLASSES:
        overrides = {**HEAD_FIELDS, **overrides}
    return model_class(_config(**overrides))


def _inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    inputs = padded_batch(LENGTHS)
    if isinstance(model, SpidRForPreTraining):
        frames = model.config.frame_geometry.num_frames(max(LENGTHS))
        inputs["mask_time_indices"] = compute_span_mask(
            (len(LENGTHS), frames), mask_length=4, generator=torch.Generator().manual_seed(1)
        )
    return inputs


def _main_output(output) -> torch.Tensor:
    """The tensor a class is about: features for the encoder, per-frame losses for pretraining, a head's logits."""
    for name in ("frame_losses", "logits"):
        if isinstance(output.get(name), torch.Tensor):
            return output[name]
    return output.last_hidden_state


def _assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_save_and_load_round_trip(model_class, tmp_path):
    model = _model(model_class).eval()
    inputs = _inputs(model)
    with torch.no_grad():
        before = model(**inputs)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    _assert_states_equal(model.state_dict(), loaded.state_dict())  # buffers included
    with torch.no_grad():
        after = loaded(**inputs)
    assert torch.equal(_main_output(after), _main_output(before))


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_hidden_states_and_attentions_are_returned_on_request(model_class):
    model = _model(model_class).eval()
    model.set_attn_implementation("eager")  # sdpa computes no attention probabilities
    inputs = _inputs(model)
    config = model.config
    frames = config.frame_geometry.num_frames(max(LENGTHS))
    with torch.no_grad():
        plain = model(**inputs)
        full = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert plain.hidden_states is None and plain.attentions is None
    assert len(full.hidden_states) == config.num_hidden_layers + 1
    if model_class not in HEAD_CLASSES:  # the heads' outputs are transformers' CausalLMOutput / SequenceClassifierOutput
        assert len(full.before_residual_states) == config.num_hidden_layers
    assert all(h.shape == (len(LENGTHS), frames, config.hidden_size) for h in full.hidden_states)
    assert len(full.attentions) == config.num_hidden_layers
    heads = config.num_attention_heads
    assert all(a.shape == (len(LENGTHS), heads, frames, frames) for a in full.attentions)
    torch.testing.assert_close(full.attentions[0].sum(-1), torch.ones(len(LENGTHS), heads, frames))
    # padded key frames get no attention
    valid = config.frame_geometry.num_frames(LENGTHS[1])
    assert torch.count_nonzero(full.attentions[-1][1, :, :, valid:]) == 0
    # the config's defaults work as the call's flags do, and tuples carry the same tensors
    model.config.output_hidden_states = True
    with torch.no_grad():
        by_config = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert len(by_config.hidden_states) == config.num_hidden_layers + 1
    assert any(isinstance(x, tuple) and len(x) == config.num_hidden_layers + 1 for x in as_tuple)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("other", ["sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)])
def test_eager_attention_equals_the_others(model_class, other):
    model = _model(model_class).eval()
    inputs = _inputs(model)
    outputs = {}
    for implementation in ("eager", other):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            outputs[implementation] = model(**inputs, output_hidden_states=True)
    eager, tested = outputs["eager"], outputs[other]
    if model_class is SpidRModel:
        valid = eager.frame_attention_mask
        for a, b in zip(eager.hidden_states, tested.hidden_states, strict=True):
            torch.testing.assert_close(b[valid], a[valid], atol=1e-5, rtol=0)
    elif model_class is SpidRForCTC:
        valid = model._get_feature_vector_attention_mask(eager.logits.shape[1], inputs["attention_mask"])
        torch.testing.assert_close(tested.logits[valid], eager.logits[valid], atol=1e-5, rtol=0)
    elif model_class is SpidRForSequenceClassification:
        torch.testing.assert_close(tested.logits, eager.logits, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(tested.frame_losses, eager.frame_losses, atol=1e-5, rtol=0)
        assert torch.equal(tested.teacher_labels, eager.teacher_labels)


def test_sdpa_is_the_default():
    assert _model(SpidRModel).config._attn_implementation == "sdpa"


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_initialisation_is_deterministic_under_a_seed(model_class):
    """Every parameter and buffer, for a fresh model; nothing is left as uninitialised memory."""
    first, second = _model(model_class, seed=3), _model(model_class, seed=3)
    _assert_states_equal(first.state_dict(), second.state_dict())
    other = _model(model_class, seed=4).state_dict()
    assert any(not torch.equal(other[key], value) for key, value in first.state_dict().items())  # the seed matters
    assert all(torch.isfinite(t).all() for t in first.state_dict().values())


def test_missing_weights_and_buffers_are_initialised_deterministically(tmp_path):
    """`from_pretrained` of an encoder checkpoint initialises the teacher, heads, codebooks and step.

    `current_step` used to stay uninitialised memory (48, 139807642557760, ...): the EMA decay and
    the freezing step were wrong from the first update.
    """
    _model(SpidRModel).save_pretrained(tmp_path / "encoder")
    loaded = []
    for _ in range(2):
        torch.manual_seed(5)
        loaded.append(SpidRForPreTraining.from_pretrained(tmp_path / "encoder"))
    _assert_states_equal(loaded[0].state_dict(), loaded[1].state_dict())
    model = loaded[0]
    assert int(model.current_step) == 0 and model.ema_decay() == pytest.approx(1 - (1 - 0.999))
    assert torch.equal(model.codebook_counts, torch.ones_like(model.codebook_counts))
    for teacher, student in zip(model.teacher.pos_conv_embed.parameters(),
                                model.spidr.encoder.pos_conv_embed.parameters(), strict=True):  # fmt: skip
        assert torch.equal(teacher, student)  # the teacher starts with the student's positional convolution
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.parametrize("model_class", HEAD_CLASSES)
def test_heads_from_an_encoder_checkpoint_are_initialised_deterministically(model_class, tmp_path):
    """The head and the layer weights (a parameter of no submodule) are set, the encoder's weights kept."""
    encoder = _model(SpidRModel)
    encoder.save_pretrained(tmp_path / "encoder")
    loaded = []
    for _ in range(2):
        torch.manual_seed(5)
        loaded.append(model_class.from_pretrained(tmp_path / "encoder", **HEAD_FIELDS))
    _assert_states_equal(loaded[0].state_dict(), loaded[1].state_dict())
    model = loaded[0]
    _assert_states_equal(model.spidr.state_dict(), encoder.state_dict())
    layers = model.config.num_hidden_layers + 1
    assert torch.equal(model.layer_weights, torch.full((layers,), 1 / layers))
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_init_weights_can_init_buffers(model_class):
    """transformers' common test: buffers as `__init__` registers them (weight init skipped) equal those that
    `init_weights()` gives a model built on the meta device. `codebook_sums` / `codebook_counts` used to be
    `torch.empty` in `__init__` (garbage with init skipped) and the codebook start drew from the global RNG."""
    with init.no_init_weights():
        from_init = model_class(_config())
    with torch.device("meta"):
        from_meta = model_class(_config())
    from_meta.to_empty(device="cpu")
    from_meta.init_weights()
    buffers, meta_buffers = dict(from_init.named_buffers()), dict(from_meta.named_buffers())
    assert sorted(buffers) == sorted(meta_buffers)
    assert [name for name, value in buffers.items() if not torch.equal(value, meta_buffers[name])] == []


def test_buffers_are_the_same_however_the_model_is_built(tmp_path):
    """Built directly, on meta then `init_weights()`, or by `from_pretrained` of an encoder checkpoint, whatever
    the global seed: the same buffers; `codebook_init_seed` (the run's `--seed`) changes the codebook start."""
    torch.manual_seed(1)
    direct = SpidRForPreTraining(_config())
    with torch.device("meta"):
        from_meta = SpidRForPreTraining(_config())
    from_meta.to_empty(device="cpu")
    torch.manual_seed(2)
    from_meta.init_weights()
    _model(SpidRModel).save_pretrained(tmp_path / "encoder")
    torch.manual_seed(3)
    loaded = SpidRForPreTraining.from_pretrained(tmp_path / "encoder")
    expected = dict(direct.named_buffers())
    assert sorted(expected) == ["codebook_counts", "codebook_sums", "current_step"]
    for model in (from_meta, loaded):
        _assert_states_equal(dict(model.named_buffers()), expected)
    assert torch.equal(direct.codebook_counts, torch.ones_like(direct.codebook_counts))
    reseeded = SpidRForPreTraining(_config(codebook_init_seed=1)).codebook_sums
    assert reseeded.shape == direct.codebook_sums.shape and not torch.equal(reseeded, direct.codebook_sums)


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.filterwarnings("ignore::FutureWarning")  # renamed activation_checkpointing in newer releases
def test_gradient_checkpointing_gives_the_same_gradients(model_class):
    model = _model(model_class).train()
    if isinstance(model, SpidRForPreTraining):
        model.defer_codebook_update = True  # both passes must see the same codebooks
    inputs = _inputs(model)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        _main_output(model(**inputs)).square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in encoder_of(model).encoder.layers)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name, want in plain.items():
        torch.testing.assert_close(checkpointed[name], want, atol=1e-6, rtol=1e-5, msg=name)


def test_torch_export_of_the_encoder():
    model = _model(SpidRModel).eval()
    inputs = _inputs(model)
    exported = torch.export.export(model, (inputs["input_values"],), {"attention_mask": inputs["attention_mask"]})
    other = {**inputs, "input_values": torch.randn_like(inputs["input_values"]) * inputs["attention_mask"]}
    for batch in (inputs, other):  # the exported graph is a function of its inputs, not a recording of them
        with torch.no_grad():
            want = model(**batch).last_hidden_state
            got = exported.module()(batch["input_values"], attention_mask=batch["attention_mask"]).last_hidden_state
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("options", "width"),
    [
        (dict(padding="longest"), 9000),
        (dict(padding="max_length", max_length=12_000), 12_000),
        (dict(padding="max_length", max_length=6000, truncation=True), 6000),
        (dict(padding="longest", max_length=6000, truncation=True, pad_to_multiple_of=4096), 8192),
    ],
    ids=["longest", "max_length", "truncation", "truncation-multiple"],
)
def test_feature_extractor_normalises_each_utterance_with_padding_and_truncation(options, width):
    rng = np.random.default_rng(0)
    waves = [(3 * rng.standard_normal(n) + 5 + np.linspace(0, 4, n)).astype(np.float32) for n in (9000, 4000, 7000)]
    out = SpidRFeatureExtractor()(waves, sampling_rate=16000, return_tensors="np", **options)
    values, mask = out["input_values"], out["attention_mask"]
    kept = [min(len(w), width) for w in waves]
    assert values.shape == (3, width) and mask.sum(-1).tolist() == kept
    for row, n in zip(values, kept, strict=True):
        assert abs(row[:n].mean()) < 1e-4 and abs(row[:n].std() - 1) < 1e-3
        assert not row[n:].any()  # padding is zeros
