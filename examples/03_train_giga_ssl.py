"""Slide-level SimCLR pretraining of a tiny Giga-SSL model with Accelerate, then loading it with AutoModel.

What it shows:

1. the training input: an *augmented* tile-feature Dataset (one row per slide and shared augmentation, as
   ``giga-ssl extract`` writes to ``OUT/augmented``); here a synthetic one with planted classes
   (``synthetic_tile_dataset``: 64 slides x 4 augmentations, 16 features per tile), so no slide is needed;
2. training from a config file (``examples/train_tiny.yaml``, the same file ``giga-ssl train --config``
   reads) plus command-line overrides: any ``giga-ssl train`` option given here wins over the file, e.g.
   ``--max-steps 10``; the run is one process or several, whatever ``accelerate launch`` set up;
3. the export: ``OUT/run/final`` (config.json + model.safetensors + training_summary.json), loaded back with
   ``AutoModel.from_pretrained`` and used to embed a slide.

Run (about 20 s on 2 CPU cores):

    python examples/03_train_giga_ssl.py
    accelerate launch --config_file examples/accelerate_config.yaml examples/03_train_giga_ssl.py
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no examples/03_train_giga_ssl.py      # 2 CPU processes
    python examples/03_train_giga_ssl.py --out runs/tiny --max-steps 100 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import datasets
import numpy as np
import transformers
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from transformers import AutoModel

import giga_ssl_hf
from giga_ssl_hf.contracts.extraction_folder import AUGMENTED
from giga_ssl_hf.contracts.training_run import FINAL_DIRNAME
from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
from giga_ssl_hf.files import staged_directory
from giga_ssl_hf.inference.embed import embed_slide
from giga_ssl_hf.training.arguments import parse_arguments
from giga_ssl_hf.training.train import train

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = Path("examples_output") / "03_train_giga_ssl"


def write_features(folder: Path, seed: int) -> None:
    """The synthetic augmented tile-feature Dataset (written once; atomic, so concurrent ranks never see half)."""
    if (folder / "state.json").exists():
        return
    dataset, _ = synthetic_tile_dataset(n_slides=64, feature_dim=16, n_aug=4, tiles_per_slide=30, seed=seed)
    with staged_directory(folder) as tmp:
        dataset.save_to_disk(str(tmp))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other options are passed to the trainer (see `giga-ssl train --help`), e.g. --max-steps 10.",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (features/, run/)")
    parser.add_argument("--config", default=str(HERE / "train_tiny.yaml"), help="training config file")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic features")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args, train_overrides = build_parser().parse_known_args(argv)
    # no per-file progress bars from datasets / transformers: the example prints its own results
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    features = out / "features" / AUGMENTED

    # The process group `accelerate launch` set up (or a single process). Pass the CPU flag as Accelerator
    # does: a bare PartialState() made first would ignore ACCELERATE_USE_CPU, and the Accelerator created
    # in train() would then inherit a non-distributed state: two independent runs instead of one.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if int(os.environ.get("WORLD_SIZE", "1")) > state.num_processes:
        raise SystemExit(
            f"launched as {os.environ['WORLD_SIZE']} processes but Accelerate sees {state.num_processes}: "
            "without GPUs, set ACCELERATE_USE_CPU=1 (see examples/accelerate_config.yaml)"
        )
    with state.main_process_first():
        if state.is_main_process:
            features.parent.mkdir(parents=True, exist_ok=True)
            write_features(features, args.data_seed)

    # The config file, then the example's paths, then whatever the command line overrides. Rerunning the
    # example starts its run afresh (--overwrite-output-dir): it is a demo, not a run to resume.
    train_argv = ["--config", args.config, "--features", str(features), "--output-dir", str(out / "run")]
    train_argv.append("--overwrite-output-dir")
    summary = train(*parse_arguments(train_argv + train_overrides))

    final = out / "run" / FINAL_DIRNAME
    result = {"final": str(final), "steps": summary["steps"], "final_loss": summary["final_loss"]}
    if state.is_main_process:
        losses = [loss for _, loss in summary["loss_history"]]
        print(f"{summary['steps']} steps on {summary['num_processes']} process(es), total batch "
              f"{summary['total_batch_size']}: mean loss of the first 5 steps {np.mean(losses[:5]):.3f}, "
              f"of the last 5 {np.mean(losses[-5:]):.3f}")  # fmt: skip

        giga_ssl_hf.register_auto_classes()  # AutoModel builds GigaSSLModel from a Giga-SSL folder
        model = AutoModel.from_pretrained(final).eval()
        tiles = synthetic_tile_dataset(
            n_slides=1, feature_dim=16, tiles_per_slide=30, augmented=False, seed=args.data_seed
        )[0].with_format("numpy")[0]
        embedding = embed_slide(
            model, tiles["features"], tiles["coords"], int(tiles["patch_size_level0"]), str(tiles["slide_id"])
        )
        print(f"{type(model).__name__} loaded from {final}: config hidden_dim={model.config.hidden_dim}, "
              f"slide embedding {embedding.shape}, norm {np.linalg.norm(embedding):.3f}")  # fmt: skip
        result["embedding_shape"] = list(embedding.shape)
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return result  # no barrier here: train() ends the process group (Accelerator.end_training)


if __name__ == "__main__":
    main()
