"""Slide-level SimCLR pretraining of Giga-SSL with Accelerate.

    giga-ssl train --features out/augmented --output-dir runs/ssl --max-steps 1000
    accelerate launch -m giga_ssl_hf.training.train --config cfg.yaml

Every input problem (empty or non-finite features, a feature dimension that does not match, no augmentations,
a batch larger than the dataset) is reported before the first step. Checkpoints (``save_state``) resume the
schedule, the RNG and the exact data order; the encoder is exported with ``save_pretrained`` to
``OUTPUT_DIR/final``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoints import load_state_dict_file
from ..contracts import TRAINING_SUMMARY_FILENAME
from ..files import replace_directory, write_json
from ..settings import run_main
from .arguments import DataArguments, ModelArguments, TrainArguments, build_parser

if TYPE_CHECKING:
    import torch

    from ..models.gigassl import GigaSSLConfig
    from .views import SlideViews

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


def validate_training_data(
    views: SlideViews, data_args: DataArguments, config: GigaSSLConfig, batch_size: int, num_processes: int
) -> None:
    """Raise ValueError for anything that would make training fail or silently meaningless."""
    if len(views) == 0:
        raise ValueError("the tile-feature Dataset is empty: no slide to train on")
    if views.arrays.feature_dim != config.feature_dim:
        raise ValueError(
            f"the tile features have dimension {views.arrays.feature_dim} but the model expects "
            f"feature_dim={config.feature_dim}"
        )
    if (views.arrays.row_length == 0).any():
        raise ValueError("some rows of the tile-feature Dataset have no tiles: filter out empty slides first")
    if not views.has_augmentations and not data_args.allow_no_augmentations:
        raise ValueError(
            "the tile-feature Dataset has no shared augmentations (every aug_id is -1): extract with --aug or "
            "--both, or pass --allow_no_augmentations to train on unaugmented tiles"
        )
    if batch_size * num_processes > len(views):
        raise ValueError(
            f"batch_size {batch_size} x {num_processes} process(es) is larger than the dataset's {len(views)} slides"
        )
    if views.arrays.unusable_rows():
        raise ValueError("the tile features contain NaN or inf values: re-extract the affected slides")


def build_config(
    model_args: ModelArguments,
    data_feature_dim: int,
    n_tiles: int,
    tile_encoder: dict | None = None,
    init_config: GigaSSLConfig | None = None,
) -> GigaSSLConfig:
    """The model config: the flags' architecture, or ``init_config``'s (``--init_from``); ``tile_encoder`` is
    the features' encoder record, which the trained model carries."""
    from ..models.gigassl import GigaSSLConfig

    training = {
        "projection_dims": model_args.projection_sizes,
        "temperature": model_args.temperature,
        "n_tiles": n_tiles,
        "tile_encoder": tile_encoder,
    }
    if init_config is not None:
        return GigaSSLConfig.from_dict({**init_config.to_dict(), **training})
    return GigaSSLConfig(
        feature_dim=model_args.feature_dim if model_args.feature_dim is not None else data_feature_dim,
        hidden_dim=model_args.hidden_dim,
        encoder_type=model_args.encoder_type,
        **training,
    )


def _init_source(name_or_path: str, load):
    if not Path(name_or_path).is_dir() and Path(name_or_path).exists():
        raise ValueError(f"--init_from: not a model folder: {name_or_path}")
    try:
        return load(name_or_path)
    except OSError as error:
        raise ValueError(f"--init_from: cannot load {name_or_path}: {error}") from error


def load_init_config(name_or_path: str) -> GigaSSLConfig:
    """The config of a trained model folder or Hub id (``--init_from``), read before any weight."""
    from ..models.gigassl import GigaSSLConfig

    return _init_source(name_or_path, GigaSSLConfig.from_pretrained)


def load_init_model(name_or_path: str):
    """The slide encoder (:class:`GigaSSLModel`) of a trained model folder or Hub id, for ``--init_from``."""
    from transformers import AutoModel

    model = _init_source(name_or_path, AutoModel.from_pretrained)
    return getattr(model, "gigassl", model)


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return path
    found = sorted(
        (int(m.group(1)), p)
        for p in (output_dir / "checkpoints").glob("step_*")
        if (m := CHECKPOINT_PATTERN.match(p.name))
    )
    if not found:
        raise FileNotFoundError(f"no checkpoint to resume from in {output_dir / 'checkpoints'}")
    return found[-1][1]


def _earlier_run(output_dir: Path, train_args: TrainArguments) -> list[Path]:
    """What an earlier run left in ``output_dir`` that starting afresh would delete (raises without the flag)."""
    found = [p for p in (output_dir / "final", output_dir / "checkpoints") if p.exists()]
    if train_args.resume_from_checkpoint:
        return []
    if found and not train_args.overwrite_output_dir:
        raise ValueError(
            f"{output_dir} already holds a training run ({', '.join(p.name + '/' for p in found)}): pass "
            "--resume-from-checkpoint latest to continue it, --overwrite-output-dir to start afresh there, "
            "or choose another --output-dir"
        )
    return found


class TrainingProgress:
    """Optimiser steps done; saved with every checkpoint so that a resume knows where the data order stands."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def parameter_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _prune_checkpoints(checkpoint_dir: Path, keep: int | None) -> None:
    if not keep:
        return
    found = sorted(
        (int(m.group(1)), p) for p in checkpoint_dir.glob("step_*") if (m := CHECKPOINT_PATTERN.match(p.name))
    )
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def train(data_args: DataArguments, model_args: ModelArguments, train_args: TrainArguments) -> dict:
    """Run pretraining; returns a summary (steps, final loss, paths). Raises ValueError on bad input."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from ..contracts import read_metadata
    from ..contracts.tile_features import (
        load_tile_dataset,
        require_same_encoder,
        resolve_tile_dataset_dir,
    )
    from ..models.gigassl import GigaSSLForContrastivePretraining
    from .losses import NTXentLoss
    from .optim import build_optimizer, warmup_cosine
    from .views import CoordinateAugmentation, EpochBatchSampler, SlideViews, collate_batch

    output_dir = Path(train_args.output_dir)
    earlier_run = _earlier_run(output_dir, train_args)
    features_dir = resolve_tile_dataset_dir(data_args.features, "augmented")

    # Accelerate keeps its settings in a process-wide singleton: without this reset, a second in-process call
    # with another mixed_precision fails. The distributed process group (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        # Without a GPU, say so: torchrun-launched CPU processes then form one gloo group instead of N
        # independent single-process runs writing to the same output_dir.
        cpu=not torch.cuda.is_available(),
        mixed_precision=train_args.mixed_precision,
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        log_with=None if train_args.report_to == "none" else train_args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    set_seed(train_args.seed)

    views = SlideViews(
        load_tile_dataset(features_dir),
        n_tiles=data_args.n_tiles,
        seed=train_args.seed,
        coordinate_augmentation=CoordinateAugmentation() if data_args.coordinate_augmentation else None,
        view_sampling=data_args.view_sampling,
    )
    features_encoder = read_metadata(features_dir).get("tile_encoder")
    init_config = load_init_config(model_args.init_from) if model_args.init_from else None
    if init_config is not None:
        require_same_encoder(
            init_config.tile_encoder, features_encoder, data_args.allow_encoder_mismatch, "train --init_from"
        )
    config = build_config(
        model_args, views.arrays.feature_dim, data_args.n_tiles, features_encoder, init_config
    )
    validate_training_data(views, data_args, config, train_args.batch_size, accelerator.num_processes)
    extraction = read_metadata(features_dir)
    drawn_at_random = extraction.get("augmentation") and extraction.get("aug_sampling", "random") == "random"
    if data_args.view_sampling == "window" and drawn_at_random:
        logger.warning(
            "window views from augmentation rows of tiles drawn at random: the windows are not contiguous; "
            "extract with --aug-sampling window or all"
        )

    model = GigaSSLForContrastivePretraining(config)
    if init_config is not None:
        model.gigassl.load_state_dict(load_init_model(model_args.init_from).state_dict())
    if model_args.init_layer4:
        model.gigassl.load_layer4_weights(load_state_dict_file(model_args.init_layer4))
    total_batch = train_args.batch_size * accelerator.num_processes * train_args.gradient_accumulation_steps
    learning_rate = 0.03 * total_batch / 256 if train_args.learning_rate is None else train_args.learning_rate
    optimizer = build_optimizer(model, train_args.optimizer, learning_rate, train_args.weight_decay)
    warmup = train_args.warmup_steps if train_args.warmup_steps is not None else train_args.max_steps // 10
    # Stepped by hand once per optimiser step: Accelerate's wrapper would step it once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, train_args.max_steps))

    batch_sampler = EpochBatchSampler(len(views), train_args.batch_size, seed=train_args.seed)
    dataloader = torch.utils.data.DataLoader(
        views, batch_sampler=batch_sampler, collate_fn=collate_batch, num_workers=data_args.num_workers
    )
    # Negatives from every process: the contrastive batch is the global batch the learning rate is scaled for.
    contrastive_loss = NTXentLoss(config.temperature, gather_across_processes=accelerator.num_processes > 1)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(scheduler, progress)

    if train_args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, train_args.resume_from_checkpoint)
        accelerator.load_state(str(checkpoint))
        logger.info("resumed from %s at step %d", checkpoint, progress.step)

    if accelerator.is_main_process:
        for path in earlier_run:  # --overwrite_output_dir: the earlier run's model and checkpoints go
            shutil.rmtree(path)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    run_config = {
        **asdict(data_args),
        **asdict(model_args),
        **asdict(train_args),
        "learning_rate": learning_rate,
    }
    if accelerator.log_with:
        accelerator.init_trackers("giga_ssl", config={k: v for k, v in run_config.items() if v is not None})

    # Accelerate closes an accumulation group at the end of every epoch (sync_with_dataloader), so an epoch holds
    # ceil(batches / accumulation) optimiser steps and a resume restarts at a whole group of its epoch.
    accumulation = train_args.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(dataloader) / accumulation)
    epoch, step_in_epoch = divmod(progress.step, steps_per_epoch)
    skip = step_in_epoch * accumulation
    slides_seen: set[int] = set()
    loss_value = float("nan")
    loss_history: list[tuple[int, float]] = []
    bar = tqdm(
        total=train_args.max_steps,
        initial=progress.step,
        desc="SimCLR",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    while progress.step < train_args.max_steps:
        batch_sampler.set_epoch(epoch)
        dataloader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for batch in loader:
            slides_seen.update(batch["slide_index"].tolist())
            with accelerator.accumulate(model):
                output = model(
                    tile_features=batch["tile_features"],
                    tile_coords=batch["tile_coords"],
                    patch_size_level0=batch["patch_size_level0"],
                    return_loss=False,
                )  # projection: (batch, 2 views, projection_dims[-1])
                loss = contrastive_loss(output.projection[:, 0], output.projection[:, 1])
                accelerator.backward(loss)
                if accelerator.sync_gradients and train_args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), train_args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            progress.step += 1
            loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
            loss_history.append((progress.step, loss_value))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if progress.step % train_args.logging_steps == 0 or progress.step == train_args.max_steps:
                # Std of the L2-normalised embeddings across slides: collapse drives it to 0 (healthy ~ 1/sqrt(dim)).
                normalised = torch.nn.functional.normalize(
                    output.slide_embedding.detach().float().flatten(0, 1), dim=1
                )
                metrics = {
                    "loss": loss_value,
                    "lr": scheduler.get_last_lr()[0],
                    "embedding_std": normalised.std(dim=0).mean().item(),
                }
                accelerator.log(metrics, step=progress.step)
                logger.info("step %d: %s", progress.step, {k: round(v, 6) for k, v in metrics.items()})
            if train_args.save_steps and progress.step % train_args.save_steps == 0:
                accelerator.save_state(str(output_dir / "checkpoints" / f"step_{progress.step}"))
                if accelerator.is_main_process:
                    _prune_checkpoints(output_dir / "checkpoints", train_args.save_total_limit)
            if progress.step >= train_args.max_steps:
                break
        epoch, skip = epoch + 1, 0
    bar.close()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    rank_log = output_dir / "logs" / f"rank{accelerator.process_index}.json"
    rank_log.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        rank_log,
        {
            "process_index": accelerator.process_index,
            "slides_seen": sorted(str(views.slide_ids[i]) for i in slides_seen),
            "parameter_checksum": parameter_checksum(unwrapped),
        },
    )
    summary = {
        "steps": progress.step,
        "final_loss": loss_value,
        "loss_history": loss_history,
        "learning_rate": learning_rate,
        "num_processes": accelerator.num_processes,
        "total_batch_size": total_batch,
        "n_slides": len(views),
        "features": str(features_dir),
        "feature_metadata": read_metadata(features_dir),
        "arguments": run_config,
        "final_model": str(output_dir / "final"),
    }
    if accelerator.is_main_process:
        # Written aside and renamed: a run killed while exporting never leaves a half-written final/.
        staging = output_dir / "final.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        unwrapped.gigassl.save_pretrained(staging)
        write_json(staging / TRAINING_SUMMARY_FILENAME, summary, sort_keys=False)
        replace_directory(staging, output_dir / "final")
        logger.info("exported the slide encoder to %s", output_dir / "final")
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_main(build_parser(), lambda *arguments: train(*arguments) and 0, argv)


if __name__ == "__main__":
    sys.exit(main())
