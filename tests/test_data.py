"""Tests of spidr_hf.training.data (and the spidr_hf.sources it indexes with): sources, the dataset, the batch sampler, the collator."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from spidr_hf.modeling import num_frames
from spidr_hf.training.data import (
    LengthBudgetBatchSampler,
    PretrainingCollator,
    SpidRAudioDataset,
    is_empty_batch,
    load_training_index,
)
from torch.utils.data import DataLoader

from spidr_hf.audio import AudioDecodeError, load_audio, standardize
from spidr_hf.sources import AudioItem, read_manifest, write_manifest


def noise(num_samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.1, num_samples).astype(np.float32)


def write(path, num_samples: int, rate: int = 16_000, seed: int = 0, fmt: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(
        path, noise(num_samples, seed), rate, format=fmt, subtype="FLOAT" if fmt in (None, "WAV") else None
    )
    return path


@pytest.fixture
def corpus(tmp_path):
    """A small folder: mixed formats and rates, one too-short file, one corrupt file."""
    root = tmp_path / "corpus"
    write(root / "a.wav", 20_000, seed=1)
    write(root / "sub/b.flac", 6_000, seed=2, fmt="FLAC")
    write(root / "sub/deeper/c.wav", 4_000, rate=8_000, seed=3)  # 8,000 samples at 16 kHz
    write(root / "short.wav", 1_500, seed=4)  # under 2,000: dropped
    (root / "corrupt.wav").write_bytes(b"not audio at all" * 20)
    (root / "readme.txt").write_text("ignored")
    return root


def by_name(utterances: list[AudioItem]) -> dict[str, int]:
    return {str(u.source).rsplit("/", 1)[-1]: u.num_samples for u in utterances}


# --- indexing ---------------------------------------------------------------------------------


def test_folder_index(corpus, caplog):
    with caplog.at_level(logging.INFO):
        index = load_training_index(corpus)
    assert by_name(index) == {"a.wav": 20_000, "b.flac": 6_000, "c.wav": 8_000}
    assert [u.source for u in index] == sorted(u.source for u in index)
    assert "dropped 1 utterance(s) shorter than 2000 samples" in caplog.text
    assert "dropped 1 unreadable audio file(s)" in caplog.text and "corrupt.wav" in caplog.text


def test_folder_index_strict_raises(corpus):
    with pytest.raises(AudioDecodeError, match="corrupt.wav"):
        load_training_index(corpus, strict=True)


def test_min_samples_is_configurable(corpus):
    assert "short.wav" in by_name(load_training_index(corpus, min_samples=1_000))
    assert set(by_name(load_training_index(corpus, min_samples=7_000))) == {"a.wav", "c.wav"}


def test_csv_manifest(corpus, tmp_path):
    manifest = corpus / "train.csv"
    manifest.write_text(
        "path,num_samples,sampling_rate\n"
        "a.wav,20000,\n"  # relative to the manifest, length at 16 kHz
        "sub/deeper/c.wav,4000,8000\n"  # length at the file's rate: converted
        f"{corpus / 'sub/b.flac'},,\n"  # absolute, length read from the header
        "short.wav,1500,\n"
    )
    assert by_name(load_training_index(manifest)) == {"a.wav": 20_000, "c.wav": 8_000, "b.flac": 6_000}
    with pytest.raises(ValueError, match="'path' column"):
        (tmp_path / "bad.csv").write_text("file,num_samples\na.wav,3\n")
        load_training_index(tmp_path / "bad.csv")


def test_jsonl_manifest(corpus):
    lines = [{"path": "a.wav"}, {"path": "sub/deeper/c.wav", "num_samples": 8_000}, {"path": "corrupt.wav"}]
    (corpus / "train.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert by_name(load_training_index(corpus / "train.jsonl")) == {"a.wav": 20_000, "c.wav": 8_000}


def test_fairseq_tsv_manifest(corpus, tmp_path):
    (tmp_path / "train.tsv").write_text(f"{corpus}\na.wav\t20000\nsub/b.flac\t6000\nshort.wav\t1500\n")
    assert by_name(load_training_index(tmp_path / "train.tsv")) == {"a.wav": 20_000, "b.flac": 6_000}
    rows = read_manifest(tmp_path / "train.tsv")
    assert rows[0].path == str(corpus / "a.wav") and rows[0].num_samples == 20_000


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("rows.jsonl", '{"path": "a.wav"}\n[1, 2]\n', r"rows.jsonl:2: expected a JSON object with a 'path', got list"),
        ("cut.jsonl", '{"path": "a.wav"}\n{"path": \n', r"cut.jsonl:2: not valid JSON"),
        ("lengths.csv", "path,num_samples\na.wav,many\n", r"lengths.csv:2: num_samples must be a positive integer, got 'many'"),
        ("lengths.tsv", "/data\na.wav\t-5\n", r"lengths.tsv:2: num_samples must be a positive integer, got '-5'"),
        ("latin1.csv", b"path\n\xe9t\xe9.wav\n", r"manifest .*latin1.csv is not UTF-8 text"),
    ],
)
def test_bad_manifest_lines_are_named(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message):
        load_training_index(path)


def test_unknown_manifest_and_missing_source(tmp_path):
    (tmp_path / "list.txt").write_text("a.wav\n")
    with pytest.raises(ValueError, match="unknown manifest type"):
        load_training_index(tmp_path / "list.txt")
    with pytest.raises(FileNotFoundError):
        load_training_index(tmp_path / "nothing_here")


def test_write_manifest_round_trip(corpus, tmp_path):
    index = load_training_index(corpus)
    write_manifest(index, tmp_path / "saved.csv")
    assert load_training_index(tmp_path / "saved.csv") == index


def test_datasets_audio_column(corpus):
    datasets = pytest.importorskip("datasets")
    buffer = io.BytesIO()
    sf.write(buffer, noise(3_000, 5), 8_000, format="FLAC")
    rows = [
        {"bytes": None, "path": str(corpus / "a.wav")},
        {"bytes": buffer.getvalue(), "path": "in_memory.flac"},
        {"bytes": None, "path": str(corpus / "short.wav")},
        {"bytes": b"garbage", "path": "broken.wav"},
    ]
    table = datasets.Dataset.from_dict({"audio": rows, "text": list("abcd")})
    ds = table.cast_column("audio", datasets.Audio(sampling_rate=16_000))  # decoding would need torchcodec
    index = load_training_index(ds)
    assert index == [AudioItem(0, 20_000), AudioItem(1, 6_000)]
    dataset = SpidRAudioDataset.from_source(ds, max_samples=50_000)
    assert dataset.lengths == [20_000, 6_000]
    assert dataset[1]["input_values"].shape == (6_000,)
    expected = load_audio(corpus / "a.wav")
    np.testing.assert_allclose(
        dataset[0]["input_values"].numpy(), (expected - expected.mean()) / expected.std(), atol=1e-4
    )


def test_datasets_array_column():
    datasets = pytest.importorskip("datasets")
    rows = [
        {"array": noise(4_000).tolist(), "sampling_rate": 8_000},
        {"array": noise(100).tolist(), "sampling_rate": 16_000},
    ]
    ds = datasets.Dataset.from_dict({"speech": rows})
    dataset = SpidRAudioDataset.from_source(ds, audio_column="speech")
    assert dataset.lengths == [8_000]
    assert dataset[0]["input_values"].shape == (8_000,)
    with pytest.raises(ValueError, match="no column"):
        load_training_index(ds)


# --- dataset ----------------------------------------------------------------------------------


def test_items_are_cropped_from_the_standardised_file_and_deterministic(corpus):
    dataset = SpidRAudioDataset(load_training_index(corpus), max_samples=5_000, seed=3)
    for i in range(len(dataset)):
        item = dataset[i]
        wave = item["input_values"]
        assert item["index"] == i and wave.dtype == torch.float32
        assert len(wave) == min(dataset.lengths[i], 5_000)
        whole = standardize(dataset.audio.decode(dataset.utterances[i]))
        assert is_slice(wave.numpy(), whole)
    assert torch.equal(dataset[0]["input_values"], dataset[0]["input_values"])
    assert torch.equal(dataset[(0, 0)]["input_values"], dataset[0]["input_values"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[(0, 0)]["input_values"], dataset[0]["input_values"])  # new epoch, new crop
    assert torch.equal(dataset[(0, 1)]["input_values"], dataset[0]["input_values"])
    other_seed = SpidRAudioDataset(dataset.utterances, max_samples=5_000, seed=4)
    assert not torch.equal(other_seed[(0, 1)]["input_values"], dataset[0]["input_values"])


def slice_offset(crop: np.ndarray, whole: np.ndarray) -> int | None:
    """Where ``crop`` lies in ``whole`` sample for sample, or None."""
    windows = np.lib.stride_tricks.sliding_window_view(whole, len(crop))
    matches = np.flatnonzero((windows == crop).all(axis=1))
    return int(matches[0]) if len(matches) else None


def is_slice(crop: np.ndarray, whole: np.ndarray) -> bool:
    return slice_offset(crop, whole) is not None


def test_crop_is_a_slice_of_the_whole_standardised_file(corpus):
    """As in the reference: the file is standardised whole, a crop is not standardised again."""
    whole = standardize(load_audio(corpus / "a.wav"))
    dataset = SpidRAudioDataset([AudioItem(str(corpus / "a.wav"), 20_000)], max_samples=5_000)
    offsets = set()
    for epoch in range(5):
        crop = dataset[(0, epoch)]["input_values"].numpy()
        offsets.add(slice_offset(crop, whole))
        assert abs(crop.mean()) > 1e-3  # a window of the standardised file is not itself standardised
    assert None not in offsets and len(offsets) > 1


def test_resampled_long_file_is_cropped(corpus):
    dataset = SpidRAudioDataset([AudioItem(str(corpus / "sub/deeper/c.wav"), 8_000)], max_samples=3_000)
    assert dataset[0]["input_values"].shape == (3_000,)


def test_bad_file_returns_none_and_is_counted(corpus, caplog):
    utterances = [AudioItem(str(corpus / "a.wav"), 20_000), AudioItem(str(corpus / "corrupt.wav"), 9_000)]
    dataset = SpidRAudioDataset(utterances)
    with caplog.at_level(logging.WARNING):
        assert dataset[1] is None and dataset[1] is None
    assert dataset.num_failed == 2 and dataset.failed_sources == {str(corpus / "corrupt.wav")}
    assert sum("corrupt.wav" in r.getMessage() for r in caplog.records) == 1  # warned once per file
    assert dataset[0] is not None
    with pytest.raises(AudioDecodeError, match="corrupt.wav"):
        SpidRAudioDataset(utterances, strict=True)[1]


def test_file_decoding_shorter_than_min_samples_is_skipped(corpus):
    dataset = SpidRAudioDataset([AudioItem(str(corpus / "short.wav"), 5_000)])  # the index lied
    assert dataset[0] is None and dataset.num_failed == 1


# --- batch sampler ----------------------------------------------------------------------------


LENGTHS = np.random.default_rng(0).integers(2_000, 60_000, 500).tolist() + [90_000, 2_000, 2_000]


def all_batches(sampler: LengthBudgetBatchSampler) -> list[list[int]]:
    return [list(batch) for batch in sampler]


@pytest.mark.parametrize("cost", ["cropped", "sum"])
def test_budget_respected_and_each_utterance_once(cost):
    sampler = LengthBudgetBatchSampler(LENGTHS, 200_000, seed=1, max_samples=50_000, cost=cost)
    batches = all_batches(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        capped = [min(LENGTHS[i], 50_000) for i in batch]
        assert (sum(capped) if cost == "sum" else len(batch) * min(capped)) <= 200_000
        assert sampler.batch_cost(batch) <= 200_000
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(len(LENGTHS)))


def test_batches_group_similar_lengths():
    sampler = LengthBudgetBatchSampler(LENGTHS, 200_000, seed=1, max_samples=100_000, num_buckets=100)
    waste = sum(sum(LENGTHS[i] for i in b) - len(b) * min(LENGTHS[i] for i in b) for b in sampler)
    assert waste / sum(LENGTHS) < 0.05  # cropping to the shortest loses little


def test_max_batch_size():
    sampler = LengthBudgetBatchSampler(LENGTHS, 3_800_000, max_samples=50_000, max_batch_size=7)
    assert max(len(b) for b in sampler) == 7


def test_deterministic_per_seed_and_different_per_epoch():
    def make(seed: int) -> LengthBudgetBatchSampler:
        return LengthBudgetBatchSampler(LENGTHS, 200_000, seed=seed, max_samples=50_000)

    first, again, other = make(0), make(0), make(1)
    epoch0 = all_batches(first)
    assert epoch0 == all_batches(again) and epoch0 != all_batches(other)
    first.set_epoch(1)
    assert all_batches(first) != epoch0
    first.set_epoch(0)
    assert all_batches(first) == epoch0


@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_across_ranks(drop_last):
    world = 3
    samplers = [
        LengthBudgetBatchSampler(
            LENGTHS, 150_000, seed=2, num_replicas=world, rank=r, drop_last=drop_last, max_samples=50_000
        )
        for r in range(world)
    ]
    for sampler in samplers:
        sampler.set_epoch(4)
    per_rank = [all_batches(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    total = len(samplers[0].epoch_batches(4))
    assert sum(len(b) for b in per_rank) == (
        total - total % world if drop_last else -(-total // world) * world
    )
    seen = [i for batches in per_rank for batch in batches for i in batch]
    if drop_last:
        assert len(seen) == len(set(seen))  # disjoint
    else:
        assert set(seen) == set(range(len(LENGTHS)))  # covering; only padding batches repeat
        unpadded = [i for batch in samplers[0].epoch_batches(4) for i in batch]
        assert sorted(unpadded) == list(range(len(LENGTHS)))


def test_state_restore_resumes_the_same_order():
    def make() -> LengthBudgetBatchSampler:
        return LengthBudgetBatchSampler(LENGTHS, 200_000, seed=5, num_replicas=2, rank=1, max_samples=50_000)

    reference = make()
    reference.set_epoch(2)
    expected = all_batches(reference)

    interrupted = make()
    interrupted.set_epoch(2)
    iterator = iter(interrupted)
    consumed = [next(iterator) for _ in range(4)]
    [next(iterator) for _ in range(2)]  # prefetched by a DataLoader, never trained on
    state = interrupted.state_dict(consumed_batches=len(consumed))
    assert state["epoch"] == 2 and state["position"] == 4
    assert interrupted.state_dict()["position"] == 6

    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a training loop calls this again on resume: must not restart the epoch
    assert consumed + all_batches(resumed) == expected
    assert all_batches(resumed) == expected  # the next pass over the same epoch is whole again
    resumed.set_epoch(3)
    assert resumed.state_dict()["position"] == 0

    with pytest.raises(ValueError, match="num_replicas"):
        LengthBudgetBatchSampler(LENGTHS, 200_000, seed=5, max_samples=50_000).load_state_dict(state)


def test_sampler_arguments_validated():
    with pytest.raises(ValueError, match="must hold one crop"):
        LengthBudgetBatchSampler(LENGTHS, 100_000, max_samples=320_000)
    with pytest.raises(ValueError):
        LengthBudgetBatchSampler([], 400_000)
    with pytest.raises(ValueError):
        LengthBudgetBatchSampler(LENGTHS, 400_000, num_replicas=2, rank=2)


def test_unshuffled_batches_are_sorted():
    sampler = LengthBudgetBatchSampler(
        LENGTHS, 200_000, max_samples=50_000, shuffle=False, num_buckets=10_000
    )
    minima = [min(min(LENGTHS[i], 50_000) for i in batch) for batch in sampler]
    assert minima == sorted(minima)


# --- collator ---------------------------------------------------------------------------------


def item(num_samples: int, index: int, epoch: int = 0) -> dict:
    return {"input_values": torch.from_numpy(noise(num_samples, index) + 1.0), "index": index, "epoch": epoch}


def test_collator_crops_and_masks():
    collator = PretrainingCollator(seed=0)
    items = [item(9_000, 0), item(6_400, 1), item(12_000, 2)]
    batch = collator(items)
    values, mask = batch["input_values"], batch["mask_time_indices"]
    assert values.shape == (3, 6_400) and values.dtype == torch.float32
    for row, source in zip(values, items, strict=True):  # crops of the items as they are: no re-standardising
        assert is_slice(row.numpy(), source["input_values"].numpy())
    assert mask.shape == (3, num_frames(6_400)) and mask.dtype == torch.bool
    assert len(set(mask.sum(dim=1).tolist())) == 1 and batch["num_skipped"] == 0


def test_collator_is_deterministic_given_seed_and_batch():
    items = [item(9_000, 0), item(6_400, 1)]
    a, b = PretrainingCollator(seed=0)(items), PretrainingCollator(seed=0)(items)
    assert torch.equal(a["input_values"], b["input_values"]) and torch.equal(
        a["mask_time_indices"], b["mask_time_indices"]
    )
    c = PretrainingCollator(seed=1)(items)
    assert not torch.equal(a["mask_time_indices"], c["mask_time_indices"])
    d = PretrainingCollator(seed=0)([item(9_000, 0, epoch=1), item(6_400, 1, epoch=1)])
    assert not torch.equal(a["mask_time_indices"], d["mask_time_indices"])


def test_collator_skips_none_and_marks_empty_batches():
    batch = PretrainingCollator()([None, item(5_000, 3), None])
    assert batch["input_values"].shape == (1, 5_000) and batch["num_skipped"] == 2
    assert not is_empty_batch(batch)
    empty = PretrainingCollator()([None, None])
    assert is_empty_batch(empty) and empty["num_skipped"] == 2
    assert empty["mask_time_indices"].shape == (0, 0)


def test_collator_from_config():
    class Config:
        conv_kernel = [10, 3]
        conv_stride = [5, 2]
        mask_length = 4

    collator = PretrainingCollator.from_config(Config(), seed=3)
    batch = collator([item(1_000, 0)])
    assert batch["mask_time_indices"].shape == (1, num_frames(1_000, [10, 3], [5, 2]))
    assert collator.mask_length == 4 and collator.mask_prob == 0.8


def test_a_batch_crop_is_a_slice_of_the_whole_standardised_file(tmp_path):
    """Dataset then collator, as the trainer runs them: each row is a slice of its standardised file."""
    lengths = [20_000, 9_000, 13_000]
    for i, length in enumerate(lengths):
        write(tmp_path / f"u{i}.wav", length, seed=10 + i)
    index = [AudioItem(str(tmp_path / f"u{i}.wav"), n) for i, n in enumerate(lengths)]
    dataset = SpidRAudioDataset(index, max_samples=12_000, seed=1)
    batch = PretrainingCollator(seed=1)([dataset[i] for i in range(len(index))])
    assert batch["input_values"].shape == (3, 9_000)  # the shortest file, whole
    for row, utterance in zip(batch["input_values"].numpy(), index, strict=True):
        assert is_slice(row, standardize(load_audio(utterance.path)))


def test_dataloader_end_to_end(corpus):
    index = load_training_index(corpus)
    dataset = SpidRAudioDataset(index + [AudioItem(str(corpus / "corrupt.wav"), 7_000)], max_samples=8_000)
    sampler = LengthBudgetBatchSampler(dataset.lengths, 16_000, seed=0, max_samples=8_000, yield_epoch=True)
    sampler.set_epoch(1)

    def run(num_workers: int) -> list[dict]:
        loader = DataLoader(
            dataset, batch_sampler=sampler, collate_fn=PretrainingCollator(seed=0), num_workers=num_workers
        )
        return list(loader)

    batches = run(0)
    assert sum(b["input_values"].shape[0] + b["num_skipped"] for b in batches) == len(dataset)
    assert sum(b["num_skipped"] for b in batches) == 1
    for batch in batches:
        if not is_empty_batch(batch):
            assert batch["input_values"].numel() <= 16_000
    in_workers = run(2)  # same crops and masks whatever the number of workers
    for x, y in zip(batches, in_workers, strict=True):
        assert torch.equal(x["input_values"], y["input_values"])
        assert torch.equal(x["mask_time_indices"], y["mask_time_indices"])
