"""The package installs as one `spidr_hf` tree: modeling/ and training/ map to spidr_hf.modeling / spidr_hf.training."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def unmet_build_requirements() -> list[str]:
    """pyproject.toml's build requirements that the installed packages do not meet."""
    unmet = []
    for text in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{text} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{text} (installed: {version})")
    return unmet


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    if unmet := unmet_build_requirements():
        pytest.skip(f"building without isolation needs {', '.join(unmet)}: pip install -U setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # --no-isolation: build with the setuptools already installed (no download)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = out.glob("spidr_hf-*.whl")
    return wheel


def test_wheel_holds_subpackages_under_spidr_hf(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for required in (
        "spidr_hf/__init__.py",
        "spidr_hf/modeling/modeling_spidr.py",
        "spidr_hf/modeling/configuration_spidr.py",
        "spidr_hf/modeling/feature_extraction_spidr.py",
        "spidr_hf/training/__init__.py",
        "spidr_hf/kernels/__init__.py",
        "spidr_hf/commands/convert.py",
        "spidr_hf/lm/tokenizer.py",
        "spidr_hf/training/recipes/spidr_base.toml",
    ):
        assert required in names, required
    top_level = {n.split("/")[0] for n in names}
    assert "modeling" not in top_level and "training" not in top_level, sorted(top_level)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "spidr-hf = spidr_hf.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_package_has_no_top_level_modeling_or_training(tmp_path):
    # run outside the repo so the current directory cannot shadow site-packages
    code = (
        "import importlib.util as u, spidr_hf.modeling, spidr_hf.training;"
        "assert u.find_spec('modeling') is None and u.find_spec('training') is None;"
        "print(spidr_hf.modeling.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "spidr_hf.modeling"


def test_console_script_lists_commands():
    from spidr_hf.cli import COMMANDS

    script = Path(sys.executable).with_name("spidr-hf")
    if not script.exists():
        pytest.skip("spidr-hf console script not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout


def test_remote_code_loads_the_pretraining_model_and_its_kernels(tmp_path):
    """modeling/ ships with everything it imports: the pretraining model runs from a saved directory alone."""
    import torch
    from pretrain_worker import micro_model
    from spidr_hf.training import compute_span_mask

    from spidr_hf.model_dir import save_pretrained_with_code

    model = micro_model(seed=0).eval()
    save_pretrained_with_code(model, tmp_path / "model")
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"modeling_spidr_pretraining.py", "codebook_assign.py", "codebook_head_loss.py", "kernel_dispatch.py"} <= names
    waves = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    mask = compute_span_mask((2, model._get_feat_extract_output_lengths(8000)), generator=torch.Generator().manual_seed(0))
    torch.save({"waves": waves, "mask": mask}, tmp_path / "inputs.pt")
    with torch.no_grad():
        loss = model(input_values=waves, mask_time_indices=mask).loss
    units = model.predict_units(waves, layer=model.config.codebook_layers[0])
    code = f"""
import sys
sys.modules["spidr_hf"] = None  # any import of the package now fails
import torch
from transformers import AutoModelForPreTraining
model = AutoModelForPreTraining.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
assert not type(model).__module__.startswith("spidr_hf"), type(model).__module__
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
with torch.no_grad():
    loss = model(input_values=inputs["waves"], mask_time_indices=inputs["mask"]).loss
units = model.predict_units(inputs["waves"], layer=model.config.codebook_layers[0])
torch.save({{"loss": loss, "units": units}}, {str(tmp_path / "out.pt")!r})
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(out["loss"], loss)
    assert torch.equal(out["units"], units)


def test_remote_code_next_to_the_package_reuses_its_custom_ops(tmp_path):
    """A saved model's remote code imported where the package is: modeling/ loads twice, each op registers once."""
    import importlib

    from pretrain_worker import micro_model
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from spidr_hf.model_dir import save_pretrained_with_code

    save_pretrained_with_code(micro_model(seed=0), tmp_path / "model")
    remote_class = get_class_from_dynamic_module(
        "modeling_spidr_pretraining.SpidRForPreTraining", str(tmp_path / "model")
    )
    package = remote_class.__module__.rsplit(".", 1)[0]
    assert package.startswith("transformers_modules"), package
    for name, op in (("codebook_assign", "ASSIGN_OP"), ("codebook_head_loss", "HEAD_LOSS_OP")):
        remote, local = sys.modules[f"{package}.{name}"], importlib.import_module(f"spidr_hf.modeling.{name}")
        assert remote is not local and getattr(remote, op) is getattr(local, op)
