"""The settings a training run was started with, kept beside it (``OUTPUT_DIR/training_settings.json``) so that
``--resume-from-checkpoint`` continues the same recipe: a resume whose settings differ is refused, in one line
naming the differences, before anything is built (unless ``--allow-changed-settings``).

May differ on a resume (:data:`MAY_CHANGE`: the fields marked ``affects_results=False``, and ``max_steps``), as
they change neither the model nor the data it sees:

- where and how the run starts: ``output_dir`` (a checkpoint of one run may start another folder),
  ``resume_from_checkpoint``, ``overwrite_output_dir``, ``allow_changed_settings``;
- logging and checkpoint spacing: ``logging_steps``, ``report_to``, ``save_steps``, ``save_total_limit``;
- permissions that only let a check pass: ``allow_no_augmentations``, ``allow_encoder_mismatch``;
- how long: ``max_steps``, the usual reason to resume a finished run. It stretches the learning-rate schedule
  (the cosine decay, and the default warm-up of 10%, span max_steps): that is logged.

Everything else (the features, the views, the architecture, the optimiser, the batch and the number of
processes it is split over, the precision, the seed) is part of the recipe.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, fields
from pathlib import Path

from ..contracts.training_run import NUM_PROCESSES, SETTINGS_FILENAME
from ..files import write_json
from ..settings import flag_of
from .arguments import ARGUMENT_CLASSES

logger = logging.getLogger(__name__)

# The fields marked as not changing what the run makes, and its length.
MAY_CHANGE = {
    item.name
    for cls in ARGUMENT_CLASSES
    for item in fields(cls)
    if item.metadata.get("affects_results") is False
} | {"max_steps"}


def run_settings(*arguments) -> dict:
    """The settings of a run: every field of its argument dataclasses, and the processes it runs on (the
    launcher's ``WORLD_SIZE``, read without starting Accelerate: the global batch depends on it)."""
    settings = {name: value for instance in arguments for name, value in asdict(instance).items()}
    # as read back from the settings file (a tuple as a list), so that an unchanged setting compares equal
    return json.loads(json.dumps({**settings, NUM_PROCESSES: int(os.environ.get("WORLD_SIZE", "1"))}))


def check_resumed_settings(checkpoint: Path, settings: dict, allow_changed: bool) -> None:
    """Compare ``settings`` with those of the run that wrote ``checkpoint`` (its ``OUTPUT_DIR``'s file);
    a difference outside :data:`MAY_CHANGE` raises ValueError unless ``allow_changed``."""
    path = checkpoint.resolve().parent.parent / SETTINGS_FILENAME
    if not path.is_file():
        logger.warning("%s: no %s (a checkpoint moved out of its run folder?): the settings cannot be compared",
                       path.parent, SETTINGS_FILENAME)  # fmt: skip
        return
    recorded = json.loads(path.read_text())
    names = sorted(set(recorded) | set(settings))
    changed = [name for name in names if recorded.get(name) != settings.get(name) and name not in MAY_CHANGE]
    described = ", ".join(f"{name} {recorded.get(name)!r} -> {settings.get(name)!r}" for name in changed)
    if changed and not allow_changed:
        raise ValueError(
            f"the run of {checkpoint} was started with other settings ({described}): resume it with its own, "
            f"or pass {flag_of('allow_changed_settings')} to continue with the new ones"
        )
    if changed:
        logger.warning("resuming with changed settings: %s", described)
    if recorded.get("max_steps") != settings.get("max_steps"):
        logger.warning(
            "max_steps %s -> %s: the learning-rate schedule now spans the new length",
            recorded.get("max_steps"), settings.get("max_steps"),
        )  # fmt: skip


def record_settings(output_dir: Path, settings: dict) -> None:
    """Write the run's settings (at its start, and after a resume: those it now continues with)."""
    write_json(output_dir / SETTINGS_FILENAME, settings)
