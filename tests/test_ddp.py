"""Two-process DDP on CPU (gloo) through torchrun: identical ranks, equal to one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pretrain_worker import micro_model, run_pretraining, write_speechlike_corpus

WORKER = Path(__file__).with_name("pretrain_worker.py")
STEPS = 3
FREEZE_STEP = 2  # the feature encoder freezes mid-run: DDP must cope with parameters that stop training


@pytest.fixture(autouse=True)
def _plain_cpu_convolutions():
    with torch.backends.mkldnn.flags(enabled=False):
        yield


def _torchrun(data: Path, out: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(WORKER), str(data), str(out), "--max_steps", str(STEPS), "--freeze_feature_encoder_step", str(FREEZE_STEP),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"


@pytest.mark.slow
def test_ddp_ranks_agree_and_equal_one_process_with_the_same_global_batch(tmp_path):
    data = write_speechlike_corpus(tmp_path / "data", 16, seconds=(0.6, 1.2))[0].parent
    _torchrun(data, tmp_path / "ddp")
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # every rank holds the same student, teacher and codebooks, bit for bit
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert int(ranks[0]["current_step"]) == STEPS

    # one process, 2 micro-batches per step: rank r's batch k is batch 2k + r of the same epoch order
    single = run_pretraining(
        data,
        tmp_path / "single",
        model=micro_model(freeze_feature_encoder_step=FREEZE_STEP),
        max_steps=STEPS,
        gradient_accumulation_steps=2,
    )
    state = single.model.state_dict()
    for key, value in ranks[0].items():
        torch.testing.assert_close(value, state[key], atol=1e-6, rtol=1e-5, msg=key)

    ddp_logs = [e for e in json.loads((tmp_path / "ddp" / "rank0.json").read_text()) if "loss" in e]
    single_logs = [e for e in single.state.log_history if "loss" in e]
    for key in ("loss", "grad_norm", "target_perplexity", "prediction_perplexity"):
        assert [e[key] for e in ddp_logs] == pytest.approx([e[key] for e in single_logs], rel=1e-5), key
