"""Resumable checkpoints of a training run: Accelerate names, prunes and writes them.

A checkpoint is ``OUTPUT_DIR/checkpoints/checkpoint_<step>``, written by ``accelerator.save_state()`` under
``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=save_total_limit)``: Accelerate picks the
folder and deletes the oldest beyond the limit. Accelerate numbers a save with its ``iteration`` counter; it is
set to the optimiser step before every save, so the number is the step (as in the ``step_<step>`` folders that
versions before the switch wrote with ``save_state(path)``), a resume needs no counter of its own, and the
numbers order the checkpoints of both namings alike: for ``latest`` here and for Accelerate's pruning, which
sorts every folder of ``checkpoints/`` by its number.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

CHECKPOINTS_DIRNAME = "checkpoints"
# checkpoint_<step>: Accelerate's automatic naming; step_<step>: written before the switch, still resumable.
CHECKPOINT_NAME = re.compile(r"^(checkpoint|step)_(\d+)$")


def project_configuration(output_dir: Path, save_total_limit: int | None):
    from accelerate.utils import ProjectConfiguration

    return ProjectConfiguration(
        project_dir=str(output_dir),
        logging_dir=str(output_dir / "logs"),
        automatic_checkpoint_naming=True,
        total_limit=save_total_limit or None,  # 0 as None: keep every checkpoint
    )


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint of the highest step in ``OUTPUT_DIR/checkpoints`` (either naming), or None."""
    found = []
    for path in (Path(output_dir) / CHECKPOINTS_DIRNAME).glob("*_*"):
        if path.is_dir() and (match := CHECKPOINT_NAME.match(path.name)):
            # At the same step the current naming wins: it was written by a resumed run, after the old one.
            found.append((int(match.group(2)), match.group(1) == "checkpoint", path))
    return max(found)[2] if found else None


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    """The checkpoint ``--resume-from-checkpoint`` names: ``latest`` or a folder."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path
    found = latest_checkpoint(output_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint to resume from in {Path(output_dir) / CHECKPOINTS_DIRNAME}")
    return found


class TrainingProgress:
    """Optimiser steps done; saved with every checkpoint so that a resume knows where the data order stands."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def save_checkpoint(accelerator, step: int) -> None:
    """``checkpoint_<step>`` through Accelerate's automatic naming (which prunes beyond ``total_limit``)."""
    accelerator.project_configuration.iteration = step
    stale = Path(accelerator.project_dir) / CHECKPOINTS_DIRNAME / f"checkpoint_{step}"
    if stale.exists() and accelerator.is_main_process:
        # A resume from an earlier checkpoint replays this step: its new state replaces the abandoned one
        # (Accelerate refuses to write into an existing checkpoint folder).
        shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state()
