"""`pipeline("feature-extraction")` on SpidR models, and text models left unchanged in the same process."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from transformers import BertConfig, BertModel, BertTokenizer, FeatureExtractionPipeline, pipeline

import spidr_hf
from spidr_hf import SpidRConfig, SpidRForPreTraining, SpidRModel
from spidr_hf.audio import standardize
from spidr_hf.pipeline import SpidRFeatureExtractionPipeline, register_pipelines

ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_pipelines()  # what `import spidr_hf` does once spidr_hf/__init__.py calls it


@pytest.fixture(scope="module")
def spidr_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = SpidRConfig(
        conv_dim=[16] * 7, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        num_conv_pos_embedding_groups=4, num_codebooks=2, codebook_size=8,
        hidden_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("spidr") / "tiny"
    SpidRForPreTraining(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(spidr_dir):
    return SpidRModel.from_pretrained(spidr_dir).eval()


def _wave(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def _reference(
    model: SpidRModel, wave16k: np.ndarray, layer: int | None = None, representation: str = "hidden_state"
):
    """The model's features for one 16 kHz utterance, computed without the pipeline."""
    with torch.no_grad():
        out = model(torch.from_numpy(standardize(wave16k))[None], output_hidden_states=True)
    layer = model.config.num_hidden_layers if layer is None else layer
    if representation == "before_residual":
        return out.before_residual_states[layer - 1][0]
    return out.hidden_states[layer][0]


def _frames(num_samples: int) -> int:
    return (num_samples - 400) // 320 + 1


def test_plain_pipeline_call_builds_the_spidr_pipeline(spidr_dir):
    extractor = pipeline("feature-extraction", model=str(spidr_dir))
    assert isinstance(extractor, SpidRFeatureExtractionPipeline)
    assert isinstance(extractor, FeatureExtractionPipeline)


@pytest.mark.parametrize("kind", ["numpy", "tensor", "list-output"])
def test_array_inputs_match_the_model(spidr_dir, model, kind):
    extractor = pipeline("feature-extraction", model=spidr_dir)
    wave = _wave(1.3)
    if kind == "list-output":
        out = torch.tensor(extractor(wave))
    else:
        out = extractor(wave if kind == "numpy" else torch.from_numpy(wave), return_tensors=True)
    assert out.shape == (_frames(len(wave)), model.config.hidden_size)
    torch.testing.assert_close(out, _reference(model, wave), atol=ATOL, rtol=0)


def test_dict_input_is_resampled(spidr_dir, model):
    extractor = pipeline("feature-extraction", model=spidr_dir)
    wave8k = _wave(1.0, rate=8000)
    resampled = AF.resample(torch.from_numpy(wave8k), 8000, 16000).numpy()
    for key in ("array", "raw"):
        out = extractor({key: wave8k, "sampling_rate": 8000}, return_tensors=True)
        torch.testing.assert_close(out, _reference(model, resampled), atol=ATOL, rtol=0)


def test_file_path_and_bytes(spidr_dir, model, tmp_path):
    wave = _wave(0.9)
    path = tmp_path / "utt.flac"
    sf.write(path, wave, 16000)
    decoded, _ = sf.read(path, dtype="float32")
    extractor = pipeline("feature-extraction", model=spidr_dir)
    expected = _reference(model, decoded)
    torch.testing.assert_close(extractor(str(path), return_tensors=True), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(extractor(path.read_bytes(), return_tensors=True), expected, atol=ATOL, rtol=0)


def test_stereo_file_is_downmixed(spidr_dir, model, tmp_path):
    left, right = _wave(0.8, seed=1), _wave(0.8, seed=2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    out = pipeline("feature-extraction", model=spidr_dir)(str(path), return_tensors=True)
    torch.testing.assert_close(out, _reference(model, (left + right) / 2), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "layer,representation",
    [(0, "hidden_state"), (2, "hidden_state"), (1, "before_residual"), (3, "before_residual")],
)
def test_layer_and_representation(spidr_dir, model, layer, representation):
    extractor = pipeline("feature-extraction", model=spidr_dir, layer=layer, representation=representation)
    wave = _wave(0.7)
    torch.testing.assert_close(
        extractor(wave, return_tensors=True),
        _reference(model, wave, layer, representation),
        atol=ATOL,
        rtol=0,
    )
    # per-call options override the construction ones
    out = extractor(wave, layer=1, representation="hidden_state", return_tensors=True)
    torch.testing.assert_close(out, _reference(model, wave, 1), atol=ATOL, rtol=0)


def test_bad_layer_or_representation_is_refused(spidr_dir):
    with pytest.raises(ValueError, match="layer must be between 1 and 3"):
        pipeline("feature-extraction", model=spidr_dir, layer=0, representation="before_residual")
    with pytest.raises(ValueError, match="representation must be one of"):
        pipeline("feature-extraction", model=spidr_dir, representation="after")


def test_batched_inputs_keep_their_own_length(spidr_dir, model):
    extractor = pipeline("feature-extraction", model=spidr_dir, layer=2, representation="before_residual")
    waves = [_wave(1.5, seed=3), _wave(0.6, seed=4), _wave(1.1, seed=5)]
    batched = extractor(waves, batch_size=2, return_tensors=True)
    single = [extractor(w, return_tensors=True) for w in waves]
    for wave, b, s in zip(waves, batched, single, strict=True):
        assert b.shape[0] == _frames(len(wave))
        torch.testing.assert_close(b, s, atol=ATOL, rtol=0)
    nested = extractor(waves[:2], batch_size=2)
    assert [len(x) for x in nested] == [_frames(len(w)) for w in waves[:2]]


def test_multichannel_arrays_are_refused_not_cut_to_their_first_row(spidr_dir, model):
    """(channels, samples), the layout torchaudio.load returns, used to give the features of row 0 alone."""
    extractor = pipeline("feature-extraction", model=spidr_dir)
    left, right = _wave(0.6, seed=1), _wave(0.6, seed=2)
    with pytest.raises(ValueError, match=r"the input: an array of shape \(2, 9600\).*audio.mean\(axis=0\)"):
        extractor(np.stack([left, right]))
    with pytest.raises(ValueError, match=r"input 1: an array of shape \(9600, 2\)"):  # named by its place in a list
        extractor([left, np.stack([left, right], axis=1)], batch_size=2)
    with pytest.raises(ValueError, match=r"the input: an array of shape \(2, 9600\)"):
        extractor({"array": torch.from_numpy(np.stack([left, right])), "sampling_rate": 16000})
    with pytest.raises(ValueError, match=r"input 1: Utterance 0 has 100 samples"):  # any error names the input
        extractor([left, left[:100]])
    # one channel is mono: (1, samples) as torchaudio.load gives for a mono file
    torch.testing.assert_close(extractor(left[None], return_tensors=True), _reference(model, left), atol=ATOL, rtol=0)


def test_model_object_without_saved_feature_extractor(spidr_dir, model):
    extractor = pipeline("feature-extraction", model=model)
    wave = _wave(0.5)
    torch.testing.assert_close(
        extractor(wave, return_tensors=True), _reference(model, wave), atol=ATOL, rtol=0
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT with a word-level vocabulary, saved locally (no download)."""
    path = tmp_path_factory.mktemp("bert") / "tiny-bert"
    path.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "speech", "world", "units", "."]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    BertModel(config).eval().save_pretrained(path)
    return path


def test_text_feature_extraction_is_unchanged(bert_dir, spidr_dir):
    pipeline("feature-extraction", model=spidr_dir)  # a SpidR pipeline first, in the same process
    extractor = pipeline("feature-extraction", model=str(bert_dir))
    assert type(extractor) is FeatureExtractionPipeline
    model = BertModel.from_pretrained(bert_dir).eval()
    tokenizer = BertTokenizer.from_pretrained(bert_dir)
    with torch.no_grad():
        expected = model(**tokenizer("hello speech world .", return_tensors="pt")).last_hidden_state
    out = extractor("hello speech world .", return_tensors=True)
    torch.testing.assert_close(out, expected)
    nested = extractor("hello world")
    assert len(nested) == 1 and len(nested[0]) == 4 and len(nested[0][0]) == 16  # [1][tokens][hidden]
    # a model object plus a tokenizer object
    again = pipeline("feature-extraction", model=model, tokenizer=tokenizer)
    assert type(again) is FeatureExtractionPipeline
    torch.testing.assert_close(again("hello speech world .", return_tensors=True), expected)
    with pytest.raises(Exception, match="Impossible to guess which tokenizer"):  # transformers' own error
        pipeline("feature-extraction", model=model)


def _outcome(model) -> list:
    """What pipeline("feature-extraction") makes of a model: the class built, or the error raised."""
    try:
        built = pipeline("feature-extraction", model=model)
    except Exception as error:
        return ["error", type(error).__module__, type(error).__name__, str(error)]
    return ["built", type(built).__name__, type(built.tokenizer).__name__]


def test_text_models_without_tokenizer_behave_as_without_spidr_hf(bert_dir, tmp_path):
    """A text model without a tokenizer: the same error (or the same pipeline) as in a process without spidr_hf."""
    import inspect
    import json
    import subprocess
    import sys

    no_tokenizer = tmp_path / "bert-without-tokenizer"
    BertModel.from_pretrained(bert_dir).save_pretrained(no_tokenizer)
    code = (
        "import json, sys\nsys.modules['spidr_hf'] = None  # never imported\n"
        "from transformers import BertModel, pipeline\n" + inspect.getsource(_outcome) +
        f"print(json.dumps({{'object': _outcome(BertModel.from_pretrained({str(bert_dir)!r})), "
        f"'directory': _outcome({str(no_tokenizer)!r})}}))\n"
    )  # fmt: skip
    without = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert without.returncode == 0, without.stderr[-3000:]
    expected = json.loads(without.stdout.splitlines()[-1])
    assert expected["object"][0] == "error"  # transformers refuses a model object without a tokenizer
    registered = {"object": _outcome(BertModel.from_pretrained(bert_dir)), "directory": _outcome(str(no_tokenizer))}
    assert registered == expected


def test_import_registers_the_pipeline():
    if not hasattr(spidr_hf, "SpidRFeatureExtractionPipeline"):
        pytest.skip("spidr_hf/__init__.py does not call spidr_hf.pipeline.register_pipelines() yet")
    import subprocess
    import sys

    code = (
        "import spidr_hf\n"
        "from transformers.pipelines import SUPPORTED_TASKS\n"
        "from spidr_hf.pipeline import FeatureExtractionDispatcher\n"
        "assert SUPPORTED_TASKS['feature-extraction']['impl'] is FeatureExtractionDispatcher\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
