"""One command from slides to results: extract -> train -> embed -> evaluate.

    giga-ssl pipeline slides/*.svs --out runs/cohort --labels labels.csv
    giga-ssl demo                                     # bundled sample data, about a minute on 2 CPU cores

Every stage is resumable and skipped when its output is complete and was made from the same inputs and
settings (``OUT/pipeline_state.json`` records a fingerprint per stage), so rerunning after a crash, adding
slides or labels, or changing a setting redoes exactly the stages concerned:

    OUT/features/{exhaustive,augmented,manifest.jsonl}   giga-ssl extract
    OUT/model/final/                                      giga-ssl train   (checkpoints in OUT/model/checkpoints)
    OUT/embeddings/                                       giga-ssl embed
    OUT/results/{metrics.json,metrics.csv,*.png}          giga-ssl evaluate (with --labels)

The results table puts the trained encoder beside two baselines under the same probe and splits: the same
encoder untrained (random initialisation) and mean pooling of the tile features.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np

from .features.extract import ExtractionConfig, extract_slides
from .files import write_json

logger = logging.getLogger(__name__)

SAMPLE_SLIDE = "CMU-1-Small-Region.svs"


@dataclass
class PipelineSettings:
    """Settings of every stage; extraction's are :class:`ExtractionConfig` (its seed is ``seed``)."""

    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    max_steps: int = 1000
    batch_size: int = 256
    hidden_dim: int = 512
    n_tiles: int = 5
    view_sampling: str = "random"
    learning_rate: float | None = None
    n_views: int = 100
    folds: int = 5
    standardize: bool = False
    device: str = "auto"
    seed: int = 0


class PipelineState:
    """Per stage: the fingerprint of its inputs and settings, and whether its output is complete."""

    FILENAME = "pipeline_state.json"

    def __init__(self, out: Path):
        self.path = out / self.FILENAME
        self.stages = json.loads(self.path.read_text()) if self.path.exists() else {}

    @staticmethod
    def fingerprint(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def status(self, stage: str, fingerprint: str, output: Path) -> str:
        """'done' (skip), 'resume' (same inputs, unfinished) or 'redo' (new inputs: start from scratch)."""
        recorded = self.stages.get(stage, {})
        if recorded.get("fingerprint") != fingerprint:
            if output.exists():
                logger.info(
                    "stage %s: inputs or settings changed since %s was made, redoing it", stage, output
                )
            return "redo"
        if recorded.get("complete") and output.exists():
            logger.info("stage %s: complete already (%s), skipped", stage, output)
            return "done"
        return "resume"

    def record(self, stage: str, fingerprint: str, complete: bool) -> None:
        self.stages[stage] = {"fingerprint": fingerprint, "complete": complete}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.stages, sort_keys=False)


def run_pipeline(
    slides: list[str | Path], out: str | Path, settings: PipelineSettings, labels: str | None = None
):
    """Run (or finish) every stage; returns the output paths by stage."""
    from .inference.embed import embed_to_folder, load_model
    from .runtime import resolve_device
    from .training.arguments import parse_arguments
    from .training.train import train

    out = Path(out)
    paths = {
        "features": out / "features",
        "model": out / "model" / "final",
        "embeddings": out / "embeddings",
        "results": out / "results",
    }

    logger.info("stage extract: %d slide path(s) -> %s", len(slides), paths["features"])
    config = replace(settings.extraction, seed=settings.seed)
    # Under a multi-process launcher each process extracts its share; all go on once the Datasets exist.
    summary = extract_slides(
        slides, paths["features"], config, device=settings.device, thumbnails=True, wait_for_shares=True
    )
    if summary.failed:
        logger.warning("%d slide(s) failed and are left out (see the manifest)", len(summary.failed))
    if not summary.ok and not summary.skipped:
        raise ValueError(f"no slide produced tiles; see {paths['features'] / 'manifest.jsonl'}")
    state = PipelineState(out)
    manifest = [json.loads(line) for line in (paths["features"] / "manifest.jsonl").read_text().splitlines()]
    extracted = sorted((r["slide_id"], r["n_tiles"]) for r in manifest if r["status"] == "ok")
    fingerprints = {"features": state.fingerprint(extracted, asdict(config))}
    fingerprints["train"] = state.fingerprint(
        fingerprints["features"],
        [
            settings.max_steps,
            settings.batch_size,
            settings.hidden_dim,
            settings.n_tiles,
            settings.learning_rate,
            settings.view_sampling,
        ],
        settings.seed,
    )
    fingerprints["embed"] = state.fingerprint(fingerprints["train"], settings.n_views, settings.seed)
    if labels is not None:
        fingerprints["evaluate"] = state.fingerprint(
            fingerprints["embed"],
            Path(labels).read_text(),
            settings.folds,
            settings.seed,
            settings.standardize,
        )
    strategy = "window" if settings.view_sampling == "window" else "random"

    train_status = state.status("train", fingerprints["train"], paths["model"].parent)
    if train_status != "done":
        if train_status == "redo":
            shutil.rmtree(paths["model"].parent, ignore_errors=True)
        state.record("train", fingerprints["train"], complete=False)
        checkpoints = paths["model"].parent / "checkpoints"
        argv = [
            "--features", str(paths["features"] / "augmented"), "--output_dir", str(paths["model"].parent),
            "--max_steps", str(settings.max_steps), "--batch_size", str(settings.batch_size),
            "--hidden_dim", str(settings.hidden_dim), "--n_tiles", str(settings.n_tiles),
            "--projection_dims", f"{settings.hidden_dim},{settings.hidden_dim},{max(2, settings.hidden_dim // 2)}",
            "--seed", str(settings.seed), "--save_steps", str(max(1, settings.max_steps // 4)),
            "--view_sampling", settings.view_sampling,
        ]  # fmt: skip
        if settings.learning_rate is not None:
            argv += ["--learning_rate", str(settings.learning_rate)]
        if any(checkpoints.glob("step_*")):
            argv += ["--resume_from_checkpoint", "latest"]
        logger.info("stage train: %d steps -> %s", settings.max_steps, paths["model"])
        train(*parse_arguments(argv))
        state.record("train", fingerprints["train"], complete=True)

    if state.status("embed", fingerprints["embed"], paths["embeddings"]) != "done":
        logger.info("stage embed: %d views per slide -> %s", settings.n_views, paths["embeddings"])
        model = load_model(str(paths["model"]), resolve_device(settings.device))
        embed_to_folder(
            model,
            paths["features"],
            paths["embeddings"],
            strategy=strategy,
            n_views=settings.n_views,
            seed=settings.seed,
            npy=True,
        )
        state.record("embed", fingerprints["embed"], complete=True)

    if labels is None:
        logger.info("stage evaluate: no --labels given, skipped")
    elif state.status("evaluate", fingerprints["evaluate"], paths["results"]) != "done":
        from .evaluation import evaluate_embeddings, format_table, write_outputs

        shutil.rmtree(paths["results"], ignore_errors=True)
        logger.info("stage evaluate: %d-fold linear probe -> %s", settings.folds, paths["results"])
        results = [
            result
            for name, embeddings in _embeddings_and_baselines(paths, settings, strategy).items()
            for result in evaluate_embeddings(
                embeddings, labels, folds=settings.folds, seed=settings.seed, embedding=name,
                standardize=settings.standardize,
            )
        ]  # fmt: skip
        config = {"labels": str(labels), "folds": settings.folds, "standardize": settings.standardize}
        write_outputs(results, paths["results"], config=config)
        state.record("evaluate", fingerprints["evaluate"], complete=True)
        logger.info("linear probe:\n%s", format_table(results))
    return paths


def _embeddings_and_baselines(paths: dict[str, Path], settings: PipelineSettings, strategy: str) -> dict:
    """The trained encoder's embeddings, the same encoder untrained, and mean pooling: ``{name: (ids, vectors)}``."""
    import torch

    from .contracts.slide_embeddings import load_embeddings
    from .contracts.tile_features import load_tile_dataset, resolve_tile_dataset_dir
    from .evaluation.linear_probe import mean_pool_baseline
    from .inference.embed import embed_tile_dataset, load_model
    from .models.gigassl import GigaSSLModel

    exhaustive = load_tile_dataset(resolve_tile_dataset_dir(paths["features"], "exhaustive"))
    torch.manual_seed(settings.seed)
    untrained = GigaSSLModel(load_model(str(paths["model"]), "cpu").config).eval()
    return {
        "trained": load_embeddings(str(paths["embeddings"])),
        "untrained": embed_tile_dataset(
            untrained, exhaustive, strategy, settings.n_views, seed=settings.seed, progress=False
        ),
        "mean-pool": mean_pool_baseline(str(paths["features"])),
    }


# ----------------------------------------------------------------------------------------------- demo data
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


DEMO_SETTINGS = PipelineSettings(
    # offline: a random-init ResNet18 (pretrained weights need the Hub)
    extraction=ExtractionConfig(
        pretrained=False, tile_size=112, n_aug=4, n_tiles_per_aug=64, aug_sampling="window"
    ),
    max_steps=60,
    batch_size=12,
    hidden_dim=64,
    n_tiles=16,
    view_sampling="window",
    learning_rate=0.01,
    n_views=20,
    folds=3,
    standardize=True,
)


# ------------------------------------------------------------------------------------------------- CLI
def _add_settings_arguments(parser: argparse.ArgumentParser, defaults: PipelineSettings) -> None:
    extraction = defaults.extraction
    group = parser.add_argument_group("extraction")
    group.add_argument(
        "--encoder", default=extraction.encoder, help="tile encoder (preset, timm name, hf-hub: id)"
    )
    group.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", default=extraction.pretrained,
        help="random-init tile encoder (no download)",
    )  # fmt: skip
    group.add_argument("--tile-size", type=int, default=extraction.tile_size, help="tile side in pixels")
    group.add_argument(
        "--target-mpp", type=float, default=extraction.target_mpp, help="µm per pixel of the tiles"
    )
    group.add_argument("--n-aug", type=int, default=extraction.n_aug, help="shared augmentations per slide")
    group.add_argument(
        "--n-tiles-per-aug", type=int, default=extraction.n_tiles_per_aug, help="tiles per augmentation"
    )
    group.add_argument(
        "--aug-sampling", choices=("random", "window", "all"), default=extraction.aug_sampling,
        help="tiles of each augmentation: random (the paper), window (contiguous) or all",
    )  # fmt: skip
    group = parser.add_argument_group("training")
    group.add_argument("--max-steps", type=int, default=defaults.max_steps, help="SimCLR optimiser steps")
    group.add_argument("--batch-size", type=int, default=defaults.batch_size, help="slides per batch")
    group.add_argument(
        "--hidden-dim", type=int, default=defaults.hidden_dim, help="slide embedding dimension"
    )
    group.add_argument("--n-tiles", type=int, default=defaults.n_tiles, help="tiles per view")
    group.add_argument(
        "--view-sampling", choices=("random", "window"), default=defaults.view_sampling,
        help="training views (and embedding strategy): random tiles (the paper) or contiguous windows",
    )  # fmt: skip
    group.add_argument(
        "--learning-rate", type=float, default=defaults.learning_rate, help="default: 0.03 x batch/256"
    )
    group = parser.add_argument_group("embedding and evaluation")
    group.add_argument(
        "--n-views", type=int, default=defaults.n_views, help="views averaged per slide embedding"
    )
    group.add_argument(
        "--folds", type=int, default=defaults.folds, help="stratified folds of the linear probe"
    )
    group.add_argument(
        "--standardize", action=argparse.BooleanOptionalAction, default=defaults.standardize,
        help="standardise the probe's features (scaler fit on each training split)",
    )  # fmt: skip
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, ...")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random draw")


EXTRACTION_OPTIONS = (
    "encoder", "pretrained", "tile_size", "target_mpp", "n_aug", "n_tiles_per_aug", "aug_sampling",
)  # fmt: skip


def _settings(args: argparse.Namespace) -> PipelineSettings:
    extraction = ExtractionConfig(**{name: getattr(args, name) for name in EXTRACTION_OPTIONS})
    others = [name for name in PipelineSettings.__dataclass_fields__ if name != "extraction"]
    return PipelineSettings(extraction=extraction, **{name: getattr(args, name) for name in others})


def _report(paths: dict[str, Path], labels: str | None) -> None:
    lines = [
        "",
        "Giga-SSL pipeline finished:",
        f"  tile features   {paths['features']}  (thumbnails: {paths['features'] / 'thumbnails'})",
        f"  slide encoder   {paths['model']}  (AutoModel.from_pretrained)",
        f"  embeddings      {paths['embeddings']}  (datasets.load_from_disk, embeddings.npy + ids.npy)",
    ]
    summary = paths["model"] / "training_summary.json"
    if summary.exists():
        losses = [loss for _, loss in json.loads(summary.read_text())["loss_history"]]
        if losses:
            tail = losses[-max(1, len(losses) // 10) :]
            lines.append(
                f"  SimCLR loss     {np.mean(losses[: len(tail)]):.2f} over the first steps -> "
                f"{np.mean(tail):.2f} over the last {len(tail)} of {len(losses)}"
            )
    if labels:
        lines += [
            f"  metrics         {paths['results'] / 'metrics.json'}, metrics.csv  (trained, untrained, mean-pool)",
            f"  plots           {paths['results']}/*.png",
        ]
    print("\n".join(lines))


def _run(parser, args, slides, labels) -> int:
    try:
        paths = run_pipeline(slides, args.out, _settings(args), labels)
    except (ValueError, FileNotFoundError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    _report(paths, labels)
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and the default of every option that has a value."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(
            action, (argparse._StoreTrueAction, argparse._StoreFalseAction)
        ):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="giga-ssl pipeline", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument("slides", nargs="+", help="slide files or folders of slides")
    parser.add_argument("--out", required=True, help="output folder (stages resume inside it)")
    parser.add_argument("--labels", default=None, help="CSV with ID (slide file stem) and label columns")
    _add_settings_arguments(parser, PipelineSettings())
    args = parser.parse_args(argv)
    return _run(parser, args, args.slides, args.labels)


def main_demo(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="giga-ssl demo",
        description=(
            "The whole pipeline on bundled sample data: the real CMU-1-Small-Region.svs H&E crop plus\n"
            "synthetic slides with or without a lesion (a disc of darker tissue; every slide has its own\n"
            "stain, so stain alone does not give the label), with small settings that finish in about a\n"
            "minute on a laptop CPU: window views, a standardised probe, and the trained encoder beside the\n"
            "untrained one and mean pooling in the results table. Rerunning reuses finished stages.\n\n"
            "    giga-ssl demo --out giga_ssl_demo"
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--out", default="giga_ssl_demo", help="output folder")
    parser.add_argument("--slides-per-class", type=int, default=6, help="synthetic slides per class")
    _add_settings_arguments(parser, DEMO_SETTINGS)
    args = parser.parse_args(argv)
    slides, labels = write_demo_slides(Path(args.out) / "slides", args.slides_per_class, args.seed)
    return _run(parser, args, slides, str(labels))


if __name__ == "__main__":
    sys.exit(main())
