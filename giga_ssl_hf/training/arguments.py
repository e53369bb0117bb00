"""Training settings: three dataclasses (data, model, optimisation) from which ``giga-ssl train``'s command line
is generated (:class:`~giga_ssl_hf.settings.SettingsParser`); a YAML/JSON ``--config`` file may give any of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..contracts.tile_sampling import ViewSampling
from ..contracts.training_run import NUM_PROCESSES
from ..settings import SettingsParser, flag_of, option


@dataclass
class DataArguments:
    """data: the tile features and how views are drawn from them"""

    features: str | None = option(
        None,
        "Tile-feature Dataset with shared augmentations (giga-ssl extract's DIR/augmented), or an "
        "extraction folder holding augmented/.",
        metavar="DIR",
        required=True,
        managed=True,
    )
    n_tiles: int = option(5, "Tiles per view, drawn with replacement (released model: 5).")
    tile_sampling: ViewSampling = option(
        "random",
        "random: n_tiles tiles drawn at random from an augmentation row (the paper). window: the "
        "n_tiles tiles nearest a random tile, a spatially contiguous patch, so the sparse CNN sees "
        "neighbourhoods; needs augmentation rows of contiguous tiles (extract --tile-sampling window or all). "
        "window-pair: both views of a slide are windows around the same place, so SimCLR must match their local "
        "arrangement, not only what is the same everywhere on the slide (see docs/how-to/recipes.md). "
        "giga-ssl pipeline also embeds the slides with window views for both.",
    )
    places_per_slide: int = option(
        1,
        "window-pair: windows at this many places of each slide per step, each place its own SimCLR instance, "
        "so that the slide's other places are negatives and what is the same everywhere on a slide (stain, "
        "composition) no longer tells instances apart (a step then holds batch_size x places instances).",
    )
    view_offset: int = option(
        0, "window-pair: the second view's centre moves up to this many grid cells from the first's."
    )
    disjoint_views: bool = option(
        False,
        "window-pair: the two views deal out the tiles of one window of 2 x n_tiles tiles at random (the same "
        "place, no tile in common), so that SimCLR cannot match views by a tile's own features.",
    )
    allow_no_augmentations: bool = option(
        False,
        "Train on a Dataset without shared augmentations (views then differ only by tile sampling and "
        "coordinate transforms). Off by default: the method needs augmented tile features.",
        affects_results=False,
    )
    coordinate_augmentation: bool = option(
        True, "Random rotation, flips and scale of the tile grid per view."
    )
    num_workers: int = option(0, "DataLoader workers (views are cheap: 0 is usually best).")
    allow_encoder_mismatch: bool = option(
        False,
        "With --init-from: accept tile features of another encoder than the one the model was trained "
        "on (refused by default: the model would meet features it has never seen).",
        affects_results=False,
    )

    def __post_init__(self):
        if self.n_tiles < 1:
            raise ValueError(f"{flag_of('n_tiles')} must be at least 1, got {self.n_tiles}")
        if (self.places_per_slide != 1 or self.view_offset or self.disjoint_views) and (
            self.tile_sampling != "window-pair"
        ):
            raise ValueError(
                f"{flag_of('places_per_slide')}, {flag_of('view_offset')} and {flag_of('disjoint_views')} need "
                f"{flag_of('tile_sampling')} window-pair"
            )
        if self.places_per_slide < 1 or self.view_offset < 0:
            raise ValueError(
                f"{flag_of('places_per_slide')} must be at least 1 and {flag_of('view_offset')} not negative"
            )


@dataclass
class ModelArguments:
    """model: the slide encoder and its projection head (unset: GigaSSLConfig's defaults, the paper's)"""

    encoder_type: str | None = option(
        None,
        "Slide encoder, one of GigaSSLConfig's encoder types (default: sparse_conv, SparseConvMIL).",
        metavar="TYPE",
    )
    feature_dim: int | None = option(
        None, "Tile feature dimension; defaults to the Dataset's. A mismatch is an error."
    )
    hidden_dim: int | None = option(None, "Slide embedding dimension (default: GigaSSLConfig.hidden_dim).")
    projection_dims: tuple[int, ...] | None = option(
        None,
        "Projection head sizes (default: HIDDEN_DIM HIDDEN_DIM HIDDEN_DIM/2 with --hidden-dim, else "
        "GigaSSLConfig.projection_dims).",
        metavar="SIZE",
    )
    temperature: float | None = option(None, "NT-Xent temperature (default: GigaSSLConfig.temperature).")
    slide_pooling: str | None = option(
        None,
        "How the encoder's output sites become the slide embedding: mean (default, the paper's), max per "
        "channel, which keeps a rare local feature (e.g. two tissue types along a short border) that the mean over "
        "a slide dilutes, or top: per channel the mean of the largest --top-site-fraction of the sites (max on a "
        "view of few sites, less noisy than max on a whole slide); the model keeps it for embedding (see "
        "docs/how-to/recipes.md).",
        metavar="POOLING",
    )
    top_site_fraction: float | None = option(
        None,
        "With --slide-pooling top: the share of a slide's sites averaged per channel (default: "
        "GigaSSLConfig.top_site_fraction).",
    )
    init_from: str | None = option(
        None,
        "Continue from a trained Giga-SSL slide encoder (folder or Hub id): its architecture and weights (--slide-"
        "pooling, --top-site-fraction, --temperature and --projection-dims still apply); "
        "its tile encoder must match the features' (see --allow-encoder-mismatch).",
    )
    init_layer4: str | None = option(
        None,
        "Initialise the sparse layer4 from a ResNet18 weights file (.safetensors or .pth; a whole "
        "resnet18 state_dict or its layer4), as the paper does from ImageNet.",
    )

    def __post_init__(self):
        from ..models.gigassl import GigaSSLConfig  # the checks are the config's own (no --help imports it)

        GigaSSLConfig(**self.config_overrides())

    def config_overrides(self) -> dict:
        """The GigaSSLConfig arguments these settings give (the others keep the config's defaults, or with
        ``init_from`` the initial model's); the projection head follows ``hidden_dim`` unless given."""
        projection_dims = self.projection_dims
        if projection_dims is None and self.hidden_dim is not None:
            projection_dims = (self.hidden_dim, self.hidden_dim, max(2, self.hidden_dim // 2))
        given = {
            "encoder_type": self.encoder_type,
            "feature_dim": self.feature_dim,
            "hidden_dim": self.hidden_dim,
            "projection_dims": projection_dims,
            "temperature": self.temperature,
            "slide_pooling": self.slide_pooling,
            "top_site_fraction": self.top_site_fraction,
        }
        return {name: value for name, value in given.items() if value is not None}


@dataclass
class TrainArguments:
    """optimisation, checkpoints and logging"""

    output_dir: str | None = option(
        None,
        "Checkpoints go to OUTPUT_DIR/checkpoints/checkpoint_<step>, the exported encoder to OUTPUT_DIR/final.",
        required=True,
        managed=True,
        affects_results=False,
    )
    batch_size: int = option(256, "Slides per batch per process (2 views each).")
    max_steps: int = option(1000, "Optimiser steps (at least 1).")
    learning_rate: float | None = option(
        None, "Peak learning rate; default: the paper's 0.03 x total batch / 256."
    )
    weight_decay: float = option(5e-4, "Weight decay (paper: 5e-4).")
    optimizer: Literal["adam", "lars"] = option("adam", "adam (paper) or lars.")
    warmup_steps: int | None = option(
        None, "Linear warm-up steps before the cosine decay; default: 10% of max_steps."
    )
    gradient_accumulation_steps: int = option(1, "Batches per optimiser step.")
    max_grad_norm: float | None = option(None, "Clip gradients to this norm.")
    mixed_precision: Literal["no", "fp16", "bf16", "fp8"] = option(
        "no", "no, fp16, bf16 or fp8 (through Accelerate)."
    )
    seed: int = option(0, "Seed of the data order, the views and the initialisation.", managed=True)
    save_steps: int = option(
        500, "Save a resumable checkpoint every N steps (0: never).", managed=True, affects_results=False
    )
    save_total_limit: int | None = option(
        3, "Keep at most this many checkpoints, the newest (0: all).", affects_results=False
    )
    overwrite_output_dir: bool = option(
        False,
        "Start afresh in an OUTPUT_DIR that holds an earlier run (its model and checkpoints are deleted).",
        managed=True,
        affects_results=False,
    )
    resume_from_checkpoint: str | None = option(
        None,
        "'latest' (OUTPUT_DIR/checkpoints/checkpoint_<step> of the highest step) or a checkpoint path.",
        managed=True,
        affects_results=False,
    )
    allow_changed_settings: bool = option(
        False,
        "With --resume-from-checkpoint: continue with settings that differ from those the run was started with "
        "(refused by default; logging, checkpoint spacing and --max-steps may always change).",
        managed=True,
        affects_results=False,
    )
    logging_steps: int = option(10, "Log loss, lr and embedding std every N steps.", affects_results=False)
    report_to: str = option(
        "tensorboard",
        "Tracker of Accelerate's log_with (tensorboard, wandb, mlflow, all, ...) or none.",
        affects_results=False,
    )

    def __post_init__(self):
        if self.batch_size < 2:
            raise ValueError(
                "batch_size must be at least 2: each slide's negatives are the other slides of the batch"
            )
        if self.max_steps < 1:
            raise ValueError(f"{flag_of('max_steps')} must be at least 1, got {self.max_steps}")
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise ValueError(
                f"{flag_of('resume_from_checkpoint')} and {flag_of('overwrite_output_dir')} exclude each other: "
                "choose one"
            )


ARGUMENT_CLASSES = (DataArguments, ModelArguments, TrainArguments)

# Named recipes (train --preset NAME). window-pair-top: window views around one place, no tile shared between the
# two, four places per slide, a 256-d encoder whose slide embedding is per channel the mean of the largest 3% of its
# sites (one or two on a training view); embed it with --tile-sampling all. On the synthetic cohorts of
# benchmarks/bench_headline.py it beat the paper's recipe and mean-pooled window pairs, and matched or beat the same
# recipe with max pooling, on every cohort measured (benchmarks/RESULTS.md, "Run 8"). 256-d is the width measured
# there (64 -> 128 -> 256 helped the worst member; 512-d, the config default, was not run on the benchmark).
PRESETS = {
    "window-pair-top": {
        "tile_sampling": "window-pair",
        "n_tiles": 64,
        "disjoint_views": True,
        "places_per_slide": 4,
        "hidden_dim": 256,
        "slide_pooling": "top",
        "top_site_fraction": 0.03,
        "learning_rate": 0.002,
    },
}

DESCRIPTION = """Slide-level SimCLR pretraining of the Giga-SSL encoder on a tile-feature Dataset with shared
augmentations (giga-ssl extract --both). Each step draws two views per slide (one augmentation, --n-tiles
tiles, a random rotation / flip / scale of their grid), encodes them with SparseConvMIL and minimises
NT-Xent. Runs on one CPU or GPU, or under `accelerate launch` / torchrun on many. Checkpoints go to
OUTPUT_DIR/checkpoints/checkpoint_<step>, the exported encoder (AutoModel.from_pretrained) to OUTPUT_DIR/final.

Options come from --config (YAML or JSON, same names with underscores; OUTPUT_DIR/training_settings.json of an
earlier run reloads its settings) and the command line, which wins."""

EPILOG = """examples:
  giga-ssl train --features out/augmented --output-dir runs/ssl --max-steps 2000
  giga-ssl train --config examples/train_tiny.yaml --batch-size 32
  giga-ssl train --features feats --output-dir runs/ssl-top --preset window-pair-top   # then embed --tile-sampling all
  accelerate launch -m giga_ssl_hf.training.train --config cfg.yaml"""


def build_parser() -> SettingsParser:
    return SettingsParser(
        *ARGUMENT_CLASSES, config_file=True, run_facts=(NUM_PROCESSES,), presets=PRESETS, prog="giga-ssl train",
        description=DESCRIPTION, epilog=EPILOG,
    )  # fmt: skip


def parse_arguments(argv: list[str] | None) -> tuple[DataArguments, ModelArguments, TrainArguments]:
    return build_parser().parse(argv)
