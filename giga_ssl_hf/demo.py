"""`giga-ssl demo`: the whole pipeline on bundled sample data, with small settings.

The real CMU-1-Small-Region.svs H&E crop plus synthetic slides with or without a lesion (a disc of darker
tissue; every slide has its own stain, so stain alone does not give the label), with small settings that
finish in about a minute on a laptop CPU: window views, a standardised probe, and the trained encoder beside
the untrained one and mean pooling in the results table. Rerunning reuses finished stages.

    giga-ssl demo --out giga_ssl_demo
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .pipeline import PipelineSettings, pipeline_parser, run_and_report
from .settings import option, run_main

SAMPLE_SLIDE = "CMU-1-Small-Region.svs"
DEMO_CLASSES = ("lesion", "no_lesion")


def write_demo_slides(folder: str | Path, n_per_class: int = 6, seed: int = 0) -> tuple[list[Path], Path]:
    """The bundled real slide plus synthetic slides of two classes, and a labels CSV for the latter.

    Every slide gets its own stain (drawn from one range for both classes, so stain says nothing about the
    class); ``lesion`` slides hold a disc of darker tissue (``write_synthetic_slide(region=...)``) covering
    about a tenth of the tissue, somewhere in the larger tissue ellipse.
    """
    from .wsi.synthetic import write_synthetic_slide

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real = folder / SAMPLE_SLIDE
    if not real.exists():
        with resources.as_file(resources.files("giga_ssl_hf.data") / SAMPLE_SLIDE) as bundled:
            shutil.copyfile(bundled, real)
    rng = np.random.default_rng(seed)
    rows = ["ID,label"]
    paths = [real]
    for label in DEMO_CLASSES:
        for index in range(n_per_class):
            slide_id = f"synthetic_{label}_{index}"
            path = folder / f"{slide_id}.tiff"
            size = int(rng.integers(2400, 3400))
            stain = tuple(int(c) for c in rng.integers((150, 90, 160), (215, 125, 195)))
            centre = (float(rng.uniform(0.25, 0.45)), float(rng.uniform(0.35, 0.55)))
            lesion = (*centre, 0.11) if label == "lesion" else None
            slide_seed = int(rng.integers(1 << 30))
            if not path.exists():
                write_synthetic_slide(path, size, size, mpp=0.5, seed=slide_seed, stain=stain, region=lesion)
            paths.append(path)
            rows.append(f"{slide_id},{label}")
    labels = folder / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return paths, labels


# The pipeline's settings that differ for the demo: an offline random-init ResNet18 (pretrained weights need
# the Hub), small tiles, few steps, window views.
DEMO_DEFAULTS = {
    "extract": {"pretrained": False, "tile_size": 112, "n_aug": 4, "n_tiles_per_aug": 64, "tile_sampling": "window"},
    "train": {"max_steps": 60, "batch_size": 12, "hidden_dim": 64, "n_tiles": 16, "tile_sampling": "window",
              "learning_rate": 0.01},
    "embed": {"n_views": 20},
    "evaluate": {"folds": 3, "standardize": True},
}  # fmt: skip


@dataclass
class DemoData:
    """demo data"""

    out: str = option("giga_ssl_demo", "output folder (the slides go to OUT/slides)")
    slides_per_class: int = option(6, "synthetic slides per class")


def main(argv: list[str] | None = None) -> int:
    parser = pipeline_parser(DemoData, prog="giga-ssl demo", description=__doc__, defaults=DEMO_DEFAULTS)

    def run(data: DemoData, *settings_parts) -> int:
        settings = PipelineSettings.from_parsed(settings_parts)
        slides, labels = write_demo_slides(
            Path(data.out) / "slides", data.slides_per_class, settings.options.seed
        )
        return run_and_report(slides, data.out, str(labels), settings)

    return run_main(parser, run, argv)
