"""Resumable checkpoints of a training run: Accelerate names and writes them, the run prunes them.

A checkpoint is ``OUTPUT_DIR/checkpoints/checkpoint_<step>``, written by ``accelerator.save_state()`` under
``ProjectConfiguration(automatic_checkpoint_naming=True)``. Accelerate numbers a save with its ``iteration``
counter; it is set to the optimiser step before every save, so the number is the step, a resume needs no
counter of its own, and the numbers order the checkpoints.

``--save-total-limit`` is applied here, after a save, not through Accelerate's ``total_limit``: Accelerate
deletes the oldest checkpoints before it writes the new one, so with a limit of 1 a save killed half-way (or a
full disk) would leave the run without any complete checkpoint; pruning after the save always keeps one. The
run owns ``checkpoints/``: an entry that is not a checkpoint folder is refused before the first step
(:func:`refuse_foreign_entries`), as neither ``latest`` nor the pruning could order it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..contracts.training_run import CHECKPOINTS_DIRNAME, LOGS_DIRNAME
from ..settings import flag_of

# Accelerate's automatic naming.
CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")


def project_configuration(output_dir: Path):
    from accelerate.utils import ProjectConfiguration

    # No total_limit: Accelerate would prune before writing (see the module docstring); prune_checkpoints does.
    return ProjectConfiguration(
        project_dir=str(output_dir),
        logging_dir=str(output_dir / LOGS_DIRNAME),
        automatic_checkpoint_naming=True,
    )


def _step_of(path: Path) -> int | None:
    """The step of a checkpoint folder, None for any other entry."""
    match = CHECKPOINT_NAME.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The checkpoints in ``OUTPUT_DIR/checkpoints``, oldest (lowest step) first."""
    found = [
        (step, path)
        for path in (Path(output_dir) / CHECKPOINTS_DIRNAME).glob("checkpoint_*")
        if (step := _step_of(path)) is not None
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint of the highest step in ``OUTPUT_DIR/checkpoints``, or None."""
    folders = checkpoint_folders(output_dir)
    return folders[-1] if folders else None


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


def refuse_foreign_entries(output_dir: Path) -> None:
    """Raise ValueError for the first entry of ``OUTPUT_DIR/checkpoints`` that is not a checkpoint folder."""
    directory = Path(output_dir) / CHECKPOINTS_DIRNAME
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        if _step_of(path) is None:
            raise ValueError(
                f"{path}: not a checkpoint; {directory} holds only the run's checkpoint_<step> folders, which "
                f"{flag_of('resume_from_checkpoint')} latest and {flag_of('save_total_limit')} order by step: "
                "move it elsewhere, then run again"
            )


class TrainingProgress:
    """Optimiser steps done; saved with every checkpoint so that a resume knows where the data order stands."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def save_checkpoint(accelerator, step: int, total_limit: int | None) -> None:
    """``checkpoint_<step>`` through Accelerate's automatic naming, then the oldest beyond ``total_limit`` go."""
    accelerator.project_configuration.iteration = step
    written = Path(accelerator.project_dir) / CHECKPOINTS_DIRNAME / f"checkpoint_{step}"
    if written.exists() and accelerator.is_main_process:
        # A resume from an earlier checkpoint replays this step: its new state replaces the abandoned one
        # (Accelerate refuses to write into an existing checkpoint folder).
        shutil.rmtree(written)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state()
    except BaseException:
        # A save that failed (disk full, Ctrl-C) leaves no half-written folder for ``latest`` to pick.
        if accelerator.is_main_process:
            shutil.rmtree(written, ignore_errors=True)
        raise
    if total_limit and accelerator.is_main_process:  # 0 or None: keep every checkpoint
        prune_checkpoints(Path(accelerator.project_dir), total_limit, written)


def prune_checkpoints(output_dir: Path, total_limit: int, written: Path) -> None:
    """Delete the oldest checkpoints (by step) until ``total_limit`` remain, keeping ``written`` (the save just
    made) whatever its step: a resume from an earlier checkpoint can leave abandoned ones of higher steps."""
    others = [path for path in checkpoint_folders(output_dir) if path != written]
    for path in others[: max(len(others) - (total_limit - 1), 0)]:
        shutil.rmtree(path)
