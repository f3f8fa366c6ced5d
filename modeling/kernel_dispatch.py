"""Backend selection shared by the fused codebook kernels: one guarded Triton import, one dispatch function.

``backend="auto"`` runs the Triton kernels on CUDA tensors when Triton is importable and the
plain-PyTorch reference everywhere else. ``backend="triton"`` forces the kernels: on CUDA they are
compiled, on CPU tensors they run in Triton's interpreter, which only works when ``TRITON_INTERPRET=1``
was in the environment before ``triton`` was first imported (Triton fixes the mode of every
``@triton.jit`` function, its own standard library included, at import time; ``from transformers
import PreTrainedModel`` already imports it). ``backend="torch"`` forces the reference.

The Triton paths run through PyTorch custom operators (:func:`define_op`), so that
``torch.compile(fullgraph=True)`` traces a training step around them instead of breaking the graph
at every launch; the torch reference stays plain PyTorch, which ``torch.compile`` sees through.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Literal

import torch
from packaging.version import Version

try:  # the one guard: Triton is absent on macOS and Windows (or broken); every op then runs its reference
    import triton
    import triton.language as tl
except Exception:
    triton = tl = None

Backend = Literal["auto", "triton", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")


def triton_available() -> bool:
    """Whether ``triton`` imported (it is optional)."""
    return triton is not None


def triton_interpreting() -> bool:
    """Whether Triton was imported in interpreter mode, so its kernels can run on CPU tensors."""
    if not triton_available():
        return False
    from triton.runtime.interpreter import InterpretedFunction

    # ``tl.sum`` is itself a @triton.jit function: its type tells which mode Triton was imported in.
    return isinstance(tl.sum, InterpretedFunction)


def interpreter_incompatibility(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run kernels with these versions (a fix included), or None.

    Triton before 3.7 turns one-element arrays into Python ints (``range(0, K, BLOCK)`` on a kernel
    argument does it), which NumPy 2.4 made an error: Triton 3.6 fails with NumPy 2.4 and runs with 2.3;
    Triton 3.7 and later run with 2.4.
    """
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (
            f"Triton {triton_version}'s interpreter (TRITON_INTERPRET=1) cannot run with NumPy {numpy_version}: "
            "upgrade Triton (pip install 'triton>=3.7'), install 'numpy<2.4', move the tensors to CUDA, "
            "or pass backend='torch'"
        )
    return None


@functools.cache
def installed_interpreter_incompatibility() -> str | None:
    """:func:`interpreter_incompatibility` for the installed Triton and NumPy (None without Triton).

    Computed once per process: every op call on CPU asks it (:func:`op_runs_triton`).
    """
    if not triton_available():
        return None
    import numpy

    return interpreter_incompatibility(triton.__version__, numpy.__version__)


def op_runs_triton(t: torch.Tensor) -> bool:
    """Whether a custom op's kernel runs Triton on ``t``: on CUDA, and on CPU under a working interpreter.

    Elsewhere the ops run their torch formulas (an interpreter that cannot run, see
    :func:`interpreter_incompatibility`, included: only forcing ``backend="triton"`` reports it).
    """
    if not triton_available():
        return False
    return t.is_cuda or (triton_interpreting() and installed_interpreter_incompatibility() is None)


def _release(version: str) -> tuple[int, ...]:
    return Version(version).release


def resolve_backend(
    backend: str, device: torch.device, cuda_auto: Literal["triton", "torch"] = "triton"
) -> Literal["triton", "torch"]:
    """Pick the implementation for tensors on ``device``; raise a clear error when forcing is impossible.

    ``cuda_auto`` is what "auto" means on CUDA tensors for the calling op (each op keeps its Triton
    kernel there only where it beats compiled torch).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return cuda_auto if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError(
            "backend='triton' needs the triton package, which is not importable here; "
            "install it (pip install triton) or pass backend='torch'"
        )
    if device.type == "cuda":
        return "triton"
    if triton_interpreting():
        problem = installed_interpreter_incompatibility()
        if problem:
            raise RuntimeError(problem)
        return "triton"
    if device.type == "cpu":
        raise RuntimeError(
            "backend='triton' on CPU tensors runs in Triton's interpreter, which needs TRITON_INTERPRET=1 "
            "in the environment before triton is first imported; set it, move the tensors to CUDA, "
            "or pass backend='torch'"
        )
    raise RuntimeError(
        f"backend='triton' supports CUDA tensors (or CPU ones under TRITON_INTERPRET=1), got device "
        f"{device}; pass backend='torch'"
    )


OP_NAMESPACE = "spidr_hf"
# Bumped whenever an op's schema or meaning changes: a saved model's remote code (an older copy of
# modeling/) may be imported next to the package, and the first import's registration serves both.
OP_VERSION = 1


def define_op(
    name: str,
    schema: str,
    impl: Callable,
    fake: Callable,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
) -> torch._ops.OpOverload:
    """Register ``spidr_hf::{name}_v{OP_VERSION}`` (a ``torch.library.custom_op``) once; return its overload.

    modeling/ is imported twice in one process when a saved model's remote code loads next to the
    package (``spidr_hf.modeling`` and ``transformers_modules...``): the second import finds the op
    defined and reuses it rather than registering a second implementation of the same name.
    ``fake`` gives output shapes to ``torch.compile``; ``backward`` and ``setup_context`` are its
    ``register_autograd``.
    """
    qualified = f"{name}_v{OP_VERSION}"
    namespace = getattr(torch.ops, OP_NAMESPACE)
    if not hasattr(namespace, qualified):
        op = torch.library.custom_op(f"{OP_NAMESPACE}::{qualified}", impl, mutates_args=(), schema=schema)
        op.register_fake(fake)
        if backward is not None:
            op.register_autograd(backward, setup_context=setup_context)
    return getattr(namespace, qualified).default


def cdiv(a: int, b: int) -> int:
    """Ceiling division, for launch grids."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (Triton block shapes must be powers of two)."""
    return 1 << max(0, n - 1).bit_length()


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels index the last dimension densely; copy only when it is strided."""
    return t if t.stride(-1) == 1 else t.contiguous()


def device_guard(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it the tensor's one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
