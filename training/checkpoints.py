"""Checkpoints that a kill cannot leave half-written, and the newest complete one to resume from.

The Trainer writes a checkpoint file by file into ``OUTPUT/checkpoint-N``: a run killed half-way
leaves a folder (``config.json`` and ``model.safetensors`` only, or a truncated file) that
``--resume_from_checkpoint last`` picks and fails on. So :class:`~spidr_hf.training.SpidRPretrainer`
has the Trainer write into ``OUTPUT/.checkpoint-staging/checkpoint-N`` and renames the folder to
``OUTPUT/checkpoint-N`` once every rank has written every file (:func:`publish_checkpoint`): a
``checkpoint-N`` folder is complete or absent. :func:`last_complete_checkpoint` checks each
candidate's files all the same (:func:`checkpoint_problem`), for folders written otherwise (older
versions, copies, a full disk), and says which ones it skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path

from safetensors import safe_open
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME

logger = logging.getLogger(__name__)

STAGING_FOLDER = ".checkpoint-staging"
"""Where a checkpoint is written before it is renamed into the output folder."""

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(folder: str | os.PathLike, require_optimizer: bool = True) -> str | None:
    """Why ``folder`` is not a complete Trainer checkpoint (missing or cut-short files), or None when it is.

    Checks that the files a resume reads are there and whole: ``trainer_state.json`` parses,
    ``model.safetensors`` opens (its header and size agree), and the optimizer, scheduler and
    RNG states (zip archives written by ``torch.save``) end with their central directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "it is not a folder" if folder.exists() else "it does not exist"
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"it has no {TRAINER_STATE_NAME}"
    try:
        if "global_step" not in json.loads(state.read_text(encoding="utf-8")):
            return f"its {TRAINER_STATE_NAME} has no global_step"
    except (ValueError, OSError) as err:
        return f"its {TRAINER_STATE_NAME} cannot be read ({err})"
    weights = folder / SAFE_WEIGHTS_NAME
    if not weights.is_file():
        return f"it has no {SAFE_WEIGHTS_NAME}"
    try:
        with safe_open(weights, framework="pt"):
            pass
    except Exception as err:  # safetensors raises its own error type for a cut-short file
        return f"its {SAFE_WEIGHTS_NAME} cannot be read ({err})"
    torch_files = [folder / OPTIMIZER_NAME, folder / SCHEDULER_NAME] if require_optimizer else []
    rng_states = sorted(folder.glob("rng_state*.pth"))
    if require_optimizer and not rng_states:
        return "it has no rng_state.pth"
    for path in [*torch_files, *rng_states]:
        if not path.is_file():
            return f"it has no {path.name}"
        if not zipfile.is_zipfile(path):
            return f"its {path.name} is cut short"
    return None


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """N for a folder named ``checkpoint-N``, else None."""
    match = _CHECKPOINT.match(Path(folder).name)
    return int(match.group(1)) if match else None


def last_complete_checkpoint(output_dir: str | os.PathLike, require_optimizer: bool = True) -> Path:
    """The complete ``checkpoint-N`` of ``output_dir`` with the largest N; logs each newer one it skips, and why.

    Raises ``FileNotFoundError`` (naming what it skipped) when there is none.
    """
    output_dir = Path(output_dir)
    found = [p for p in output_dir.iterdir() if checkpoint_step(p) is not None] if output_dir.is_dir() else []
    staging = output_dir / STAGING_FOLDER
    interrupted = [p for p in staging.iterdir() if checkpoint_step(p) is not None] if staging.is_dir() else []
    skipped = [(p.name, "its writing was interrupted (it is still in " f"{STAGING_FOLDER})") for p in interrupted]
    skipped.sort(key=lambda entry: -checkpoint_step(entry[0]))
    for folder in sorted(found, key=checkpoint_step, reverse=True):
        problem = checkpoint_problem(folder, require_optimizer)
        if problem is None:
            for name, reason in skipped:
                if checkpoint_step(name) > checkpoint_step(folder):
                    logger.warning("resuming from %s, not %s: %s", folder.name, name, reason)
            return folder
        skipped.append((folder.name, problem))
    detail = "; ".join(f"{name}: {reason}" for name, reason in skipped)
    raise FileNotFoundError(
        f"no complete checkpoint in {output_dir} to resume from" + (f" (skipped {detail})" if detail else "") + "."
    )


def publish_checkpoint(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the complete checkpoint ``staging`` to ``final``, replacing what a killed run may have left there."""
    staging, final = Path(staging), Path(final)
    if final.exists():
        shutil.rmtree(final)  # a leftover of an abandoned run (this step is being saved again)
    os.replace(staging, final)


__all__ = [
    "STAGING_FOLDER",
    "checkpoint_problem",
    "checkpoint_step",
    "last_complete_checkpoint",
    "publish_checkpoint",
]
