"""Where on the slide: per-tile heatmaps of a saved linear probe (``giga-ssl evaluate --save-probe``, ``giga-ssl
heatmap``).

What it shows:

1. a synthetic cohort of tile features whose class is decided by a planted, spatially contiguous region (a known
   tile mask per slide; every slide also holds a decoy region of another kind): SimCLR training, slide
   embeddings, ``giga-ssl evaluate --save-probe``, then ``giga-ssl heatmap`` with two methods (``tiles``, the
   default: each tile's own embedding, its share of the slide's log-odds under the probe; ``occlusion``: the drop
   of the slide's score when a tile's neighbourhood is removed), and how well the tile scores find the planted region
   (per-slide AUC against the mask, averaged);
2. real pixels: the bundled real H&E crop (``CMU-1-Small-Region.svs``) plus synthetic whole-slide images, half
   of them with a planted dark-purple region: extraction (random-init ResNet18, offline), a random-init slide
   encoder standing in for a trained one, a probe for "has the region", and heatmaps drawn over the slide
   thumbnails (``--slides-dir``) for the real slide and a synthetic one.

Run (about three minutes on 2 CPU cores):

    python examples/04_heatmap.py
    python examples/04_heatmap.py --out runs/heatmaps --steps 150
"""

from __future__ import annotations

import argparse
import json
import shutil
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch
import transformers
from sklearn.metrics import roc_auc_score

import giga_ssl_hf
from giga_ssl_hf.cli import main as giga_ssl
from giga_ssl_hf.contracts.extraction_folder import AUGMENTED, EXHAUSTIVE
from giga_ssl_hf.contracts.training_run import FINAL_DIRNAME
from giga_ssl_hf.features.extract import ExtractionConfig, extract_slides
from giga_ssl_hf.features.synthetic_features import synthetic_region_cohort
from giga_ssl_hf.inference.embed import EmbedSettings, embed_to_folder
from giga_ssl_hf.training.arguments import parse_arguments
from giga_ssl_hf.training.train import train
from giga_ssl_hf.wsi.synthetic import write_synthetic_slide

DEFAULT_OUT = Path("examples_output") / "04_heatmap"
SAMPLE_SLIDE = "CMU-1-Small-Region.svs"


def run_cli(*argv: str) -> None:
    if giga_ssl([str(a) for a in argv]) != 0:
        raise SystemExit(f"giga-ssl {argv[0]} failed")


def write_labels(path: Path, labels: dict[str, str]) -> Path:
    path.write_text("ID,label\n" + "".join(f"{slide},{label}\n" for slide, label in labels.items()))
    return path


def planted_region_cohort(out: Path, n_slides: int, steps: int, seed: int) -> dict:
    """Part 1: train, embed, save a probe, map the tiles; per-slide AUC of the scores against the planted mask."""
    augmented, exhaustive, classes, masks = synthetic_region_cohort(n_slides=n_slides, seed=seed)
    features = out / "features"
    if not (features / AUGMENTED).exists():
        augmented.save_to_disk(str(features / AUGMENTED))
        exhaustive.save_to_disk(str(features / EXHAUSTIVE))
    train(*parse_arguments([
        "--features", str(features / AUGMENTED), "--output-dir", str(out / "run"), "--hidden-dim", "64",
        "--projection-dims", "64", "64", "32", "--batch-size", "16", "--max-steps", str(steps), "--learning-rate", "0.01",
        "--temperature", "0.1", "--save-steps", "0", "--report-to", "none", "--seed", str(seed),
        "--overwrite-output-dir",  # a demo: a rerun trains afresh instead of refusing the earlier run's folder
    ]))  # fmt: skip
    model_dir = out / "run" / FINAL_DIRNAME
    model = giga_ssl_hf.GigaSSLModel.from_pretrained(model_dir).eval()
    embed_to_folder(
        EmbedSettings(features=str(features), out=str(out / "embeddings"), n_views=50, overwrite=True), model
    )
    labels = write_labels(
        out / "labels.csv", {s: ("positive" if c else "negative") for s, c in classes.items()}
    )
    run_cli("evaluate", "--embeddings", out / "embeddings", "--labels", labels, "--folds", "3",
            "--save-probe", out / "probe", "--overwrite-probe")  # fmt: skip

    positives = [slide for slide, c in classes.items() if c == 1]
    common = ("--model", model_dir, "--features", features, "--probe", out / "probe", "--overwrite")
    run_cli("heatmap", *common, "--out", out / "heatmaps", "--slide-ids", *positives)
    run_cli(
        "heatmap", *common, "--out", out / "occlusion", "--method", "occlusion", "--slide-ids", *positives[:4]
    )
    result = {}
    for method, folder in (("tiles", "heatmaps"), ("occlusion", "occlusion")):
        table = pq.read_table(out / folder / "tile_scores.parquet").to_pandas()
        aucs = [
            roc_auc_score(masks[slide], part["score"])
            for slide, part in table.groupby("slide_id", sort=False)
        ]  # rows are in each slide's tile order, as the masks
        result[method] = {"mean_auc": float(np.mean(aucs)), "n_slides": len(aucs)}
        print(f"{method}: tile scores vs the planted region, mean per-slide AUC {np.mean(aucs):.3f} "
              f"over {len(aucs)} slides (0.5 = chance)")  # fmt: skip
    result["png"] = str(out / "heatmaps" / f"{positives[0]}.png")
    return result


def real_pixels(out: Path, seed: int, n_per_class: int = 4) -> dict:
    """Part 2: heatmaps over slide thumbnails: the bundled real slide and synthetic slides with a planted region."""
    slides = out / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    if not (slides / SAMPLE_SLIDE).exists():
        with resources.as_file(resources.files("giga_ssl_hf.data") / SAMPLE_SLIDE) as bundled:
            shutil.copyfile(bundled, slides / SAMPLE_SLIDE)
    rng = np.random.default_rng(seed)
    labels = {}
    for index in range(2 * n_per_class):
        has_region = index % 2 == 0
        slide_id = f"synthetic_{'region' if has_region else 'plain'}_{index // 2}"
        labels[slide_id] = "region" if has_region else "plain"
        if not (slides / f"{slide_id}.tiff").exists():
            region = (rng.uniform(0.22, 0.4), rng.uniform(0.35, 0.55), 0.14) if has_region else None
            write_synthetic_slide(slides / f"{slide_id}.tiff", 3072, 3072, mpp=0.5, region=region,
                                  seed=int(rng.integers(1 << 30)))  # fmt: skip
    # 224 px tiles at 0.5 µm/px (level 0 of these slides); random-init encoder weights: no network needed.
    config = ExtractionConfig(pretrained=False, target_mpp=0.5, seed=seed)
    summary = extract_slides(sorted(slides.iterdir()), out / "features", config, passes=(EXHAUSTIVE,),
                             device="cpu", progress=False)  # fmt: skip
    if summary.failed:
        raise SystemExit(f"extraction failed: {summary.failed}")
    model_dir = out / "model"
    if not model_dir.exists():
        torch.manual_seed(seed)
        giga_ssl_hf.GigaSSLModel(giga_ssl_hf.GigaSSLConfig(feature_dim=256, hidden_dim=64)).save_pretrained(
            model_dir
        )
    model = giga_ssl_hf.GigaSSLModel.from_pretrained(model_dir).eval()
    embed_to_folder(
        EmbedSettings(
            features=str(out / "features"), out=str(out / "embeddings"), n_views=50, overwrite=True
        ),
        model,
    )
    run_cli("evaluate", "--embeddings", out / "embeddings", "--labels", write_labels(out / "labels.csv", labels),
            "--folds", "3", "--save-probe", out / "probe", "--overwrite-probe")  # fmt: skip
    shown = ["CMU-1-Small-Region", "synthetic_region_0"]
    run_cli("heatmap", "--model", model_dir, "--features", out / "features", "--probe", out / "probe",
            "--out", out / "heatmaps", "--slides-dir", slides, "--slide-ids", *shown, "--overwrite")  # fmt: skip
    return {"pngs": [str(out / "heatmaps" / f"{slide}.png") for slide in shown]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--slides", type=int, default=24, help="slides of the synthetic feature cohort")
    parser.add_argument("--steps", type=int, default=60, help="SimCLR steps on that cohort")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    result = {
        "planted_region": planted_region_cohort(out / "planted_region", args.slides, args.steps, args.seed),
        "real_pixels": real_pixels(out / "real_pixels", args.seed),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    print(f"heatmaps: {result['planted_region']['png']}, " + ", ".join(result["real_pixels"]["pngs"]))
    return result


if __name__ == "__main__":
    main()
