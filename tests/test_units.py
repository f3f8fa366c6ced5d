"""Discrete units: head argmax (against the reference fixture), codeword units, deduplication, k-means."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spidr_hf import SpidRForPreTraining, SpidRModel
from spidr_hf.units import (
    KMeansQuantizer,
    codeword_units,
    deduplicate,
    deduplicate_batch,
    fit_kmeans,
    layer_features,
    predict_units,
)


@pytest.fixture(scope="module")
def reference_model(converted_dir) -> SpidRForPreTraining:
    return SpidRForPreTraining.from_pretrained(converted_dir, codebook_backend="torch").eval()


@pytest.fixture
def tiny_model(tiny_config) -> SpidRForPreTraining:
    torch.manual_seed(0)
    return SpidRForPreTraining(tiny_config).eval()


def _padded_batch(expected):
    waves, lengths = expected["waveforms"], expected["sample_lengths"]
    return waves, (torch.arange(waves.shape[1])[None] < lengths[:, None]).long()


def test_head_units_equal_the_reference_argmax(reference_model, expected):
    for layer in reference_model.config.codebook_layers:
        units = predict_units(reference_model, expected["waveforms"][:1], layer=layer)
        assert units.dtype == torch.int64
        assert units[0].tolist() == expected[f"single.codebook_probs{layer}"].argmax(-1).tolist()


def test_head_units_of_a_padded_batch(reference_model, expected):
    waves, mask = _padded_batch(expected)
    layer = reference_model.config.codebook_layers[-1]
    units = predict_units(reference_model, waves, mask, layer=layer)
    frames = expected["frame_lengths"].tolist()
    for row, num_frames in enumerate(frames):
        alone = predict_units(
            reference_model, waves[row : row + 1, : expected["sample_lengths"][row]], layer=layer
        )
        assert units[row, :num_frames].tolist() == alone[0].tolist()
        assert (units[row, num_frames:] == -1).all()


def test_head_units_refuse_layers_without_a_head(reference_model, expected):
    with pytest.raises(ValueError, match="codebook layers are"):
        predict_units(reference_model, expected["waveforms"][:1], layer=1)


def test_codeword_units_follow_the_target_recipe(tiny_model):
    torch.manual_seed(1)
    waves = torch.randn(2, 8000)
    mask = torch.ones_like(waves, dtype=torch.long)
    mask[1, 5000:] = 0
    layer = tiny_model.config.codebook_layers[0]
    units = codeword_units(tiny_model, waves, mask, layer=layer)
    codewords = tiny_model.codewords[0]
    for row, length in enumerate([8000, 5000]):
        features, _ = layer_features(
            tiny_model, waves[row : row + 1, :length], None, layer, "before_residual"
        )
        normed = F.instance_norm(features.transpose(1, 2), eps=1e-5).transpose(1, 2)[0]
        expected = torch.cdist(normed, codewords).argmin(-1)
        num_frames = expected.shape[0]
        assert units[row, :num_frames].tolist() == expected.tolist()
        assert (units[row, num_frames:] == -1).all()


def test_deduplicate_kinds():
    assert deduplicate([3, 3, 5, 5, 5, 3]) == [3, 5, 3]
    assert deduplicate([]) == []
    values, counts = deduplicate(np.array([1, 1, 2]), return_counts=True)
    assert values.tolist() == [1, 2] and counts.tolist() == [2, 1]
    assert deduplicate(torch.tensor([4, 4, 4, 0])).tolist() == [4, 0]
    with pytest.raises(ValueError, match="deduplicate_batch"):
        deduplicate(torch.zeros(2, 3))


def test_deduplicate_batch_honours_padding():
    units = torch.tensor([[1, 1, 2, 2, 1, -1, -1], [7, 7, 7, 7, 7, 7, 7], [3, -1, -1, -1, -1, -1, -1]])
    out, lengths = deduplicate_batch(units)
    assert lengths.tolist() == [3, 1, 1]
    assert out.tolist() == [[1, 2, 1], [7, -1, -1], [3, -1, -1]]


def _blobs(seed: int = 0, per_cluster: int = 200, k: int = 5, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=generator) * 10
    labels = torch.arange(k).repeat_interleave(per_cluster)
    points = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator)
    return points, labels


def test_kmeans_recovers_separable_blobs():
    points, truth = _blobs()
    result = fit_kmeans(points, 5, seed=0)
    quantizer = KMeansQuantizer(result.centroids, layer=2)
    found = quantizer(points)
    # the same partition: each true cluster maps to exactly one label, and the map is one-to-one
    mapping = {int(t): set(found[truth == t].tolist()) for t in truth.unique()}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 5
    assert result.inertia == pytest.approx(((points - result.centroids[found]) ** 2).sum().item(), rel=1e-3)


def test_kmeans_with_repeated_points_fills_every_cluster():
    points = torch.tensor([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]]).repeat(50, 1)
    result = fit_kmeans(points, 3, seed=3)
    assert sorted(map(tuple, result.centroids.tolist())) == [(0.0, 0.0), (5.0, 5.0), (10.0, 0.0)]


def test_quantizer_round_trip_and_units(tiny_model, tmp_path):
    torch.manual_seed(2)
    waves = torch.randn(2, 6400)
    features, mask = layer_features(tiny_model, waves, None, 2, "hidden_state")
    quantizer = KMeansQuantizer.fit(features[mask], 4, layer=2, representation="hidden_state", seed=0)
    path = quantizer.save_pretrained(tmp_path)
    assert path.name == "kmeans_layer2_k4_hidden_state.safetensors"
    loaded = KMeansQuantizer.from_pretrained(tmp_path, layer=2)
    assert (loaded.layer, loaded.k, loaded.representation) == (2, 4, "hidden_state")
    assert loaded.info["num_frames"] == int(mask.sum())
    torch.testing.assert_close(loaded.centroids, quantizer.centroids)
    assert loaded.predict_units(tiny_model, waves).tolist() == loaded(features).tolist()
    encoder = SpidRModel(tiny_model.config).eval()
    encoder.load_state_dict(tiny_model.spidr.state_dict())
    attention_mask = torch.ones_like(waves, dtype=torch.long)
    attention_mask[1, 3200:] = 0
    units = loaded.predict_units(encoder, waves, attention_mask)  # the encoder alone works too
    short, _ = layer_features(encoder, waves[1:, :3200], None, 2, "hidden_state")
    assert units[1, :9].tolist() == loaded(short)[0].tolist() and (units[1, 9:] == -1).all()
    with pytest.raises(FileNotFoundError, match="exactly one"):
        KMeansQuantizer.from_pretrained(tmp_path, layer=3)
