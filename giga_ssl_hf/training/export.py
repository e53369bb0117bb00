"""The end of a run: each process's record (``logs/rank<i>.json``), the training summary, and the slide encoder
exported with ``save_pretrained`` to ``OUTPUT_DIR/final``."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from ..contracts import TRAINING_SUMMARY_FILENAME, read_metadata
from ..contracts.training_run import FINAL_DIRNAME, LOGS_DIRNAME
from ..files import staged_directory, write_json

if TYPE_CHECKING:
    import torch

    from .loop import LoopRecord
    from .setup import TrainingRun

logger = logging.getLogger(__name__)


def parameter_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def write_rank_log(run: TrainingRun, record: LoopRecord, unwrapped: torch.nn.Module) -> None:
    """What this process saw and the weights it ended with: processes must agree on weights, not on slides."""
    rank_log = run.output_dir / LOGS_DIRNAME / f"rank{run.accelerator.process_index}.json"
    rank_log.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        rank_log,
        {
            "process_index": run.accelerator.process_index,
            "slides_seen": sorted(str(run.views.slide_ids[i]) for i in record.slides_seen),
            "parameter_checksum": parameter_checksum(unwrapped),
        },
    )


def training_summary(run: TrainingRun, record: LoopRecord) -> dict:
    return {
        "steps": run.progress.step,
        "final_loss": record.final_loss,
        "loss_history": record.loss_history,
        "learning_rate": run.learning_rate,
        "num_processes": run.accelerator.num_processes,
        "total_batch_size": run.total_batch_size,
        "n_slides": len(run.views),
        "features": str(run.features_dir),
        "feature_metadata": read_metadata(run.features_dir),
        "arguments": run.run_config,
        "final_model": str(run.output_dir / FINAL_DIRNAME),
    }


def export_run(run: TrainingRun, record: LoopRecord) -> dict:
    """Write the rank logs and ``final/`` (the encoder and the summary); returns the summary."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(run.model)
    write_rank_log(run, record, unwrapped)
    summary = training_summary(run, record)
    if accelerator.is_main_process:
        # Written aside and renamed: a run killed while exporting never leaves a half-written final/.
        with staged_directory(run.output_dir / FINAL_DIRNAME) as staging:
            unwrapped.gigassl.save_pretrained(staging)
            write_json(staging / TRAINING_SUMMARY_FILENAME, summary, sort_keys=False)
        logger.info("exported the slide encoder to %s", run.output_dir / FINAL_DIRNAME)
    accelerator.end_training()
    return summary
