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

The settings are the stages' own, each stage's flags under its name (``--extract.encoder``,
``--train.max-steps``, ``--embed.n-views``, ``--evaluate.folds``), less the fields the pipeline sets itself
(marked ``managed``: the paths between stages, resuming, the seeds and devices: one ``--seed`` and one
``--device`` for all). The resolved settings go to ``OUT/pipeline_config.json``, which ``--config`` reloads.
A stage's fingerprint holds its settings less those marked ``affects_results=False`` (logging, checkpoint
spacing).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import get_type_hints

import numpy as np

from .contracts import PIPELINE_CONFIG_FILENAME, PIPELINE_STATE_FILENAME, TRAINING_SUMMARY_FILENAME
from .contracts.extraction_folder import AUGMENTED, EXHAUSTIVE, MANIFEST_FILENAME, THUMBNAILS_DIRNAME
from .contracts.training_run import FINAL_DIRNAME
from .evaluation.evaluate_settings import DEFAULT_FOLDS, EvaluateSettings
from .features.extraction import extract_slides
from .features.extraction_settings import ExtractionConfig
from .files import write_json
from .inference.embed import EmbedSettings
from .settings import SettingsParser, option, run_main, settings_values
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


@dataclass
class PipelineSettings:
    """The settings of every stage, each in its stage's own dataclass."""

    options: PipelineOptions = field(default_factory=PipelineOptions)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    training: TrainArguments = field(default_factory=TrainArguments)
    embedding: EmbedSettings = field(default_factory=EmbedSettings)
    evaluation: EvaluateSettings = field(default_factory=EvaluateSettings)

    @classmethod
    def from_parsed(cls, parsed: tuple) -> PipelineSettings:
        """The settings from :func:`pipeline_parser`'s instances (less the inputs), in the order of the fields."""
        return cls(**{item.name: value for item, value in zip(fields(cls), parsed, strict=True)})

    def stages(self) -> dict[str, tuple]:
        """Each stage's settings, by the namespace of its flags (``--train.max-steps``)."""
        return {name: tuple(getattr(self, part) for part in parts) for name, parts in STAGE_PARTS.items()}

    def resolved_config(self) -> dict:
        """The settings as a ``--config`` file of ``giga-ssl pipeline`` holds them (the stages' fields that the
        pipeline does not set itself, a mapping per stage)."""
        stages = {name: settings_values(*parts, composed=True) for name, parts in self.stages().items()}
        return {**settings_values(self.options), **stages}


# The namespace of each stage's flags and the PipelineSettings fields that hold its settings.
STAGE_PARTS = {
    "extract": ("extraction",),
    "train": ("data", "model", "training"),
    "embed": ("embedding",),
    "evaluate": ("evaluation",),
}
_FIELD_TYPES = get_type_hints(PipelineSettings)
STAGE_SETTINGS = {name: tuple(_FIELD_TYPES[part] for part in parts) for name, parts in STAGE_PARTS.items()}


class PipelineState:
    """Per stage: the fingerprint of its inputs and settings, and whether its output is complete."""

    def __init__(self, out: Path):
        self.path = out / PIPELINE_STATE_FILENAME
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
    """The stages' settings with what the pipeline manages (their fields marked ``managed``) filled in."""
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
            tile_sampling=_embedding_tile_sampling(settings),
            seed=seed,
            device=settings.options.device,
            npy=True,
            overwrite=True,  # the pipeline's own folder, redone when its fingerprint changes
        ),
        evaluation=replace(settings.evaluation, folds=settings.evaluation.folds or DEFAULT_FOLDS),
    )


def _embedding_tile_sampling(settings: PipelineSettings) -> str:
    """Views drawn alike in training and embedding: a window-pair model embeds with windows; a max- or top-pooling
    one in one pass over each whole slide (the maximum over a view's sites is not the slide's)."""
    if settings.model.slide_pooling not in (None, "mean"):  # None: the config's default, the mean
        return "all"
    return "window" if settings.data.tile_sampling == "window-pair" else settings.data.tile_sampling


def _fingerprints(
    state: PipelineState, settings: PipelineSettings, extracted: list, labels: str | None
) -> dict:
    """Per stage, a fingerprint of its inputs (the previous stage's fingerprint, the slides, the labels), the
    seed and its settings that change what it makes: the fields under its namespace less those marked
    ``affects_results=False``."""
    seed = settings.options.seed
    recipes = {
        name: settings_values(*parts, composed=True, results_only=True)
        for name, parts in settings.stages().items()
    }
    fingerprints = {"features": state.fingerprint(extracted, seed, recipes["extract"])}
    fingerprints["train"] = state.fingerprint(fingerprints["features"], seed, recipes["train"])
    fingerprints["embed"] = state.fingerprint(fingerprints["train"], seed, recipes["embed"])
    if labels is not None:
        fingerprints["evaluate"] = state.fingerprint(
            fingerprints["embed"], Path(labels).read_text(), seed, recipes["evaluate"]
        )
    return fingerprints


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
    from .inference.embed import embed_to_folder

    if state.status("embed", fingerprint, paths["embeddings"]) == "done":
        return
    embedding = settings.embedding
    logger.info("stage embed: %d views per slide -> %s", embedding.n_views, paths["embeddings"])
    embed_to_folder(embedding)
    state.record("embed", fingerprint, complete=True)


def _evaluate(
    paths: dict[str, Path], settings: PipelineSettings, labels: str, state: PipelineState, fingerprint: str
) -> None:
    from .contracts import read_metadata
    from .evaluation import evaluate_embeddings, format_table, write_outputs
    from .evaluation.evaluate_command import probe_blocks

    if state.status("evaluate", fingerprint, paths["results"]) == "done":
        return
    evaluation, folds = settings.evaluation, settings.evaluation.folds
    # Embeddings of several blocks (hybrid, several top-site fractions): the probe chooses one per split.
    blocks = probe_blocks(evaluation, read_metadata(paths["embeddings"]))
    shutil.rmtree(paths["results"], ignore_errors=True)
    logger.info("stage evaluate: %d-fold linear probe -> %s", folds, paths["results"])
    results = [
        result
        for name, embeddings in _embeddings_and_baselines(paths, settings).items()
        for result in evaluate_embeddings(
            embeddings, labels, folds=folds, train_sizes=evaluation.train_sizes, seed=settings.options.seed,
            standardize=evaluation.standardize, C=evaluation.C, embedding=name,
            blocks=blocks if name == "trained" else None,
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
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PIPELINE_CONFIG_FILENAME, settings.resolved_config(), sort_keys=False)
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
            settings.embedding.tile_sampling,
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
    the run's options, then each stage's settings under its namespace (``--train.max-steps``), less what the
    pipeline manages; a ``--config`` file may give them all (``OUT/pipeline_config.json`` of an earlier run)."""
    return SettingsParser(
        inputs, PipelineOptions, nested=STAGE_SETTINGS, config_file=True, prog=prog, description=description,
        defaults=defaults,
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

    def run(inputs: PipelineInputs, *settings_parts) -> int:
        if not inputs.slides:
            raise ValueError("give the slides: files or folders of slides")
        settings = PipelineSettings.from_parsed(settings_parts)
        return run_and_report(list(inputs.slides), inputs.out, inputs.labels, settings)

    return run_main(parser, run, argv)
