"""Training arguments: dataclasses parsed by ``HfArgumentParser`` from a YAML/JSON file plus command-line flags."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser


@dataclass
class DataArguments:
    features: str | None = field(
        default=None,
        metadata={
            "help": "Tile-feature Dataset with shared augmentations (giga-ssl extract's DIR/augmented), or an "
            "extraction folder holding augmented/. Required."
        },
    )
    n_tiles: int = field(
        default=5, metadata={"help": "Tiles per view, drawn with replacement (released model: 5)."}
    )
    view_sampling: str = field(
        default="random",
        metadata={
            "help": "random: n_tiles tiles drawn at random from an augmentation row (the paper). window: the "
            "n_tiles tiles nearest a random tile, a spatially contiguous patch, so the sparse CNN sees "
            "neighbourhoods; needs augmentation rows of contiguous tiles (extract --aug-sampling window or all)."
        },
    )
    allow_no_augmentations: bool = field(
        default=False,
        metadata={
            "help": "Train on a Dataset without shared augmentations (views then differ only by tile sampling and "
            "coordinate transforms). Off by default: the method needs augmented tile features."
        },
    )
    coordinate_augmentation: bool = field(
        default=True,
        metadata={"help": "Random rotation, flips and scale of the tile grid per view."},
    )
    num_workers: int = field(
        default=0, metadata={"help": "DataLoader workers (views are cheap: 0 is usually best)."}
    )
    allow_encoder_mismatch: bool = field(
        default=False,
        metadata={
            "help": "With --init_from: accept tile features of another encoder than the one the model was trained "
            "on (refused by default: the model would meet features it has never seen)."
        },
    )


@dataclass
class ModelArguments:
    encoder_type: str = field(default="sparse_conv", metadata={"help": "sparse_conv (SparseConvMIL) or mlp."})
    feature_dim: int | None = field(
        default=None,
        metadata={"help": "Tile feature dimension; defaults to the Dataset's. A mismatch is an error."},
    )
    hidden_dim: int = field(default=512, metadata={"help": "Slide embedding dimension."})
    projection_dims: str = field(
        default="512,512,256", metadata={"help": "Projection head sizes, comma separated."}
    )
    temperature: float = field(default=0.05, metadata={"help": "NT-Xent temperature."})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Continue from a trained Giga-SSL slide encoder (folder or Hub id): its architecture and weights; "
            "its tile encoder must match the features' (see --allow_encoder_mismatch)."
        },
    )
    init_layer4: str | None = field(
        default=None,
        metadata={
            "help": "Initialise the sparse layer4 from a ResNet18 weights file (.safetensors or .pth; a whole "
            "resnet18 state_dict or its layer4), as the paper does from ImageNet."
        },
    )


@dataclass
class TrainArguments:
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoints go to OUTPUT_DIR/checkpoints/step_*, the exported encoder to OUTPUT_DIR/final."
        },
    )
    batch_size: int = field(default=256, metadata={"help": "Slides per batch per process (2 views each)."})
    max_steps: int = field(default=1000, metadata={"help": "Optimiser steps (at least 1)."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate; default: the paper's 0.03 x total batch / 256."}
    )
    weight_decay: float = field(default=5e-4, metadata={"help": "Weight decay (paper: 5e-4)."})
    optimizer: str = field(default="adam", metadata={"help": "adam (paper) or lars."})
    warmup_steps: int | None = field(
        default=None,
        metadata={"help": "Linear warm-up steps before the cosine decay; default: 10%% of max_steps."},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (through Accelerate)."})
    seed: int = field(
        default=0, metadata={"help": "Seed of the data order, the views and the initialisation."}
    )
    save_steps: int = field(
        default=500, metadata={"help": "Save a resumable checkpoint every N steps (0: never)."}
    )
    save_total_limit: int | None = field(default=3, metadata={"help": "Keep at most this many checkpoints."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an OUTPUT_DIR that holds an earlier run (its model and checkpoints are deleted)."
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "'latest' (newest OUTPUT_DIR/checkpoints/step_*) or a checkpoint path."},
    )
    logging_steps: int = field(default=10, metadata={"help": "Log loss, lr and embedding std every N steps."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard or none."})


ARGUMENT_CLASSES = (DataArguments, ModelArguments, TrainArguments)


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values")
    known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) in {path}: {', '.join(unknown)}")
    return values


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


DESCRIPTION = """Slide-level SimCLR pretraining of the Giga-SSL encoder on a tile-feature Dataset with shared
augmentations (giga-ssl extract --both). Each step draws two views per slide (one augmentation, --n_tiles
tiles, a random rotation / flip / scale of their grid), encodes them with SparseConvMIL and minimises
NT-Xent. Runs on one CPU or GPU, or under `accelerate launch` / torchrun on many. Checkpoints go to
OUTPUT_DIR/checkpoints/step_*, the exported encoder (AutoModel.from_pretrained) to OUTPUT_DIR/final.

Options come from --config (YAML or JSON, same names) and the command line, which wins."""


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        ARGUMENT_CLASSES, prog="giga-ssl train", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument(
        "--config", default=None, help="YAML or JSON file of options; flags on the command line override it."
    )
    parser.epilog = (
        "examples:\n"
        "  giga-ssl train --features out/augmented --output_dir runs/ssl --max_steps 2000\n"
        "  giga-ssl train --config examples/train_tiny.yaml --batch_size 32\n"
        "  accelerate launch -m giga_ssl_hf.training.train --config cfg.yaml"
    )
    return parser


def parse_arguments(argv: list[str] | None) -> tuple[DataArguments, ModelArguments, TrainArguments]:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**read_config_file(pre.config))
    data_args, model_args, train_args, _ = parser.parse_args_into_dataclasses(argv)
    return data_args, model_args, train_args
