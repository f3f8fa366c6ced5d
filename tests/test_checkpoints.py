"""Checkpoints a kill cannot leave half-written, and resuming from the newest complete one.

A pretraining subprocess SIGKILLs itself in the middle of writing checkpoint 4; resuming with
`last` must skip it (and a folder of the kind the Trainer used to leave, with only `config.json`
and `model.safetensors`) and end bitwise equal to a run that was never interrupted.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pretrain_worker import micro_model, run_pretraining, write_speechlike_corpus
from safetensors.torch import load_file
from spidr_hf.training import checkpoint_problem, last_complete_checkpoint
from spidr_hf.training.checkpoints import STAGING_FOLDER

WORKER = Path(__file__).with_name("pretrain_worker.py")
STEPS, SAVE_STEPS, KILLED_AT, DROPOUT = 6, 2, 4, 0.1


@pytest.fixture(autouse=True)
def _plain_cpu_convolutions():
    with torch.backends.mkldnn.flags(enabled=False):  # as the worker runs them
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_speechlike_corpus(tmp_path_factory.mktemp("data"), 10, seconds=(0.6, 1.4))[0].parent


def _train(data: Path, output_dir: Path, **arguments):
    """What the worker script runs, in this process (dropout on: the RNG state must resume too)."""
    with torch.backends.mkldnn.flags(enabled=False):
        model = micro_model(feat_proj_dropout=DROPOUT, hidden_dropout=DROPOUT)
        return run_pretraining(data, output_dir, model=model, max_steps=STEPS, save_steps=SAVE_STEPS, **arguments)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    trainer = _train(data, tmp_path_factory.mktemp("full") / "run")
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, Path(trainer.args.output_dir)


@pytest.fixture(scope="module")
def killed(data, tmp_path_factory) -> Path:
    """The output folder of a run killed (SIGKILL) while it wrote checkpoint 4."""
    out = tmp_path_factory.mktemp("killed")
    command = [sys.executable, str(WORKER), str(data), str(out), "--max_steps", str(STEPS),
               "--save_steps", str(SAVE_STEPS), "--dropout", str(DROPOUT), "--kill_during_save_at", str(KILLED_AT)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    return out / "run"


@pytest.mark.slow
def test_a_kill_while_writing_a_checkpoint_leaves_no_checkpoint_folder(killed):
    assert checkpoint_problem(killed / "checkpoint-2") is None
    assert not (killed / f"checkpoint-{KILLED_AT}").exists()  # only complete checkpoints get their name
    partial = killed / STAGING_FOLDER / f"checkpoint-{KILLED_AT}"  # killed after the weights and the optimizer
    assert {"model.safetensors", "optimizer.pt"} <= {p.name for p in partial.iterdir()}
    assert checkpoint_problem(partial) == "it has no trainer_state.json"


@pytest.mark.slow
def test_resuming_after_a_kill_ends_bitwise_equal_to_an_uninterrupted_run(killed, uninterrupted, data, tmp_path, caplog):
    output_dir = tmp_path / "run"
    shutil.copytree(killed, output_dir)
    # what the Trainer itself leaves when killed mid-checkpoint: the weights, nothing else
    leftover = output_dir / f"checkpoint-{KILLED_AT}"
    leftover.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(output_dir / STAGING_FOLDER / f"checkpoint-{KILLED_AT}" / name, leftover)

    with caplog.at_level(logging.WARNING, logger="spidr_hf.training.checkpoints"):
        resumed = _train(data, output_dir, resume_from_checkpoint="last")
    skipped = caplog.text
    assert f"resuming from checkpoint-2, not checkpoint-{KILLED_AT}: it has no trainer_state.json" in skipped
    assert f"not checkpoint-{KILLED_AT}: its writing was interrupted" in skipped

    full_state, full_dir = uninterrupted
    state = resumed.model.state_dict()
    assert state.keys() == full_state.keys()
    for key, value in full_state.items():
        assert torch.equal(state[key], value), key  # bitwise, not within a tolerance
    for step in (KILLED_AT, STEPS):  # the leftover was replaced by the complete checkpoint of the resumed run
        assert checkpoint_problem(output_dir / f"checkpoint-{step}") is None
        saved, want = (load_file(d / f"checkpoint-{step}" / "model.safetensors") for d in (output_dir, full_dir))
        assert all(torch.equal(saved[k], want[k]) for k in want)
    assert not (output_dir / STAGING_FOLDER).exists()


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda c: (c / "trainer_state.json").unlink(), "it has no trainer_state.json"),
        (lambda c: _cut(c / "trainer_state.json"), "its trainer_state.json cannot be read"),
        (lambda c: _cut(c / "model.safetensors"), "its model.safetensors cannot be read"),
        (lambda c: (c / "model.safetensors").unlink(), "it has no model.safetensors"),
        (lambda c: _cut(c / "optimizer.pt"), "its optimizer.pt is cut short"),
        (lambda c: (c / "scheduler.pt").unlink(), "it has no scheduler.pt"),
        (lambda c: (c / "rng_state.pth").unlink(), "it has no rng_state.pth"),
    ],
    ids=["no-state", "cut-state", "cut-weights", "no-weights", "cut-optimizer", "no-scheduler", "no-rng"],
)
def test_incomplete_checkpoints_are_named_and_skipped(uninterrupted, tmp_path, damage, problem):
    _, full_dir = uninterrupted
    for step in (2, 4):
        shutil.copytree(full_dir / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    damage(tmp_path / "checkpoint-4")
    assert checkpoint_problem(tmp_path / "checkpoint-4").startswith(problem)
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    damage(tmp_path / "checkpoint-2")
    with pytest.raises(FileNotFoundError, match=f"no complete checkpoint in {tmp_path} to resume from .*checkpoint-4: {problem}"):
        last_complete_checkpoint(tmp_path)


def test_resuming_without_a_checkpoint_is_an_error(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
        _train(data, tmp_path / "run", resume_from_checkpoint="last")
    with pytest.raises(ValueError, match="cannot resume from .*nowhere: it does not exist"):
        _train(data, tmp_path / "run", resume_from_checkpoint=str(tmp_path / "nowhere"))
