"""The slide-embeddings contract: what ``giga-ssl embed`` writes and every reader (evaluate, heatmap, the Hub) reads.

Slide embeddings come in three shapes (see DESIGN.md, "Slide embeddings"):

- a folder written by ``Dataset.save_to_disk`` with columns ``slide_id`` (string) and ``embedding`` (float32
  list of length E), with the :data:`~giga_ssl_hf.contracts.METADATA_FILENAME` sidecar;
- a folder holding the paper's pair ``embeddings.npy`` (N, E) and ``ids.npy`` (N,);
- a Hub dataset repo id, downloaded with ``snapshot_download`` (served from the HF cache when
  ``HF_HUB_OFFLINE=1``) and then read as a saved Dataset, parquet/arrow data files or the npy pair.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from giga_ssl_hf.contracts import NPY_EMBEDDINGS, NPY_IDS, read_metadata

logger = logging.getLogger(__name__)

ID_COLUMN = "slide_id"
EMBEDDING_COLUMN = "embedding"
# The column blocks of a hybrid embedding (embed --concat-mean-pool), in column order; with several top-site
# fractions (embed --top-site-fractions), one block per fraction (top_block_name) replaces the encoder's.
ENCODER_BLOCK, MEAN_POOL_BLOCK = "encoder", "mean-pool"
_DATA_FILE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}


def load_embeddings(
    source: str | Path, as_dataset: bool = False
) -> tuple[np.ndarray, np.ndarray] | datasets.Dataset:
    """Slide IDs (N,) as strings and embeddings (N, E) float32 from a local folder or a Hub dataset.

    With ``as_dataset=True``, the same validated rows as a ``datasets.Dataset`` with columns ``slide_id``
    (string) and ``embedding`` (float32 list of length E), the slide-embeddings Dataset contract.
    """
    ids, embeddings = _read_embeddings_folder(resolve_embeddings_folder(source))
    return embeddings_dataset(ids, embeddings) if as_dataset else (ids, embeddings)


def resolve_embeddings_folder(source: str | Path) -> Path:
    """The local folder of ``source``: itself, or the HF-cache snapshot of a Hub dataset repo id."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise ValueError(
            f"{source}: not a slide-embeddings folder (a saved Dataset, or {NPY_EMBEDDINGS} + {NPY_IDS}) "
            "nor a Hub dataset repo id of the form 'owner/name'"
        )
    return _download(str(source))


def top_block_name(fraction: float) -> str:
    """The column block of one top-site fraction (``embed --top-site-fractions``): 0.03 -> ``"top-3%"``."""
    return f"top-{100 * fraction:g}%"


def embedding_blocks(hidden_dim: int, top_site_fractions, mean_pool_dim: int | None) -> dict[str, int] | None:
    """The column blocks that ``giga-ssl embed`` writes, in column order: one per top-site fraction (else the
    encoder's) and the mean-pool block of a hybrid; None for a single block. Recorded in the metadata as
    ``column_blocks``, a list of ``[name, columns]`` pairs (:func:`column_blocks` reads it)."""
    blocks = (
        {top_block_name(q): hidden_dim for q in top_site_fractions}
        if top_site_fractions
        else {ENCODER_BLOCK: hidden_dim}
    )
    if mean_pool_dim:
        blocks[MEAN_POOL_BLOCK] = mean_pool_dim
    return blocks if len(blocks) > 1 else None


def pooled_top_site_fraction(metadata: dict, use: str) -> float | None:
    """The top-site fraction slide embeddings were pooled at when ``embed --top-site-fractions Q`` chose one
    (None: the model's own), for ``use`` (e.g. ``"--export-classifier"``), which needs the model to pool as the
    embeddings did: embeddings of several fractions are refused, since the model pools at one."""
    fractions = metadata.get("top_site_fractions") or []
    if len(fractions) > 1:
        raise ValueError(
            f"{use}: the embeddings hold one block per top-site fraction ({fractions}) and the model pools at one: "
            "embed again with --top-site-fractions Q, Q the fraction of the block the evaluation chose, and "
            "save the probe on those"
        )
    return fractions[0] if fractions else None


def column_blocks(metadata: dict) -> dict[str, int] | None:
    """The named column blocks of slide embeddings, in column order, that the probe chooses among: those
    recorded by ``giga-ssl embed`` (several top-site fractions, a hybrid's encoder and mean-pool halves); for
    hybrid embeddings of an earlier version, ``{"encoder": E - D, "mean-pool": D}`` (D the length of the recorded
    ``mean_pool_mean``), or, with a warning, None when they recorded no mean-pool statistics (their block sizes
    are unknown). None for single-block embeddings."""
    if metadata.get("column_blocks"):  # [[name, columns], ...]: a list, since metadata is written key-sorted
        return {str(name): int(size) for name, size in metadata["column_blocks"]}
    if not metadata.get("concat_mean_pool"):
        return None
    statistics = metadata.get("mean_pool_mean")
    if statistics is None or not metadata.get("embedding_dim"):
        logger.warning(
            "hybrid embeddings without recorded mean-pool statistics (an earlier version): their blocks are "
            "unknown and the probe uses both; embed again with --concat-mean-pool to choose between them"
        )
        return None
    mean_pool_dim = len(statistics)
    return {ENCODER_BLOCK: int(metadata["embedding_dim"]) - mean_pool_dim, MEAN_POOL_BLOCK: mean_pool_dim}


def embeddings_dataset(ids: np.ndarray, embeddings: np.ndarray) -> datasets.Dataset:
    """A slide-embeddings Dataset (``slide_id`` string, ``embedding`` float32 list of length E)."""
    features = datasets.Features(
        {
            ID_COLUMN: datasets.Value("string"),
            EMBEDDING_COLUMN: datasets.List(datasets.Value("float32"), length=embeddings.shape[1]),
        }
    )
    return datasets.Dataset.from_dict(
        {ID_COLUMN: ids.tolist(), EMBEDDING_COLUMN: embeddings.astype(np.float32, copy=False)},
        features=features,
    )


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    logger.info("fetching slide embeddings %s from the Hub (or the local HF cache)", repo_id)
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset"))
    except Exception as error:  # the Hub client raises many types (offline, 404, auth): one clear message
        raise ValueError(
            f"{repo_id}: no such local folder and the Hub dataset could not be fetched: {error}"
        ) from error


def _read_embeddings_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    if (folder / NPY_EMBEDDINGS).exists() and (folder / NPY_IDS).exists():
        ids, embeddings = _read_npy_pair(folder)
    elif (folder / "dataset_info.json").exists() or (folder / "dataset_dict.json").exists():
        ids, embeddings = _read_dataset(datasets.load_from_disk(str(folder)), folder)
    elif data_files := _data_files(folder):
        builder = _DATA_FILE_SUFFIXES[data_files[0].suffix]
        dataset = datasets.load_dataset(builder, data_files=[str(f) for f in data_files], split="train")
        ids, embeddings = _read_dataset(dataset, folder)
    else:
        raise ValueError(
            f"{folder}: no slide embeddings found: expected a saved Dataset (dataset_info.json), "
            f"parquet/arrow data files, or the pair {NPY_EMBEDDINGS} + {NPY_IDS}"
        )
    if len(ids) != len(embeddings):
        raise ValueError(f"{folder}: {len(ids)} slide IDs but {len(embeddings)} embeddings")
    if embeddings.ndim != 2:
        raise ValueError(f"{folder}: embeddings must be a 2-D array (N, E), got shape {embeddings.shape}")
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()].unique()
    if len(duplicated):
        raise ValueError(
            f"{folder}: {len(duplicated)} slide IDs appear more than once, e.g. {duplicated[0]!r}"
        )
    logger.info("read %d slide embeddings of dimension %d from %s", *embeddings.shape, folder)
    return ids, embeddings


def _read_npy_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    embeddings = np.load(folder / NPY_EMBEDDINGS, allow_pickle=False)
    try:
        # Pickled object arrays can run code on load; the paper saves its IDs as a plain string array.
        ids = np.load(folder / NPY_IDS, allow_pickle=False)
    except ValueError as error:
        raise ValueError(
            f"{folder / NPY_IDS}: not a plain string array ({error}); re-save it with "
            "np.save(path, np.asarray(ids, dtype=str))"
        ) from error
    return ids.astype(str).reshape(-1), embeddings.astype(np.float32, copy=False)


def _data_files(folder: Path) -> list[Path]:
    """Parquet (preferred) or arrow files anywhere under a downloaded dataset repo."""
    for suffix in _DATA_FILE_SUFFIXES:
        files = sorted(p for p in folder.rglob(f"*{suffix}") if ".cache" not in p.parts)
        if files:
            return files
    return []


def _read_dataset(
    dataset: datasets.Dataset | datasets.DatasetDict, folder: Path
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(dataset, datasets.DatasetDict):
        if len(dataset) != 1:
            raise ValueError(f"{folder}: expected one split of slide embeddings, found {list(dataset)}")
        dataset = next(iter(dataset.values()))
    missing = {ID_COLUMN, EMBEDDING_COLUMN} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"{folder}: slide-embeddings Dataset lacks column(s) {sorted(missing)}; has {dataset.column_names}"
        )
    if metadata := read_metadata(folder):
        logger.info("embeddings metadata: %s", metadata)
    # One columnar read: row access on an Arrow-backed Dataset is far slower than a whole-column view.
    columns = dataset.select_columns([ID_COLUMN, EMBEDDING_COLUMN]).with_format("numpy")[:]
    embeddings = columns[EMBEDDING_COLUMN]
    if embeddings.dtype == object:
        raise ValueError(
            f"{folder}: embeddings have different lengths; expected one vector of size E per slide"
        )
    return columns[ID_COLUMN].astype(str), embeddings.astype(np.float32, copy=False)
