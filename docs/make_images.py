"""Refreshes the tutorial's pictures in docs/images/ from a demo run (not part of the build).

    giga-ssl demo --out /tmp/demo
    giga-ssl evaluate --embeddings /tmp/demo/embeddings --labels /tmp/demo/slides/labels.csv --folds 3 \
        --standardize --save-probe /tmp/demo/probe
    giga-ssl heatmap --model /tmp/demo/model/final --features /tmp/demo/features --probe /tmp/demo/probe \
        --out /tmp/demo/heatmaps --slides-dir /tmp/demo/slides --slide-ids synthetic_lesion_0 --class lesion
    python docs/make_images.py /tmp/demo

The pictures are the package's own outputs, shrunk to keep the repository small; the loss curve is drawn
from the ``loss_history`` that training records in ``model/final/training_summary.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

IMAGES = Path(__file__).resolve().parent / "images"
MAX_SIDE = 640


def shrink(source: Path, target: Path) -> None:
    image = Image.open(source).convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    image.save(target, quality=85, optimize=True)


def loss_curve(summary: Path, target: Path) -> None:
    steps, losses = zip(*json.loads(summary.read_text())["loss_history"], strict=True)
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot(steps, losses, marker=".")
    axes.set(xlabel="optimiser step", ylabel="NT-Xent loss", title="giga-ssl demo: SimCLR loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(target)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("demo", type=Path, help="a giga-ssl demo folder, with probe/ and heatmaps/ as above")
    demo = parser.parse_args().demo
    IMAGES.mkdir(exist_ok=True)
    shrink(demo / "features/thumbnails/CMU-1-Small-Region.png", IMAGES / "thumbnail-cmu-1.jpg")
    shrink(demo / "features/thumbnails/synthetic_lesion_0.png", IMAGES / "thumbnail-synthetic.jpg")
    shrink(next((demo / "results").glob("roc_*.png")), IMAGES / "roc.png")
    shrink(demo / "heatmaps/synthetic_lesion_0.png", IMAGES / "heatmap-synthetic.jpg")
    loss_curve(demo / "model/final/training_summary.json", IMAGES / "loss-curve.png")


if __name__ == "__main__":
    main()
