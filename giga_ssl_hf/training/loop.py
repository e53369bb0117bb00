"""The training loop: one optimiser step (:func:`update_model`, the model of lerobot's ``update_policy``), the
epochs around it with logging and checkpoints, and the record of what the loop did."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checkpointing import save_checkpoint

if TYPE_CHECKING:
    import torch

    from .arguments import TrainArguments
    from .setup import TrainingRun

logger = logging.getLogger(__name__)


@dataclass
class LoopRecord:
    """What the loop did: the loss of every optimiser step and the slides this process saw."""

    final_loss: float = float("nan")
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    slides_seen: set[int] = field(default_factory=set)


def update_model(
    run: TrainingRun, batch: dict[str, torch.Tensor], max_grad_norm: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, NT-Xent, backward, clipping and the optimiser on one batch, within Accelerate's accumulation
    group (the optimiser only steps when the group closes: ``accelerator.sync_gradients``).

    Returns the batch's loss and its slide embeddings `(batch, 2 views, hidden_dim)`.
    """
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    with accelerator.accumulate(model):
        output = model(
            tile_features=batch["tile_features"],
            tile_coords=batch["tile_coords"],
            patch_size_level0=batch["patch_size_level0"],
            return_loss=False,
        )  # projection: (batch, 2 views, projection_dims[-1])
        loss = run.contrastive_loss(output.projection[:, 0], output.projection[:, 1])
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, output.slide_embedding


def log_metrics(run: TrainingRun, loss_value: float, slide_embedding: torch.Tensor) -> None:
    import torch

    # Std of the L2-normalised embeddings across slides: collapse drives it to 0 (healthy ~ 1/sqrt(dim)).
    normalised = torch.nn.functional.normalize(slide_embedding.detach().float().flatten(0, 1), dim=1)
    metrics = {
        "loss": loss_value,
        "lr": run.scheduler.get_last_lr()[0],
        "embedding_std": normalised.std(dim=0).mean().item(),
    }
    run.accelerator.log(metrics, step=run.progress.step)
    logger.info("step %d: %s", run.progress.step, {k: round(v, 6) for k, v in metrics.items()})


def after_optimizer_step(
    run: TrainingRun, train_args: TrainArguments, loss: torch.Tensor, slide_embedding, record: LoopRecord
) -> None:
    """The schedule, the step count, the loss record, logging and checkpoints of one optimiser step."""
    run.scheduler.step()
    run.progress.step += 1
    step = run.progress.step
    record.final_loss = run.accelerator.reduce(loss.detach(), reduction="mean").item()
    record.loss_history.append((step, record.final_loss))
    if step % train_args.logging_steps == 0 or step == train_args.max_steps:
        log_metrics(run, record.final_loss, slide_embedding)
    if train_args.save_steps and step % train_args.save_steps == 0:
        save_checkpoint(run.accelerator, step, train_args.save_total_limit)


def train_loop(run: TrainingRun, train_args: TrainArguments) -> LoopRecord:
    """Optimiser steps from ``run.progress.step`` (0, or a resumed checkpoint's) to ``max_steps``."""
    from tqdm.auto import tqdm

    # Accelerate closes an accumulation group at the end of every epoch (sync_with_dataloader), so an epoch holds
    # ceil(batches / accumulation) optimiser steps and a resume restarts at a whole group of its epoch.
    accumulation = train_args.gradient_accumulation_steps
    epoch, step_in_epoch = divmod(run.progress.step, math.ceil(len(run.dataloader) / accumulation))
    skip = step_in_epoch * accumulation
    record = LoopRecord()
    bar = tqdm(
        total=train_args.max_steps,
        initial=run.progress.step,
        desc="SimCLR",
        unit="step",
        disable=not run.accelerator.is_local_main_process,
    )
    run.model.train()
    while run.progress.step < train_args.max_steps:
        run.batch_sampler.set_epoch(epoch)
        run.dataloader.set_epoch(epoch)
        loader = run.accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
        for batch in loader:
            record.slides_seen.update(batch["slide_index"].tolist())
            loss, slide_embedding = update_model(run, batch, train_args.max_grad_norm)
            if not run.accelerator.sync_gradients:
                continue
            after_optimizer_step(run, train_args, loss, slide_embedding, record)
            bar.update(1)
            bar.set_postfix(loss=f"{record.final_loss:.4f}")
            if run.progress.step >= train_args.max_steps:
                break
        epoch, skip = epoch + 1, 0
    bar.close()
    return record
