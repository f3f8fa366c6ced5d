"""Shared test fixtures: the reference fixture directory and the converted tiny model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter; Triton reads this once, at its first import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DIR = (
    Path(os.environ.get("SPIDR_FIXTURES", REPO.parent / "shared" / "fixtures")) / "upstream-spidr-tiny"
)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    """`../shared/fixtures/upstream-spidr-tiny`, or a skip where the checkout has no ../shared."""
    if not (FIXTURE_DIR / "checkpoint.pt").is_file():
        pytest.skip(
            f"reference fixtures not found at {FIXTURE_DIR} (they live in ../shared, next to the repo)"
        )
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def expected(fixture_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(fixture_dir / "expected.safetensors")


@pytest.fixture(scope="session")
def converted_dir(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture checkpoint converted with `spidr-hf convert` (once per session)."""
    from spidr_hf.cli import main

    out = tmp_path_factory.mktemp("converted") / "spidr-tiny"
    assert main(["convert", str(fixture_dir / "checkpoint.pt"), str(out)]) == 0
    return out


@pytest.fixture
def tiny_config():
    """A very small random SpidR configuration for tests that need no reference numbers."""
    from pretrain_worker import micro_config  # tests/ is on sys.path under pytest

    return micro_config(num_hidden_layers=3, num_attention_heads=4, codebook_backend="auto")
