"""What every run shares besides its data: an output folder and helper processes.

* :func:`prepare_output_dir` checks an output folder before any work (a file in the way, a folder
  that cannot be created or written to), so that a run fails at once rather than after hours;
* :func:`exclusive_writer` locks a folder (or one shard of it) against a second writer, through
  ``filelock`` (an OS lock: released when the process dies, however it dies);
* :func:`atomic_write` writes a file under a temporary name and renames it, so a reader (or a
  resumed run) never sees half a file; :func:`save_safetensors` writes the same tensors and
  metadata as the same bytes, run after run;
* :func:`refuse_other_layout` refuses a folder holding earlier outputs of another layout (shards
  and a whole run, other layers, other kinds), before any work;
* :func:`write_failure` turns an OS error while writing (disk full, quota, read-only, name too
  long) into one line naming the path; :func:`is_per_file_error` tells the ones that concern one
  input file (its name) from the ones that stop the run;
* :func:`untrusted_pickle_error` says what to do with a weights pickle that ``weights_only`` refuses;
* :func:`die_with_parent` makes a worker process (a DataLoader worker) end when the process that
  started it is killed, even by SIGKILL, instead of holding its memory until someone notices.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import pickle
import re
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


def prepare_output_dir(path: str | os.PathLike, what: str = "output folder", create: bool = True) -> Path:
    """Create ``path`` (and its parents) and check that files can be written into it.

    Raises ``NotADirectoryError`` when a file is in the way and ``PermissionError`` when the
    folder cannot be written to; both messages name ``what`` and the path. With ``create=False``
    only checks that it could be created: nothing is written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} is a file, not a folder: give a folder path.")
    if not create:
        existing = next(p for p in (path, *path.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise NotADirectoryError(f"{what} {path} cannot be created: {existing} is a file.")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{what} {path} cannot be written to (no write permission on {existing}).")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise PermissionError(f"{what} {path} cannot be written to ({reason}).") from error
    return path


@contextlib.contextmanager
def exclusive_writer(folder: str | os.PathLike, name: str, what: str) -> Iterator[None]:
    """Hold the lock file ``folder/.NAME.lock`` while writing; a second writer fails at once (``TimeoutError``)."""
    lock = FileLock(Path(folder) / f".{name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as error:
        raise TimeoutError(
            f"another process is writing {what} into {folder} (it holds {lock.lock_file}); "
            "wait for it to finish or write elsewhere."
        ) from error
    try:
        yield
    finally:
        lock.release()


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """The torch device `name` (default: cuda when available, else cpu), refused in one line when torch
    does not know it or when it is a CUDA device and none is visible (``ValueError`` naming `flag`)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"{flag} {name!r} is not a torch device: give cpu, cuda or cuda:N.") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name}: no CUDA device is visible here; run with {flag} cpu.")
    return device


def missing_reason(path: str | os.PathLike) -> str:
    """Why ``path`` cannot be opened, in words: a symbolic link loop, a dangling link, or no such path."""
    path = Path(path)
    if path.is_symlink():
        try:
            path.stat()
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "is a loop of symbolic links"
        return f"is a dangling symbolic link (to {os.readlink(path)}, which does not exist)"
    return "does not exist"


def refuse_other_layout(folder: Path, others: Sequence[Path], this: str, fix: str) -> None:
    """Refuse (``ValueError``) to write into ``folder`` when it holds ``others``: earlier outputs of another
    layout, which a run writing ``this`` would not see, so that the folder would hold records twice or mixed."""
    if not others:
        return
    names = ", ".join(sorted(p.relative_to(folder).as_posix() for p in others)[:3])
    more = f" and {len(others) - 3} more" if len(others) > 3 else ""
    raise ValueError(f"{folder} holds outputs of another layout ({names}{more}); this run writes {this}. {fix}")


class WriteError(OSError):
    """An output that could not be written: its message names the path, the reason and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)


_WRITE_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "the file name is too long for the file system",
    errno.EACCES: "permission denied",
}
PER_FILE_ERRNOS = frozenset({errno.ENAMETOOLONG})
"""Write errors that concern one output's name (an input's id), not the folder: that input fails, the run goes on."""


def _errno_of(error: BaseException) -> int | None:
    """The errno of an OSError, or the ``os error N`` safetensors writes into its message."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    found = re.search(r"os error (\d+)|code: (\d+)", str(error))
    return int(found.group(1) or found.group(2)) if found else None


def write_failure(path: str | os.PathLike, error: BaseException) -> WriteError:
    """``error`` (an ``OSError``, or safetensors' error wrapping one) met while writing ``path``, as one
    line naming the path, the reason and the fix (a ``WriteError``, an ``OSError`` with the same errno)."""
    if isinstance(error, WriteError):  # written under a temporary name: name the file it was for
        error = error.__cause__ or error
    code = _errno_of(error)
    reason = _WRITE_REASONS.get(code) or (error.strerror if isinstance(error, OSError) and error.strerror else str(error))
    if code in PER_FILE_ERRNOS:
        fix = "give that input a shorter name (it names the output)"
    else:
        fix = "what was written before is complete: fix this (free space, another folder) and rerun to resume"
    return WriteError(code or 0, f"cannot write {path}: {reason}; {fix}.")


def is_per_file_error(error: BaseException) -> bool:
    """Whether a write error concerns one output's name (fail that input) rather than the whole run."""
    return isinstance(error, OSError) and error.errno in PER_FILE_ERRNOS


class UntrustedPickleError(ValueError):
    """A pickle of weights that ``torch.load(weights_only=True)`` refuses (see :func:`untrusted_pickle_error`)."""


def untrusted_pickle_error(path: str | os.PathLike) -> UntrustedPickleError:
    """The error for a pickle of weights that ``torch.load(weights_only=True)`` refuses: it names the file
    and how to re-save it as safetensors (never to load it otherwise unless its source is trusted)."""
    return UntrustedPickleError(
        f"{path} is a pickle that torch.load(weights_only=True) refuses: it holds more than tensors, and loading "
        "it otherwise could run any code in it. Only if it comes from a source you trust, re-save it as "
        "safetensors: `spidr-hf convert` for a reference checkpoint, or load it with torch.load(..., "
        "weights_only=False) and save_pretrained(folder, safe_serialization=True) for a model folder."
    )


@contextlib.contextmanager
def quiet_pickle_protocol() -> Iterator[None]:
    """Silence torch's "Detected pickle protocol" warning for the `torch.load(weights_only=True)` calls inside:
    it only says the file is a bare pickle, which is loaded as tensors or refused by name
    (:func:`untrusted_pickle_error`) either way, and would otherwise print before that one line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def load_weights_only(path: str | os.PathLike) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)``, quietly (:func:`quiet_pickle_protocol`); a
    pickle it refuses is raised as :func:`untrusted_pickle_error`, which names the file and the fix."""
    try:
        with quiet_pickle_protocol():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise untrusted_pickle_error(path) from error


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Write through a temporary file in the same folder, then rename (readers never see half a file).

    An OS error (disk full, read-only, name too long ...) leaves no temporary file behind and is raised
    as a :class:`WriteError` naming ``path`` (see :func:`write_failure`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except (OSError, SafetensorError) as error:
        raise write_failure(path, error) from error
    finally:
        with contextlib.suppress(OSError):  # a name too long for the temporary file cannot be looked up either
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 ``text`` (JSON records, JSON lines, score files)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with its metadata in sorted order, so the same outputs are the same bytes.

    safetensors writes its metadata map in a per-process random order; the header is rewritten in
    place with the same keys and values, sorted (same length: the data offsets do not move). An OS
    error is raised as a :class:`WriteError` naming ``path``.
    """
    try:
        save_file(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
            text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
            if len(text) <= length:  # the same characters reordered; else leave the file as written
                f.seek(8)
                f.write(text.ljust(length))
    except (OSError, SafetensorError) as error:  # safetensors' error of a full disk is no OSError
        raise write_failure(path, error) from error


def load_safetensors(path: str | os.PathLike, required_key: str, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a file `save_safetensors` wrote; a ``ValueError`` when the metadata lacks
    `required_key` (the file is not ``what``)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if required_key not in metadata:
            raise ValueError(f"{path} is not {what} (no {required_key!r} in its metadata).")
        return {name: f.get_tensor(name) for name in f.keys()}, metadata


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(*_: object) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; elsewhere nothing).

    For ``worker_init_fn``: PyTorch's DataLoader workers check on their parent only between two
    batches, and a worker blocked on a full queue never does.
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


__all__ = [
    "PER_FILE_ERRNOS",
    "UntrustedPickleError",
    "WriteError",
    "atomic_write",
    "die_with_parent",
    "exclusive_writer",
    "is_per_file_error",
    "missing_reason",
    "load_safetensors",
    "prepare_output_dir",
    "refuse_other_layout",
    "save_safetensors",
    "untrusted_pickle_error",
    "write_failure",
]
