"""Slide-level SimCLR pretraining of Giga-SSL with Accelerate.

    giga-ssl train --features out/augmented --output-dir runs/ssl --max-steps 1000
    accelerate launch -m giga_ssl_hf.training.train --config cfg.yaml

Every input problem (empty or non-finite features, a feature dimension that does not match, no augmentations,
a batch larger than the dataset) is reported before the first step (:mod:`.setup`). Checkpoints
(:mod:`.checkpointing`) resume the schedule, the RNG and the exact data order; the loop is :mod:`.loop`; the
encoder is exported with ``save_pretrained`` to ``OUTPUT_DIR/final`` (:mod:`.export`).
"""

from __future__ import annotations

import logging
import sys

from ..settings import run_main
from .arguments import DataArguments, ModelArguments, TrainArguments, build_parser


def train(data_args: DataArguments, model_args: ModelArguments, train_args: TrainArguments) -> dict:
    """Run pretraining; returns a summary (steps, final loss, paths). Raises ValueError on bad input."""
    from .export import export_run
    from .loop import train_loop
    from .setup import setup_training

    run = setup_training(data_args, model_args, train_args)
    record = train_loop(run, train_args)
    return export_run(run, record)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def run(*arguments) -> int:
        train(*arguments)
        return 0

    return run_main(build_parser(), run, argv)


if __name__ == "__main__":  # `accelerate launch` / `torchrun` ... -m giga_ssl_hf.training.train
    from giga_ssl_hf.cli import main as giga_ssl

    sys.exit(giga_ssl(["train", *sys.argv[1:]]))  # starts as `giga-ssl train` does (logging, OpenMP)
