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

The settings are the stages' own: extraction's (:class:`ExtractionConfig`) and training's (data, model and
optimisation arguments) with the same flags as ``giga-ssl extract`` and ``giga-ssl train``, plus the embedding
and evaluation options below; the pipeline sets the paths between stages and one ``--seed`` for all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import get_type_hints

import numpy as np

from .contracts import TRAINING_SUMMARY_FILENAME
from .contracts.extraction_folder import AUGMENTED, EXHAUSTIVE, MANIFEST_FILENAME, THUMBNAILS_DIRNAME
from .contracts.training_run import FINAL_DIRNAME
from .evaluation.linear_probe import DEFAULT_FOLDS, EvaluateSettings
from .features.extraction import extract_slides
from .features.extraction_settings import ExtractionConfig
from .files import write_json
from .inference.embed import EmbedSettings
from .settings import SettingsParser, option, run_main
from .training.arguments import DataArguments, ModelArguments, TrainArguments
from .training.checkpointing import latest_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class PipelineOptions:
    """the whole run"""

    device: str = option("auto", "auto, cpu, cuda, ...")
    seed: int = option(0, "seed of every random draw: extraction, training, embedding views and folds")


@dataclass
class PipelineInputs:
    """inputs and outputs"""

    slides: tuple[str, ...] = option((), "slide files or folders of slides", positional=True)
    out: str | None = option(None, "output folder (stages resume inside it)", required=True)
    labels: str | None = option(None, "CSV with ID (slide file stem) and label columns")


# The pipeline's defaults where they are not the stages': the projection head follows --hidden-dim.
PIPELINE_DEFAULTS = {"projection_dims": None}


@dataclass
class PipelineSettings:
    """The settings of every stage, each in its stage's own dataclass."""

    options: PipelineOptions = field(default_factory=PipelineOptions)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=lambda: ModelArguments(**PIPELINE_DEFAULTS))
    training: TrainArguments = field(default_factory=TrainArguments)
    embedding: EmbedSettings = field(default_factory=EmbedSettings)
    evaluation: EvaluateSettings = field(default_factory=EvaluateSettings)

    @classmethod
    def from_parsed(cls, parsed: tuple) -> PipelineSettings:
        """The settings from :func:`pipeline_parser`'s instances, in the order of :data:`STAGE_SETTINGS`."""
        return cls(**{item.name: value for item, value in zip(fields(cls), parsed, strict=True)})


STAGE_SETTINGS = tuple(get_type_hints(PipelineSettings)[item.name] for item in fields(PipelineSettings))

# Set by the pipeline between stages, so not options of its own: the paths, resuming, checkpoint spacing, the
# stages' seeds and devices (one --seed, one --device), the embedding strategy (the training views'), and
# what the pipeline always does (npy embeddings, every baseline, no saved probe).
MANAGED_FIELDS = (
    "features",
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "save_steps",
    "ExtractionConfig.seed",
    "TrainArguments.seed",
    "TrainArguments.allow_changed_settings",
    *(f"EmbedSettings.{name}" for name in ("model", "out", "strategy", "n_tiles", "seed", "device", "npy")),
    *(f"EmbedSettings.{name}" for name in ("trust_remote_code", "overwrite", "allow_encoder_mismatch")),
    *(f"EvaluateSettings.{name}" for name in ("embeddings", "task", "labels", "splits", "seed", "out")),
    *(f"EvaluateSettings.{name}" for name in ("no_plots", "save_probe", "overwrite_probe", "baseline")),
    *(f"EvaluateSettings.{name}" for name in ("export_classifier", "classifier_encoder")),
    *(f"EvaluateSettings.{name}" for name in ("mil_epochs", "mil_validation", "mil_device")),
)
# Settings that do not change what a stage makes, left out of its fingerprint.
UNFINGERPRINTED = {"logging_steps", "report_to", "save_total_limit", "max_views_per_batch"}
# The training settings the previous release fingerprinted (in this order), kept so that its folders are reused.
TRAIN_FINGERPRINT = ("max_steps", "batch_size", "hidden_dim", "n_tiles", "learning_rate", "view_sampling")


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


def _stage_settings(settings: PipelineSettings, paths: dict[str, Path]) -> PipelineSettings:
    """The stages' settings with what the pipeline manages filled in."""
    seed, training = settings.options.seed, settings.training
    return replace(
        settings,
        extraction=replace(settings.extraction, seed=seed),
        data=replace(settings.data, features=str(paths["features"] / AUGMENTED)),
        training=replace(
            training,
            output_dir=str(paths["model"].parent),
            seed=seed,
            save_steps=max(1, training.max_steps // 4),
            overwrite_output_dir=False,
        ),
        embedding=replace(
            settings.embedding,
            model=str(paths["model"]),
            features=str(paths["features"]),
            out=str(paths["embeddings"]),
            strategy="random" if settings.data.view_sampling == "random" else "window",
            seed=seed,
            device=settings.options.device,
            npy=True,
        ),
    )


def _changed(before: tuple[str, ...], *settings) -> list[dict]:
    """The settings that change what a stage makes, beyond those its fingerprint held before, that are not at
    their defaults (``[]`` when there are none, so that the fingerprint stays the previous release's)."""
    changed = {}
    for instance in settings:
        defaults = asdict(type(instance)())
        for name, value in asdict(instance).items():
            default = PIPELINE_DEFAULTS.get(name, defaults[name])
            left_out = _managed(type(instance), name) or name in (*before, *UNFINGERPRINTED, "seed")
            if not left_out and value != default:
                changed[name] = value
    return [changed] if changed else []


def _managed(cls: type, name: str) -> bool:
    return name in MANAGED_FIELDS or f"{cls.__name__}.{name}" in MANAGED_FIELDS


def _fingerprints(
    state: PipelineState, settings: PipelineSettings, extracted: list, labels: str | None
) -> dict:
    """Per stage, a fingerprint of its inputs and the settings that change what it makes (paths, resuming and
    logging left out)."""
    seed, data, training = settings.options.seed, settings.data, settings.training
    embedding, evaluation = settings.embedding, settings.evaluation
    fingerprints = {"features": state.fingerprint(extracted, asdict(settings.extraction))}
    trained = {**asdict(data), **asdict(settings.model), **asdict(training)}
    fingerprints["train"] = state.fingerprint(
        fingerprints["features"], [trained[name] for name in TRAIN_FINGERPRINT], seed,
        *_changed(TRAIN_FINGERPRINT, data, settings.model, training),
    )  # fmt: skip
    fingerprints["embed"] = state.fingerprint(
        fingerprints["train"], embedding.n_views, seed, *_changed(("n_views",), embedding)
    )
    if labels is not None:
        fingerprints["evaluate"] = state.fingerprint(
            fingerprints["embed"], Path(labels).read_text(), _folds(settings), seed, evaluation.standardize,
            *_changed(("folds", "standardize"), evaluation),
        )  # fmt: skip
    return fingerprints


def _folds(settings: PipelineSettings) -> int:
    return settings.evaluation.folds or DEFAULT_FOLDS


def _extract(slides: list, paths: dict[str, Path], settings: PipelineSettings) -> list:
    """Extraction (resumable by itself); returns the (slide_id, n_tiles) of the extracted slides."""
    logger.info("stage extract: %d slide path(s) -> %s", len(slides), paths["features"])
    # Under a multi-process launcher each process extracts its share; all go on once the Datasets exist.
    summary = extract_slides(
        slides,
        paths["features"],
        settings.extraction,
        device=settings.options.device,
        thumbnails=True,
        wait_for_shares=True,
    )
    if summary.failed:
        logger.warning("%d slide(s) failed and are left out (see the manifest)", len(summary.failed))
    if not summary.ok and not summary.skipped:
        raise ValueError(f"no slide produced tiles; see {paths['features'] / MANIFEST_FILENAME}")
    manifest = [json.loads(line) for line in (paths["features"] / MANIFEST_FILENAME).read_text().splitlines()]
    return sorted((r["slide_id"], r["n_tiles"]) for r in manifest if r["status"] == "ok")


def _train(
    paths: dict[str, Path], settings: PipelineSettings, state: PipelineState, fingerprint: str
) -> None:
    from .training.train import train

    status = state.status("train", fingerprint, paths["model"].parent)
    if status == "done":
        return
    if status == "redo":
        shutil.rmtree(paths["model"].parent, ignore_errors=True)
    state.record("train", fingerprint, complete=False)
    # Decided now, after a redo has removed the earlier run: an unfinished run of the same settings resumes.
    resume = "latest" if latest_checkpoint(paths["model"].parent) else None
    logger.info("stage train: %d steps -> %s", settings.training.max_steps, paths["model"])
    train(settings.data, settings.model, replace(settings.training, resume_from_checkpoint=resume))
    state.record("train", fingerprint, complete=True)


def _embed(
    paths: dict[str, Path], settings: PipelineSettings, state: PipelineState, fingerprint: str
) -> None:
    from .inference.embed import embed_with

    if state.status("embed", fingerprint, paths["embeddings"]) == "done":
        return
    embedding = settings.embedding
    logger.info("stage embed: %d views per slide -> %s", embedding.n_views, paths["embeddings"])
    embed_with(embedding)
    state.record("embed", fingerprint, complete=True)


def _evaluate(
    paths: dict[str, Path], settings: PipelineSettings, labels: str, state: PipelineState, fingerprint: str
) -> None:
    from .evaluation import evaluate_embeddings, format_table, write_outputs

    if state.status("evaluate", fingerprint, paths["results"]) == "done":
        return
    evaluation, folds = settings.evaluation, _folds(settings)
    shutil.rmtree(paths["results"], ignore_errors=True)
    logger.info("stage evaluate: %d-fold linear probe -> %s", folds, paths["results"])
    results = [
        result
        for name, embeddings in _embeddings_and_baselines(paths, settings).items()
        for result in evaluate_embeddings(
            embeddings, labels, folds=folds, train_sizes=evaluation.train_sizes, seed=settings.options.seed,
            standardize=evaluation.standardize, C=evaluation.C, embedding=name,
        )
    ]  # fmt: skip
    config = {"labels": str(labels), "folds": folds, "standardize": evaluation.standardize}
    write_outputs(results, paths["results"], config=config)
    state.record("evaluate", fingerprint, complete=True)
    logger.info("linear probe:\n%s", format_table(results))


def run_pipeline(
    slides: list[str | Path], out: str | Path, settings: PipelineSettings, labels: str | None = None
) -> dict[str, Path]:
    """Run (or finish) every stage; returns the output paths by stage."""
    out = Path(out)
    paths = {
        "features": out / "features",
        "model": out / "model" / FINAL_DIRNAME,
        "embeddings": out / "embeddings",
        "results": out / "results",
    }
    settings = _stage_settings(settings, paths)
    extracted = _extract(slides, paths, settings)
    state = PipelineState(out)
    fingerprints = _fingerprints(state, settings, extracted, labels)
    _train(paths, settings, state, fingerprints["train"])
    _embed(paths, settings, state, fingerprints["embed"])
    if labels is None:
        logger.info("stage evaluate: no --labels given, skipped")
    else:
        _evaluate(paths, settings, labels, state, fingerprints["evaluate"])
    return paths


def _embeddings_and_baselines(paths: dict[str, Path], settings: PipelineSettings) -> dict:
    """The trained encoder's embeddings, the same encoder untrained, and mean pooling: ``{name: (ids, vectors)}``."""
    import torch

    from .contracts.slide_embeddings import load_embeddings
    from .contracts.tile_features import load_tile_dataset, resolve_tile_dataset_dir
    from .evaluation.baselines import mean_pool_baseline
    from .inference.embed import embed_tile_dataset
    from .models.gigassl import GigaSSLConfig, GigaSSLModel

    exhaustive = load_tile_dataset(resolve_tile_dataset_dir(paths["features"], EXHAUSTIVE))
    torch.manual_seed(settings.options.seed)
    untrained = GigaSSLModel(GigaSSLConfig.from_pretrained(paths["model"])).eval()
    return {
        "trained": load_embeddings(str(paths["embeddings"])),
        "untrained": embed_tile_dataset(
            untrained,
            exhaustive,
            settings.embedding.strategy,
            settings.embedding.n_views,
            seed=settings.options.seed,
            progress=False,
        ),
        "mean-pool": mean_pool_baseline(str(paths["features"])),
    }


# ------------------------------------------------------------------------------------------------- CLI
def pipeline_parser(
    inputs: type, prog: str, description: str, defaults: dict | None = None
) -> SettingsParser:
    """The command line of ``giga-ssl pipeline`` (``inputs`` = :class:`PipelineInputs`) and ``giga-ssl demo``:
    the stages' settings dataclasses, less what the pipeline manages."""
    return SettingsParser(
        inputs, *STAGE_SETTINGS, prog=prog, description=description, exclude=MANAGED_FIELDS,
        defaults={**PIPELINE_DEFAULTS, **(defaults or {})},
    )  # fmt: skip


def _report(paths: dict[str, Path], labels: str | None) -> None:
    lines = [
        "",
        "Giga-SSL pipeline finished:",
        f"  tile features   {paths['features']}  (thumbnails: {paths['features'] / THUMBNAILS_DIRNAME})",
        f"  slide encoder   {paths['model']}  (AutoModel.from_pretrained)",
        f"  embeddings      {paths['embeddings']}  (datasets.load_from_disk, embeddings.npy + ids.npy)",
    ]
    summary = paths["model"] / TRAINING_SUMMARY_FILENAME
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


def run_and_report(slides: list, out: str, labels: str | None, settings: PipelineSettings) -> int:
    """Run the pipeline, then print where everything is."""
    paths = run_pipeline(slides, out, settings, labels)
    _report(paths, labels)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = pipeline_parser(PipelineInputs, prog="giga-ssl pipeline", description=__doc__)

    def run(inputs: PipelineInputs, *stage_settings) -> int:
        if not inputs.slides:
            raise ValueError("give the slides: files or folders of slides")
        settings = PipelineSettings.from_parsed(stage_settings)
        return run_and_report(list(inputs.slides), inputs.out, inputs.labels, settings)

    return run_main(parser, run, argv)
