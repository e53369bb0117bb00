"""Throughput of the SimCLR view sampler, and of training end to end on CPU.

Two-view, 5-tile samples per second on ONE core through :class:`SlideViews` (zero-copy numpy views of the
memory-mapped Arrow columns, vectorised over a batch) vs the same sampling done through row access with
``with_format("numpy")``, side by side on the same on-disk augmented Dataset; then training steps per second of
the tiny-to-paper-sized model on this machine.

    python benchmarks/bench_views.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from table import text_table

from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
from giga_ssl_hf.training.arguments import parse_arguments
from giga_ssl_hf.training.train import train
from giga_ssl_hf.training.views import SlideViews


def row_access_views(
    dataset: datasets.Dataset, slide_rows: dict[str, list[int]], slides: list[str], n_tiles: int, rng
):
    """The straightforward sampler: fetch the chosen augmentation row per view, then pick tiles."""
    numpy_rows = dataset.with_format("numpy")
    out = []
    for slide in slides:
        for _ in range(2):
            row = numpy_rows[int(rng.choice(slide_rows[slide]))]
            index = rng.integers(0, len(row["features"]), n_tiles)
            out.append((row["features"][index], row["coords"][index]))
    return out


def bench_sampler(path: Path, batch_size: int = 512, n_tiles: int = 5, seconds: float = 3.0) -> list[dict]:
    dataset = datasets.load_from_disk(str(path))
    views = SlideViews(dataset, n_tiles=n_tiles)
    rng = np.random.default_rng(0)
    rows = []

    count, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        views.sample(rng.integers(0, len(views), batch_size), epoch=epoch)
        count, epoch = count + batch_size, epoch + 1
    rows.append({"sampler": "SlideViews (zero-copy)", "views/s": 2 * count / (time.perf_counter() - start)})

    slide_rows: dict[str, list[int]] = {}
    for index, slide in enumerate(dataset["slide_id"]):
        slide_rows.setdefault(slide, []).append(index)
    slides = list(slide_rows)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chosen = [slides[i] for i in rng.integers(0, len(slides), 64)]
        row_access_views(dataset, slide_rows, chosen, n_tiles, rng)
        count += len(chosen)
    rows.append(
        {"sampler": 'with_format("numpy") rows', "views/s": 2 * count / (time.perf_counter() - start)}
    )
    return rows


def bench_training(path: Path, out: Path, steps: int, batch_size: int, hidden_dim: int) -> dict:
    argv = [
        "--features", str(path), "--output_dir", str(out), "--max_steps", str(steps), "--batch_size", str(batch_size),
        "--hidden_dim", str(hidden_dim), "--projection_dims", str(hidden_dim), str(hidden_dim), str(hidden_dim // 2),
        "--report_to", "none", "--save_steps", "0", "--logging_steps", str(steps),
    ]  # fmt: skip
    start = time.perf_counter()
    train(*parse_arguments(argv))
    elapsed = time.perf_counter() - start
    return {"batch": batch_size, "hidden_dim": hidden_dim, "steps/s": steps / elapsed}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slides", type=int, default=2000, help="slides in the synthetic augmented Dataset")
    parser.add_argument("--n-aug", type=int, default=10, help="augmentations per slide")
    parser.add_argument("--tiles", type=int, default=256, help="tiles per augmentation")
    parser.add_argument("--steps", type=int, default=10, help="training steps to time")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sampler claim is per core
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "augmented"
        dataset, _ = synthetic_tile_dataset(
            n_slides=args.slides, feature_dim=256, n_aug=args.n_aug, tiles_per_slide=args.tiles, seed=0
        )
        dataset.save_to_disk(str(path))
        sampler_rows = bench_sampler(path)
        ratio = sampler_rows[0]["views/s"] / sampler_rows[1]["views/s"]
        torch.set_num_threads(threads)
        training_rows = [
            bench_training(path, Path(tmp) / "run_tiny", args.steps, 64, 64),
            bench_training(path, Path(tmp) / "run_paper", max(2, args.steps // 5), 256, 512),
        ]

    lines = [
        f"View sampling, 2 views x 5 tiles, 256-d float16, {args.slides} slides x {args.n_aug} augmentations, 1 core",
        text_table(sampler_rows, [("sampler", "<28"), ("views/s", ">12,.0f")]),
        f"ratio: {ratio:,.0f}x",
        "",
        f"Training end to end on CPU ({torch.get_num_threads()} threads), 5 tiles per view",
        text_table(training_rows, [("batch", ">6"), ("hidden_dim", ">10"), ("steps/s", ">8.2f")]),
    ]
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
