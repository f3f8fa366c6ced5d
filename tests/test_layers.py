"""The package's layers (docs/ARCHITECTURE.md): every import of the package points down or sideways, never
up; no module imports another module's private name; modeling/ imports nothing of the package outside it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"spidr_hf": REPO / "spidr_hf", "spidr_hf.modeling": REPO / "modeling", "spidr_hf.training": REPO / "training"}

# module (or package prefix) -> layer; a module may import its own layer and the layers below
LAYERS = {
    "spidr_hf.modeling": 0,  # what the model is, with its kernels; ships as remote code
    "spidr_hf.audio": 1, "spidr_hf.sources": 1, "spidr_hf.progress": 1, "spidr_hf.errors": 1,
    "spidr_hf.runs": 1,  # shared base
    "spidr_hf.units": 2, "spidr_hf.pipeline": 2, "spidr_hf.model_dir": 2, "spidr_hf.convert": 2,
    "spidr_hf.kernels": 2, "spidr_hf": 2,  # services around the model; the package's public face
    "spidr_hf.training": 3, "spidr_hf.extract": 3, "spidr_hf.evaluation": 3, "spidr_hf.synth": 3,
    "spidr_hf.baselines": 3, "spidr_hf.unit_scores": 3,
    "spidr_hf.espeak": 3, "spidr_hf.downstream": 3, "spidr_hf.lm": 3,  # learning and using the model
    "spidr_hf.commands": 4, "spidr_hf.cli": 4, "spidr_hf.demo": 4,  # the command line
}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if not (package == "spidr_hf" and parts and parts[0] in ("modeling", "training")):
                found[name] = path
    return found


def _layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def _imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of the package, nested ones included."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            target = node.module or "" if node.level == 0 else ".".join(filter(None, [base, node.module]))
            found.append((target, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
    return [(target, names, line) for target, names, line in found if target.split(".")[0] == "spidr_hf"]


def test_imports_point_down_the_layers():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        for target, names, line in _imports(module, path):
            # `from spidr_hf.x import y` may name a submodule y
            targets = [f"{target}.{n}" if f"{target}.{n}" in modules else target for n in names] or [target]
            upward += [f"{module}:{line} imports {t}" for t in targets if _layer(t) > _layer(module)]
    assert not upward, upward


def test_no_module_imports_a_private_name_of_another():
    private = [
        f"{module}:{line} imports {name} from {target}"
        for module, path in _modules().items()
        for target, names, line in _imports(module, path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, private


def test_modeling_imports_only_itself():
    outside = [
        f"{module}:{line} imports {target}"
        for module, path in _modules().items()
        if module.startswith("spidr_hf.modeling")
        for target, _, line in _imports(module, path)
        if not target.startswith("spidr_hf.modeling")
    ]
    assert not outside, outside
