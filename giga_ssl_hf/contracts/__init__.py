"""The data contracts between stages: one home that every stage reads.

- this module: the names shared between the stages' outputs and their readers (file names, sentinel values)
  and the metadata sidecar every Dataset folder carries (:func:`write_metadata`, :func:`read_metadata`);
- :mod:`.tile_features`: the tile-feature Dataset (extract writes it; train, embed, heatmap read it);
- :mod:`.slide_embeddings`: the slide-embeddings Dataset (embed writes it; evaluate and the Hub read it);
- :mod:`.extraction_folder`, :mod:`.training_run`: the layouts of the folders that ``giga-ssl extract`` and
  ``giga-ssl train`` write.

This module stays free of heavy imports, so that any command's ``--help`` and the readers of names stay light.
"""

import json
from pathlib import Path

# Sidecar of every tile-feature and slide-embedding Dataset folder: how it was made (strict JSON).
METADATA_FILENAME = "giga_ssl_metadata.json"
# ``aug_id`` of the exhaustive (non-augmented) rows of a tile-feature Dataset.
NO_AUGMENTATION = -1
# The original Giga-SSL release format of slide embeddings: an (N, E) array and the N slide ids.
NPY_EMBEDDINGS = "embeddings.npy"
NPY_IDS = "ids.npy"
# A saved linear probe (giga-ssl evaluate --save-probe): its arrays (safetensors) and its description (JSON).
PROBE_WEIGHTS = "probe.safetensors"
PROBE_CONFIG = "probe.json"
# giga-ssl heatmap's table of per-tile scores (slide_id, x, y, score), beside the <slide_id>.png maps.
TILE_SCORES_FILENAME = "tile_scores.parquet"
# Beside a trained or converted model: how it was made (read by the model card).
TRAINING_SUMMARY_FILENAME = "training_summary.json"
# Beside an exported slide classifier (giga-ssl evaluate --export-classifier): its probe and AUCs (read by its card).
CLASSIFIER_SUMMARY_FILENAME = "classifier_summary.json"
# In a giga-ssl pipeline folder: each stage's fingerprint, and the settings of the run (reloadable with --config).
PIPELINE_STATE_FILENAME = "pipeline_state.json"
PIPELINE_CONFIG_FILENAME = "pipeline_config.json"
# Licence of the cards of pushed models and embeddings unless the user names another.
DEFAULT_LICENSE = "mit"  # the original Giga-SSL code and weights are MIT
# Tile readers of `giga-ssl extract --decode` (giga_ssl_hf.wsi.raw_tiles).
TILE_DECODERS = ("auto", "openslide", "gpu", "cpu-raw")


def write_metadata(dataset_dir: str | Path, metadata: dict) -> None:
    """Write a Dataset folder's metadata sidecar (strict JSON, atomically)."""
    from giga_ssl_hf.files import write_json

    write_json(Path(dataset_dir) / METADATA_FILENAME, metadata)


def read_metadata(dataset_dir: str | Path) -> dict:
    """The metadata sidecar of a tile-feature or slide-embeddings Dataset folder ({} when it has none)."""
    path = Path(dataset_dir) / METADATA_FILENAME
    return json.loads(path.read_text()) if path.exists() else {}
