"""A compiled pretraining step against the eager one, shared by test_compile.py and test_kernels.py.

The step is the trainer's (forward over the masked frames with `num_masked` known on the host,
backward, codebook update); `torch.compile(fullgraph=True, backend="aot_eager")` raises on any graph
break, and dynamo's counters confirm there were none.
"""

from __future__ import annotations

import copy

import torch
from pretrain_worker import micro_model
from spidr_hf.training import compute_span_mask
from torch._dynamo.utils import counters


def micro_batch(model, batch: int = 2, samples: int = 8000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Standardised noise, its span mask and the mask's count (as the trainer knows it)."""
    gen = torch.Generator().manual_seed(seed)
    waves = torch.randn(batch, samples, generator=gen)
    mask = compute_span_mask((batch, model.config.frame_geometry.num_frames(samples)), generator=gen)
    return waves, mask, int(mask.sum())


def train_step(model, waves: torch.Tensor, mask: torch.Tensor, num_masked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, the summed frame losses' backward, then the deferred codebook update (outside the graph)."""
    out = model(waves, mask_time_indices=mask, num_masked=num_masked)
    out.frame_losses.sum().backward()
    return out.loss.detach(), out.teacher_labels


def compare_compiled_step(codebook_backend: str, steps: int = 2) -> int:
    """Run `steps` compiled and eager steps on twin models, assert they agree; return the graph-break count."""
    eager = micro_model(codebook_backend=codebook_backend).train()
    eager.defer_codebook_update = True  # as in the trainer: the update runs after the optimizer step
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    for step in range(steps):
        batch = micro_batch(eager, seed=step)
        want = train_step(eager, *batch)
        got = train_step(compiled, *batch)
        eager.apply_codebook_update()
        twin.apply_codebook_update()
        torch.testing.assert_close(got[0], want[0])
        assert torch.equal(got[1], want[1])
        torch.testing.assert_close(twin.codebook_sums, eager.codebook_sums)
        for (name, p), q in zip(twin.named_parameters(), eager.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, msg=name)
    return sum(counters["graph_break"].values())
