"""Model and dataset cards (README.md with YAML metadata) for Giga-SSL models and slide embeddings.

The cards' text lives in ``templates/`` (package data, ``${name}`` fields of :class:`string.Template`); the
functions here compute the fields: the YAML metadata, the tables and the values of the model or dataset.

``library_name: transformers``: the models load with ``transformers.AutoModel`` (remote code with
``trust_remote_code=True``, or this package's registered classes), which is what the Hub's "Use this model"
snippet and download counting (on ``config.json``) key on; ``giga-ssl-hf`` is not a Hub-known library.
"""

from __future__ import annotations

import json
import string
from importlib import resources
from pathlib import PurePath
from typing import TYPE_CHECKING

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from giga_ssl_hf.contracts import (
    DEFAULT_LICENSE,
    METADATA_FILENAME,
    NPY_EMBEDDINGS,
    NPY_IDS,
    TRAINING_SUMMARY_FILENAME,
)
from giga_ssl_hf.models.gigassl import GigaSSLConfig

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

MODEL_TAGS = ["pathology", "whole-slide-image", "self-supervised", "multiple-instance-learning", "giga-ssl"]
DATASET_TAGS = ["pathology", "whole-slide-image", "slide-embeddings", "giga-ssl"]

# Reported by the original authors (successor README): 10-fold CV AUC, SparseConvMIL on MoCo tile features.
REFERENCE_RESULTS = (
    ("Lung: LUAD vs LUSC", "lung", 0.960),
    ("Kidney: clear cell / papillary / chromophobe RCC", "kidney", 0.983),
    ("Breast: invasive ductal vs lobular", "brca", 0.924),
    ("Breast: TNBC vs luminal", "tnbc", 0.933),
    ("Breast: homologous recombination deficiency", "thrd / mhrd", 0.793),
)

PAPER_URL = (
    "https://openaccess.thecvf.com/content/CVPR2023W/CVMI/papers/"
    "Lazard_Giga-SSL_Self-Supervised_Learning_for_Gigapixel_Images_CVPRW_2023_paper.pdf"
)
TEMPLATES = resources.files(f"{__package__}.templates")

_SHORT_LIST = 8
# Metadata keys that the dataset card's first rows show; the other top-level scalars follow them.
_DATASET_KEYS = {
    "cohort",
    "model_id",
    "model",
    "model_revision",
    "revision",
    "tile_sampling",
    "n_views",
    "n_tiles",
    "seed",
}


def fill_template(template: str | Traversable, **fields: object) -> str:
    """A card template (a file of ``templates/``, or another file) with its ``${name}`` fields filled.

    ``citation`` (the paper's BibTeX) and ``paper_url`` are always available; a field the template names
    but the caller does not give is a KeyError, never a silently empty hole in a published card.
    """
    path = TEMPLATES / template if isinstance(template, str) else template
    common = {
        "citation": (TEMPLATES / "citation.bib").read_text(encoding="utf-8").strip(),
        "paper_url": PAPER_URL,
    }
    return string.Template(path.read_text(encoding="utf-8")).substitute(common, **fields)


def _without_local_paths(value: object) -> object:
    """A JSON record with absolute paths of the machine that made it cut to their last component.

    Training summaries and embedding metadata record where their inputs lay; a public card should not.
    """
    if isinstance(value, dict):
        return {key: _without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(item) for item in value]
    if isinstance(value, str) and PurePath(value).is_absolute():
        return f"(local) {PurePath(value).name}"
    return value


def _table(rows: list[tuple[str, object]], header: tuple[str, str] = ("Field", "Value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _summary_rows(mapping: dict, skip: set[str] = frozenset()) -> list[tuple[str, object]]:
    """(readable name, value) rows of a JSON record's top-level scalars and short lists.

    Long lists (a loss history) stay in the JSON file; nested records go to :func:`_details`.
    """
    return [
        (key.replace("_", " ").capitalize(), value)
        for key, value in mapping.items()
        if key not in skip
        and value != ""
        and (
            isinstance(value, (str, int, float, bool))
            or (
                isinstance(value, list)
                and len(value) <= _SHORT_LIST
                and not any(isinstance(v, (dict, list)) for v in value)
            )
        )
    ]


def _details(mapping: dict, title: str) -> str:
    """The nested records of a JSON record (run arguments, original config) as a collapsed JSON block."""
    nested = {key: value for key, value in mapping.items() if isinstance(value, dict) and value}
    if not nested:
        return ""
    return fill_template("details.md", title=title, json=json.dumps(nested, indent=2, default=str))


def _encoder_rows(config: GigaSSLConfig) -> list[tuple[str, object]]:
    pooling = {
        "mean": "mean",
        "max": "channel maximum",
        "top": f"per channel the mean of the largest {config.top_site_fraction:.0%}",
    }[config.slide_pooling]
    if config.encoder_type == "sparse_conv":
        encoder = f"SparseConvMIL: ResNet18 `layer4` as a sparse CNN over the tile grid, {pooling} over sites"
        if config.fixed_grid_cell_size:
            grid = f"fixed: level-0 coordinates / {config.grid_cell_size} px (the original's convention)"
        else:
            grid = (
                f"`patch_size_level0` per slide (default {config.grid_cell_size} px): neighbours 1 cell apart"
            )
        map_size = {
            "per_slide": "per slide (an embedding does not depend on its batch mates)",
            "batch": "over the whole batch (the original's behaviour; same as per slide for a batch of one)",
        }[config.grid_size_mode]
        rows = [("Slide encoder", encoder), ("Grid cell", grid), ("Sparse map size", map_size)]
    else:
        rows = [
            (
                "Slide encoder",
                f"residual MLP on each tile ({config.mlp_num_blocks} blocks), {pooling} over tiles",
            )
        ]
    return [
        *rows,
        ("Input tile features", config.feature_dim),
        ("Slide embedding", config.hidden_dim),
        ("Tiles per view", config.n_tiles),
    ]


def _tile_encoder_rows(record: dict | None) -> list[tuple[str, object]]:
    """The tile encoder the model was trained on (``config.tile_encoder``), as card rows."""
    if not record:
        return [("Tile encoder", "not recorded: use the tile features the model's publisher names")]
    source = record.get("source")
    rows = [("Tile encoder", record.get("name")), ("Encoder weights", source if source else "unknown")]
    if record.get("revision"):
        rows.append(("Encoder revision", record["revision"]))
    if record.get("weights_sha256"):
        rows.append(("Encoder weights sha256", record["weights_sha256"]))
    elif record.get("weights") and record["weights"] != "pretrained":
        rows.append(("Encoder weights", record["weights"]))
    rows += [
        ("Tile features", f"{record.get('feature_dim')}-d, {record.get('pooling') or 'pooled'}"),
        ("Tiles", f"{record.get('input_size')} px at {record.get('mpp')} µm/px"),
        ("Input normalisation", record.get("normalisation") or "unknown"),
    ]
    return rows


def _training_section(config: GigaSSLConfig, summary: dict) -> str:
    """The model card's "How it was trained": the shipped training summary, or the method in one paragraph."""
    if summary:
        return (
            f"From `{TRAINING_SUMMARY_FILENAME}` in this repository:\n\n"
            + _table(_summary_rows(summary))
            + _details(summary, "Run settings")
        )
    return (
        "No training summary was shipped with this model. Giga-SSL trains the slide encoder with SimCLR: "
        f"two views per slide, each {config.n_tiles} tiles drawn from one shared tile augmentation and "
        f"moved by a random rotation, flips and scaling; NT-Xent loss at temperature {config.temperature}."
    )


def model_card(
    config: GigaSSLConfig,
    repo_id: str,
    training_summary: dict | None = None,
    license: str = DEFAULT_LICENSE,
) -> ModelCard:
    """The README.md of a Giga-SSL model repo: metadata, architecture, training, usage, results, citation."""
    data = ModelCardData(
        library_name="transformers", license=license, pipeline_tag="feature-extraction", tags=MODEL_TAGS
    )
    coords_note = "# level-0 pixel (x, y) of each tile's top-left corner"
    if config.fixed_grid_cell_size:
        coords_note += f"; cells of {config.grid_cell_size} px"
    results = [(f"{task} (`{table}`)", f"{auc:.3f}") for task, table, auc in REFERENCE_RESULTS]
    content = fill_template(
        "model_card.md",
        card_data=data.to_yaml(),
        name=repo_id.split("/")[-1],
        repo_id=repo_id,
        hidden_dim=config.hidden_dim,
        n_tiles=config.n_tiles,
        encoder_table=_table(_encoder_rows(config)),
        tile_encoder_table=_table(_tile_encoder_rows(getattr(config, "tile_encoder", None))),
        trained=_training_section(config, _without_local_paths(training_summary or {})),
        shape=f"(1, {config.n_tiles}, {config.feature_dim})",
        coords_note=coords_note,
        # Without a fixed cell, the tile side in level-0 px makes adjacent tiles one cell apart.
        patch_arg="" if config.fixed_grid_cell_size else ", patch_size_level0=448",
        results=_table(results, ("Task", "AUC")),
    )
    return ModelCard(content)


def _dataset_rows(metadata: dict, cohort: str, n_slides: int, dim: int) -> list[tuple[str, object]]:
    """The dataset card's table: provenance first, then the metadata's other top-level scalars."""
    model_id = metadata.get("model_id") or metadata.get("model") or "unknown"
    rows = [
        ("Cohort", cohort),
        ("Model", f"[{model_id}](https://huggingface.co/{model_id})" if _is_repo_id(model_id) else model_id),
        ("Model revision", metadata.get("model_revision") or metadata.get("revision") or "unknown"),
        ("Tile sampling", metadata.get("tile_sampling", "unknown")),
        ("Views per slide", metadata.get("n_views", "unknown")),
        ("Tiles per view", metadata.get("n_tiles", "unknown")),
        ("Seed", metadata.get("seed", "unknown")),
        ("Number of slides", n_slides),
        ("Embedding dimension", dim),
    ]
    return rows + _summary_rows(metadata, skip=_DATASET_KEYS)


def dataset_card(
    metadata: dict,
    repo_id: str,
    n_slides: int,
    dim: int,
    cohort: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> DatasetCard:
    """The README.md of a slide-embeddings dataset repo: provenance, shape and how to load it."""
    metadata = _without_local_paths(metadata)
    cohort = cohort or metadata.get("cohort") or "unspecified cohort"
    data = DatasetCardData(
        license=license,
        pretty_name=f"Giga-SSL slide embeddings: {cohort}",
        tags=DATASET_TAGS,
        task_categories=["feature-extraction"],
        size_categories=[size_category(n_slides)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    content = fill_template(
        "dataset_card.md",
        card_data=data.to_yaml(),
        name=repo_id.split("/")[-1],
        repo_id=repo_id,
        cohort=cohort,
        n_slides=n_slides,
        dim=dim,
        table=_table(_dataset_rows(metadata, cohort, n_slides, dim)),
        metadata_file=METADATA_FILENAME,
        metadata_json=json.dumps(metadata, indent=2, sort_keys=True),
        npy_embeddings=NPY_EMBEDDINGS,
        npy_ids=NPY_IDS,
    )
    return DatasetCard(content)


def _is_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value of a dataset of ``n`` rows."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def classifier_card(
    config: GigaSSLConfig, name: str, summary: dict, license: str = DEFAULT_LICENSE
) -> ModelCard:
    """The README.md of an exported slide classifier, from its ``classifier_summary.json`` (``probe``: the saved
    probe's description; ``results``: the evaluation's rows of the embeddings): task, classes, training slides
    and AUCs."""
    data = ModelCardData(library_name="transformers", license=license, tags=MODEL_TAGS)
    info = _without_local_paths(summary.get("probe") or {})
    probe_rows = [
        ("Task", info.get("task")),
        ("Training slides", info.get("n_train")),
        *((f"Slides of class {label}", count) for label, count in (info.get("class_counts") or {}).items()),
        ("Classifier", ", ".join(f"{k}={v}" for k, v in (info.get("classifier") or {}).items())),
        ("Embeddings", (info.get("embeddings") or {}).get("source")),
    ]
    rows = []
    for r in summary.get("results") or []:
        n_train = sum(split["n_train"] for split in r["splits"]) / len(r["splits"])
        rows.append(
            (
                f"{r['split_set']}, {r['train_size']} ({n_train:.0f} slides)",
                f"{r['auc_mean']:.3f} ± {r['auc_std']:.3f}",
            )
        )
    content = fill_template(
        "classifier_card.md",
        card_data=data.to_yaml(),
        name=name,
        task=info.get("task"),
        classes=", ".join(config.id2label[i] for i in sorted(config.id2label)),
        encoder_table=_table(_encoder_rows(config)),
        tile_encoder_table=_table(_tile_encoder_rows(getattr(config, "tile_encoder", None))),
        probe_table=_table(probe_rows),
        results=_table(rows, ("Splits, training size", "AUC")) if rows else "No evaluation was recorded.",
        feature_dim=config.feature_dim,
        n_train=info.get("n_train"),
    )
    return ModelCard(content)
