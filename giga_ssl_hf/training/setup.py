"""Everything a training run needs before its first step: the Accelerator, the views of the tile features, the
model config and weights, the optimiser and schedule, the DataLoader. Every input problem is reported here."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..contracts.training_run import CHECKPOINTS_DIRNAME, FINAL_DIRNAME
from ..settings import flag_of
from ..weight_files import load_state_dict_file
from .arguments import DataArguments, ModelArguments, TrainArguments
from .checkpointing import TrainingProgress, find_checkpoint, refuse_foreign_entries
from .run_settings import check_resumed_settings, record_settings, run_settings

if TYPE_CHECKING:
    import torch

    from ..models.gigassl import GigaSSLConfig
    from .views import EpochBatchSampler, SlideViews

logger = logging.getLogger(__name__)


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
            "--both, or pass --allow-no-augmentations to train on unaugmented tiles"
        )
    if batch_size * num_processes > len(views):
        raise ValueError(
            f"batch_size {batch_size} x {num_processes} process(es) is larger than the dataset's {len(views)} slides"
        )
    if views.arrays.unusable_rows():
        raise ValueError("the tile features contain NaN or inf values: re-extract the affected slides")


POOLING_FIELDS = ("slide_pooling", "top_site_fraction")  # same weights, another pooling of their output sites


def build_config(
    model_args: ModelArguments,
    data_feature_dim: int,
    n_tiles: int,
    tile_encoder: dict | None = None,
    init_config: GigaSSLConfig | None = None,
) -> GigaSSLConfig:
    """The model config: the flags' architecture, or ``init_config``'s (``--init-from``); ``tile_encoder`` is
    the features' encoder record, which the trained model carries."""
    from ..models.gigassl import GigaSSLConfig

    overrides = model_args.config_overrides()
    training = {"n_tiles": n_tiles, "tile_encoder": tile_encoder}
    # From a trained encoder: its architecture; the pooling, temperature and a given projection head may change.
    if init_config is not None:
        changes = {name: overrides[name] for name in ("temperature", *POOLING_FIELDS) if name in overrides}
        # Only a head given as such: not the one that --hidden-dim would imply for a new encoder.
        if model_args.projection_dims is not None:
            changes["projection_dims"] = list(model_args.projection_dims)
        return GigaSSLConfig.from_dict({**init_config.to_dict(), **changes, **training})
    return GigaSSLConfig(**{"feature_dim": data_feature_dim, **overrides, **training})


def _init_source(name_or_path: str, load):
    if not Path(name_or_path).is_dir() and Path(name_or_path).exists():
        raise ValueError(f"--init-from: not a model folder: {name_or_path}")
    try:
        return load(name_or_path)
    except OSError as error:
        raise ValueError(f"--init-from: cannot load {name_or_path}: {error}") from error


def load_init_config(name_or_path: str) -> GigaSSLConfig:
    """The config of a trained model folder or Hub id (``--init-from``), read before any weight."""
    from ..models.gigassl import GigaSSLConfig

    return _init_source(name_or_path, GigaSSLConfig.from_pretrained)


def load_init_model(name_or_path: str):
    """The slide encoder (:class:`GigaSSLModel`) of a trained model folder or Hub id, for ``--init-from``."""
    from transformers import AutoModel

    from ..models.gigassl import register_auto_classes

    register_auto_classes()
    model = _init_source(name_or_path, AutoModel.from_pretrained)
    return getattr(model, "gigassl", model)


def earlier_run(output_dir: Path, train_args: TrainArguments) -> list[Path]:
    """What an earlier run left in ``output_dir`` that starting afresh would delete (raises without the flag)."""
    found = [p for p in (output_dir / FINAL_DIRNAME, output_dir / CHECKPOINTS_DIRNAME) if p.exists()]
    if train_args.resume_from_checkpoint:
        return []
    if found and not train_args.overwrite_output_dir:
        raise ValueError(
            f"{output_dir} already holds a training run ({', '.join(p.name + '/' for p in found)}): pass "
            "--resume-from-checkpoint latest to continue it, --overwrite-output-dir to start afresh there, "
            "or choose another --output-dir"
        )
    return found


def make_accelerator(train_args: TrainArguments, output_dir: Path):
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, is_initialized

    from .checkpointing import project_configuration

    # Accelerate keeps its state in a process-wide singleton that has no public reset: the precision of the
    # first Accelerator of a process is the process's (the distributed process group is shared alike).
    if is_initialized() and AcceleratorState().mixed_precision != train_args.mixed_precision:
        raise ValueError(
            f"--mixed-precision {train_args.mixed_precision}: this process already trained with mixed precision "
            f"{AcceleratorState().mixed_precision!r}, which Accelerate fixes once per process: train in a new process"
        )
    return Accelerator(
        # Without a GPU, say so: torchrun-launched CPU processes then form one gloo group instead of N
        # independent single-process runs writing to the same output_dir.
        cpu=not torch.cuda.is_available(),
        mixed_precision=train_args.mixed_precision,
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        log_with=None if train_args.report_to == "none" else train_args.report_to,
        project_config=project_configuration(output_dir),
    )


def load_views_and_config(
    data_args: DataArguments, model_args: ModelArguments, seed: int, features_dir: Path
) -> tuple[SlideViews, GigaSSLConfig]:
    """The two-view sampler over the tile features and the config of the model to train on them."""
    from ..contracts import read_metadata
    from ..contracts.tile_features import load_tile_dataset, require_same_encoder
    from .views import CoordinateAugmentation, SlideViews

    views = SlideViews(
        load_tile_dataset(features_dir),
        n_tiles=data_args.n_tiles,
        seed=seed,
        coordinate_augmentation=CoordinateAugmentation() if data_args.coordinate_augmentation else None,
        tile_sampling=data_args.tile_sampling,
        places_per_slide=data_args.places_per_slide,
        view_offset=data_args.view_offset,
        disjoint_views=data_args.disjoint_views,
    )
    extraction = read_metadata(features_dir)
    init_config = load_init_config(model_args.init_from) if model_args.init_from else None
    if init_config is not None:
        require_same_encoder(
            init_config.tile_encoder,
            extraction.get("tile_encoder"),
            data_args.allow_encoder_mismatch,
            "train --init-from",
        )
    config = build_config(
        model_args, views.arrays.feature_dim, data_args.n_tiles, extraction.get("tile_encoder"), init_config
    )
    drawn_at_random = extraction.get("augmentation") and extraction.get("tile_sampling") == "random"
    if data_args.tile_sampling != "random" and drawn_at_random:
        logger.warning(
            "window views from augmentation rows of tiles drawn at random: the windows are not contiguous; "
            "extract with --tile-sampling window or all"
        )
    return views, config


def build_model(config: GigaSSLConfig, model_args: ModelArguments):
    from ..models.gigassl import GigaSSLForContrastivePretraining

    model = GigaSSLForContrastivePretraining(config)
    if model_args.init_from:
        model.gigassl.load_state_dict(load_init_model(model_args.init_from).state_dict())
    if model_args.init_layer4:
        model.gigassl.load_layer4_weights(load_state_dict_file(model_args.init_layer4))
    return model


@dataclass
class TrainingRun:
    """A prepared run: what the loop, the checkpoints and the export work on."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    dataloader: torch.utils.data.DataLoader
    batch_sampler: EpochBatchSampler
    contrastive_loss: torch.nn.Module
    views: SlideViews
    progress: TrainingProgress
    learning_rate: float
    total_batch_size: int
    features_dir: Path
    output_dir: Path
    run_config: dict


def setup_training(
    data_args: DataArguments, model_args: ModelArguments, train_args: TrainArguments
) -> TrainingRun:
    """Check the inputs, build and prepare everything, resume if asked, and clear what an overwrite replaces."""
    from ..contracts.extraction_folder import AUGMENTED

    if not data_args.features or not train_args.output_dir:
        raise ValueError(f"{flag_of('features')} and {flag_of('output_dir')} are required")
    output_dir = Path(train_args.output_dir)
    replaced = earlier_run(output_dir, train_args)
    if output_dir / CHECKPOINTS_DIRNAME not in replaced:  # checkpoints kept: later saves go among them
        refuse_foreign_entries(output_dir)
    settings = run_settings(data_args, model_args, train_args)
    if train_args.resume_from_checkpoint:  # before anything is built: a changed recipe is refused at once
        checkpoint = find_checkpoint(output_dir, train_args.resume_from_checkpoint)
        check_resumed_settings(checkpoint, settings, train_args.allow_changed_settings)
    # Imported after the checks that need neither datasets nor torch, so that they answer at once.
    from accelerate.utils import set_seed

    from ..contracts.tile_features import resolve_tile_dataset_dir

    features_dir = resolve_tile_dataset_dir(data_args.features, AUGMENTED)
    accelerator = make_accelerator(train_args, output_dir)
    set_seed(train_args.seed)
    views, config = load_views_and_config(data_args, model_args, train_args.seed, features_dir)
    validate_training_data(views, data_args, config, train_args.batch_size, accelerator.num_processes)
    total_batch = train_args.batch_size * accelerator.num_processes * train_args.gradient_accumulation_steps
    learning_rate = 0.03 * total_batch / 256 if train_args.learning_rate is None else train_args.learning_rate
    run_config = {**settings, "learning_rate": learning_rate}
    model = build_model(config, model_args)
    run = TrainingRun(
        accelerator=accelerator, views=views, progress=TrainingProgress(), learning_rate=learning_rate,
        total_batch_size=total_batch, features_dir=features_dir, output_dir=output_dir, run_config=run_config,
        **_prepare(accelerator, views, config, model, data_args, train_args, learning_rate),
    )  # fmt: skip
    accelerator.register_for_checkpointing(run.scheduler, run.progress)
    if train_args.resume_from_checkpoint:
        _resume(run, checkpoint)
    if accelerator.is_main_process:
        for path in replaced:  # --overwrite-output-dir: the earlier run's model and checkpoints go
            shutil.rmtree(path)
        output_dir.mkdir(parents=True, exist_ok=True)
        record_settings(output_dir, settings)
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        # trackers' hyperparameters are scalars: a list (projection_dims) as its text
        hyperparameters = {
            k: str(v) if isinstance(v, list) else v for k, v in run_config.items() if v is not None
        }
        accelerator.init_trackers("giga_ssl", config=hyperparameters)
    return run


def _prepare(
    accelerator, views, config, model, data_args: DataArguments, train_args: TrainArguments, lr: float
):
    """The prepared model, optimiser and DataLoader, the schedule, the batch sampler and the loss (by field)."""
    import torch

    from .losses import NTXentLoss
    from .optim import build_optimizer, warmup_cosine
    from .views import EpochBatchSampler, collate_batch

    optimizer = build_optimizer(model, train_args.optimizer, lr, train_args.weight_decay)
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
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "dataloader": dataloader,
        "batch_sampler": batch_sampler,
        "contrastive_loss": contrastive_loss,
    }


def _resume(run: TrainingRun, checkpoint: Path) -> None:
    run.accelerator.load_state(str(checkpoint))
    logger.info("resumed from %s at step %d", checkpoint, run.progress.step)
