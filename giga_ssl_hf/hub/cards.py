"""Model and dataset cards (README.md with YAML metadata) for Giga-SSL models and slide embeddings.

``library_name: transformers``: the models load with ``transformers.AutoModel`` (remote code with
``trust_remote_code=True``, or this package's registered classes), which is what the Hub's "Use this model"
snippet and download counting (on ``config.json``) key on; ``giga-ssl-hf`` is not a Hub-known library.
"""

from __future__ import annotations

import json
from pathlib import PurePath

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from giga_ssl_hf.contracts import DEFAULT_LICENSE
from giga_ssl_hf.models.gigassl import GigaSSLConfig

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

CITATION = """@inproceedings{lazard2023gigassl,
  title     = {Giga-SSL: Self-Supervised Learning for Gigapixel Images},
  author    = {Lazard, Tristan and Lerousseau, Marvin and Decenci{\\`e}re, Etienne and Walter, Thomas},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR) Workshops},
  year      = {2023}
}"""

_SHORT_LIST = 8

PAPER_URL = (
    "https://openaccess.thecvf.com/content/CVPR2023W/CVMI/papers/"
    "Lazard_Giga-SSL_Self-Supervised_Learning_for_Gigapixel_Images_CVPRW_2023_paper.pdf"
)


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
    return f"""

<details>
<summary>{title}</summary>

```json
{json.dumps(nested, indent=2, default=str)}
```

</details>
"""


def _encoder_rows(config: GigaSSLConfig) -> list[tuple[str, object]]:
    if config.encoder_type == "sparse_conv":
        encoder = "SparseConvMIL: ResNet18 `layer4` as a sparse CNN over the tile grid, mean over sites"
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
            ("Slide encoder", f"residual MLP on each tile ({config.mlp_num_blocks} blocks), mean over tiles")
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


INTENDED_USE = """## Intended use and limitations

- **Intended use**: research. A frozen slide-level feature extractor: slide embeddings for linear probes,
  retrieval, clustering or as inputs to other slide-level models, on H&E whole-slide images like those it
  was pretrained on.
- **Not for clinical use**: it has not been validated for diagnosis, prognosis or treatment decisions, and
  its embeddings carry no calibrated meaning by themselves.
- **Tile features must match**: the slide encoder only understands features of the tile encoder listed
  above, computed on tiles of the same size and resolution with the same normalisation. `giga-ssl embed`
  refuses features recorded with another encoder; features from other tools must come from the same model.
- **Domain shift**: stains, scanners, tissue types and magnifications far from the pretraining cohort can
  degrade the embeddings; check a linear probe on your own labelled slides before relying on them.
- **Licences**: the tile encoder's own licence (some pathology foundation models are gated and
  non-commercial) applies to any use of features computed with it."""


def model_card(
    config: GigaSSLConfig,
    repo_id: str,
    training_summary: dict | None = None,
    license: str = DEFAULT_LICENSE,
) -> ModelCard:
    """The README.md of a Giga-SSL model repo: metadata, architecture, training, usage, results, citation."""
    data = ModelCardData(
        library_name="transformers",
        license=license,
        pipeline_tag="feature-extraction",
        tags=MODEL_TAGS,
    )
    summary = _without_local_paths(training_summary or {})
    if summary:
        trained = (
            "From `training_summary.json` in this repository:\n\n"
            + _table(_summary_rows(summary))
            + _details(summary, "Run settings")
        )
    else:
        trained = (
            "No training summary was shipped with this model. Giga-SSL trains the slide encoder with SimCLR: "
            f"two views per slide, each {config.n_tiles} tiles drawn from one shared tile augmentation and "
            f"moved by a random rotation, flips and scaling; NT-Xent loss at temperature "
            f"{config.temperature}."
        )
    shape = f"(1, {config.n_tiles}, {config.feature_dim})"
    coords_note = (
        f"# level-0 pixel (x, y) of each tile's top-left corner; cells of {config.grid_cell_size} px"
        if config.fixed_grid_cell_size
        else "# level-0 pixel (x, y) of each tile's top-left corner"
    )
    # Without a fixed cell, the tile side in level-0 px makes adjacent tiles one cell apart.
    patch_arg = "" if config.fixed_grid_cell_size else ", patch_size_level0=448"
    results = _table(
        [(f"{task} (`{table}`)", f"{auc:.3f}") for task, table, auc in REFERENCE_RESULTS], ("Task", "AUC")
    )
    content = f"""---
{data.to_yaml()}
---

# {repo_id.split("/")[-1]}

A [Giga-SSL][paper] slide encoder (Lazard et al., CVPR Workshops 2023): a bag of tile features of a
whole-slide image, with the tiles' positions on the slide, in; one {config.hidden_dim}-d slide embedding out.
It was pretrained without labels (SimCLR at the slide level) and is meant as a frozen feature extractor
for linear probes and other slide-level models.

## Model

{_table(_encoder_rows(config))}

### Tile encoder

{_table(_tile_encoder_rows(getattr(config, "tile_encoder", None)))}

The SimCLR projection head is used only by the pretraining loss and is not part of this repository.

## How it was trained

{trained}

## How to use

The tile features must come from the tile encoder this model was trained on (see above), computed on the
same kind of tiles.

```python
import torch
from transformers import AutoModel

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
tile_features = torch.randn{shape}  # from the tile encoder
tile_coords = torch.randint(0, 20_000, (1, {config.n_tiles}, 2))  {coords_note}
with torch.no_grad():
    embedding = model(tile_features=tile_features, tile_coords=tile_coords{patch_arg}).slide_embedding
```

With `pip install giga-ssl-hf`, `import giga_ssl_hf` registers the model classes and `trust_remote_code` is
not needed; `giga-ssl embed` computes whole-cohort embeddings as in the paper (mean over many views, then
L2 normalisation).

**Tile-level outputs.** `model(..., output_tile_embeddings=True).tile_embeddings` has shape
`(batch, n_tiles, {config.hidden_dim})`: for each tile, the embedding of the output site its grid cell falls in
after `layer4`'s stride 2 (tiles sharing a site share a row; for the `mlp` encoder, the tile's own row before the
mean), zeros for padded tiles. The slide embedding is unchanged: the mean over the output sites. Scored by a
linear probe, they give per-tile heatmaps (`giga-ssl heatmap`).

{INTENDED_USE}

## Reference results

Linear-probe AUC on TCGA reported by the original authors for their released SparseConvMIL model on MoCo
tile features (10-fold cross-validation; tables and splits of trislaz/gigassl). They are the paper's
numbers, not a measurement of this checkpoint: check yours with `giga-ssl evaluate`.

{results}

## Citation

```bibtex
{CITATION}
```

[paper]: {PAPER_URL}
"""
    return ModelCard(content)


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
    model_id = metadata.get("model_id") or metadata.get("model") or "unknown"
    revision = metadata.get("model_revision") or metadata.get("revision") or "unknown"
    data = DatasetCardData(
        license=license,
        pretty_name=f"Giga-SSL slide embeddings: {cohort}",
        tags=DATASET_TAGS,
        task_categories=["feature-extraction"],
        size_categories=[_size_category(n_slides)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    rows = [
        ("Cohort", cohort),
        (
            "Model",
            f"[{model_id}](https://huggingface.co/{model_id})" if _is_repo_id(model_id) else model_id,
        ),
        ("Model revision", revision),
        ("Strategy", metadata.get("strategy", "unknown")),
        ("Views per slide", metadata.get("n_views", "unknown")),
        ("Tiles per view", metadata.get("n_tiles", "unknown")),
        ("Seed", metadata.get("seed", "unknown")),
        ("Number of slides", n_slides),
        ("Embedding dimension", dim),
    ]
    shown = {
        "cohort",
        "model_id",
        "model",
        "model_revision",
        "revision",
        "strategy",
        "n_views",
        "n_tiles",
        "seed",
    }
    rows += _summary_rows(metadata, skip=shown)
    name = repo_id.split("/")[-1]
    content = f"""---
{data.to_yaml()}
---

# {name}

Slide embeddings of the {cohort} cohort computed with a [Giga-SSL][paper] slide encoder: one
{dim}-d float32 vector per whole-slide image, {n_slides} slides.

{_table(rows)}

## Columns

- `slide_id` (string): the slide's file stem.
- `embedding` (float32, length {dim}): the slide embedding.

The full provenance record is `giga_ssl_metadata.json` in this repository.

## How to load

```python
import giga_ssl_hf

ids, embeddings = giga_ssl_hf.load_embeddings("{repo_id}")  # numpy: (N,), (N, {dim})
dataset = giga_ssl_hf.load_embeddings("{repo_id}", as_dataset=True)  # datasets.Dataset
```

or with `datasets` alone:

```python
import datasets

dataset = datasets.load_dataset("{repo_id}", split="train")
```

or from the command line (writes `embeddings.npy` and `ids.npy`, the format of the original Giga-SSL code):

```bash
giga-ssl download {repo_id} --out {name} --npy
```

Downloads are cached by `huggingface_hub` and work offline with `HF_HUB_OFFLINE=1`. A linear probe with the
paper's protocol: `giga-ssl evaluate --embeddings {repo_id} --labels labels.csv` (columns `ID`, `label`).

## Citation

```bibtex
{CITATION}
```

<details>
<summary>giga_ssl_metadata.json</summary>

```json
{json.dumps(metadata, indent=2, sort_keys=True)}
```

</details>

[paper]: {PAPER_URL}
"""
    return DatasetCard(content)


def _is_repo_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"
