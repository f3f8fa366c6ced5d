"""torch.compile of the pretraining step on CPU: no graph breaks, the eager numbers, few recompilations.

The GPU counterpart (the Triton backend, inductor, speed) is `benchmarks/bench_pretrain_step.py`,
run by `benchmarks/gpu_session.sh`. Here the compiler backend is "aot_eager": it traces exactly what
inductor would (dynamo, autograd, functionalisation) in seconds on a 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch
from compile_checks import compare_compiled_step, micro_batch
from pretrain_worker import micro_model, run_pretraining, write_speechlike_corpus
from spidr_hf.modeling.modeling_spidr_pretraining import masked_frame_index
from torch._dynamo.utils import counters


def test_training_step_compiles_without_graph_breaks():
    """The torch backend is plain PyTorch: the compiler traces through the reference kernels."""
    assert compare_compiled_step("torch") == 0


def test_num_masked_gives_the_same_outputs():
    model = micro_model().eval()
    waves, mask, count = micro_batch(model, batch=3, seed=1)
    index = masked_frame_index(mask, count)
    torch.testing.assert_close(index, masked_frame_index(mask))
    assert torch.equal(torch.arange(mask.numel())[index], torch.arange(mask.numel()).reshape(mask.shape)[mask])
    with torch.no_grad():
        known = model(waves, mask_time_indices=mask, num_masked=count)
        read = model(waves, mask_time_indices=mask)
    assert torch.equal(known.frame_losses, read.frame_losses)
    assert torch.equal(known.teacher_labels, read.teacher_labels)
    assert int(known.num_masked) == count
    with pytest.raises(RuntimeError, match="num_masked differs"):
        model(waves, mask_time_indices=mask, num_masked=count - 1)
    with pytest.raises(TypeError, match="num_masked must be"):
        model(waves, mask_time_indices=mask, num_masked=float(count))


@pytest.mark.slow
def test_pretrainer_with_torch_compile_and_fused_adamw(tmp_path):
    """`--torch-compile` (the Trainer's own flag) with `--optim adamw_torch_fused`: losses as eager, few graphs.

    Batches differ in length and masked count: the first compiles with static shapes; each size seen
    to change (here the length, then the masked count) recompiles once with it dynamic, and later
    batches reuse that graph.
    """
    write_speechlike_corpus(tmp_path / "data", 8)
    runs = {}
    for name, extra in {"eager": {}, "compiled": {"torch_compile": True, "torch_compile_backend": "aot_eager"}}.items():
        torch._dynamo.reset()
        counters.clear()
        trainer = run_pretraining(tmp_path / "data", tmp_path / name, max_steps=4, optim="adamw_torch_fused", **extra)
        runs[name] = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(runs["compiled"]) == 4
    torch.testing.assert_close(runs["compiled"], runs["eager"], rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 3
    assert sum(counters["graph_break"].values()) == 0
