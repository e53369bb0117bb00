"""Synthetic slide embeddings with a known amount of class signal, written in every supported format."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from giga_ssl_hf.contracts import NO_AUGMENTATION
from giga_ssl_hf.contracts.tile_features import tile_features_schema
from giga_ssl_hf.features.synthetic_features import append_tile_row


def planted(n: int, n_classes: int = 2, dim: int = 8, signal: float = 4.0, seed: int = 0):
    """IDs, embeddings and labels where class k is shifted by ``signal`` along dimension k."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[np.arange(n), y] += signal
    ids = np.array([f"TCGA-{i:04d}" for i in range(n)])
    labels = pd.Series(np.array([f"class_{c}" for c in range(n_classes)])[y], index=ids)
    return ids, x, labels


def write_npy(folder: Path, ids: np.ndarray, x: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", x)
    np.save(folder / "ids.npy", ids.astype(str))
    return folder


def write_dataset(folder: Path, ids: np.ndarray, x: np.ndarray) -> Path:
    features = datasets.Features(
        {"slide_id": datasets.Value("string"), "embedding": datasets.Sequence(datasets.Value("float32"))}
    )
    datasets.Dataset.from_dict({"slide_id": list(ids), "embedding": x}, features=features).save_to_disk(
        str(folder)
    )
    return folder


def write_labels(path: Path, labels: pd.Series, extra_column: bool = True) -> Path:
    table = pd.DataFrame({"ID": labels.index, "label": labels.to_numpy()})
    if extra_column:
        table["case_id"] = [i[:9] for i in labels.index]
    table.to_csv(path, index=False)
    return path


def write_split(path: Path, train: list[str], test: list[str]) -> Path:
    """A split CSV as the paper writes them: columns of unequal length padded with empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([pd.Series(train, name="train"), pd.Series(test, name="test")], axis=1).to_csv(
        path, index=False
    )
    return path


PATCH = 448  # level-0 px per tile: neighbours are PATCH apart


def _slide_tiles(rng, label: int, side: int, arrangement: bool, feature_dim: int):
    """Tiles on a full ``side`` x ``side`` grid, half of type A (feature 0) and half of type B (feature 1).

    Composition task (``arrangement=False``): class 1 has a quarter of its tiles shifted along feature 2.
    Arrangement task: both classes hold exactly half A, half B; class 1 puts its A tiles in one block (left
    half of the grid), class 0 scatters them at random: only the neighbours tell the classes apart.
    """
    n = side * side
    cells = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), axis=-1).reshape(-1, 2)
    features = 0.3 * rng.normal(size=(n, feature_dim))
    if arrangement:
        is_a = cells[:, 0] < side // 2 if label else rng.permutation(np.arange(n) < n // 2)
    else:
        is_a = rng.permutation(np.arange(n) < n // 2)
        features[rng.choice(n, n // 4, replace=False), 2] += 1.5 * label
    features[is_a, 0] += 1.0
    features[~is_a, 1] += 1.0
    return features, (cells + rng.integers(0, 20, size=2)) * PATCH


def write_tile_cohort(
    folder, n_slides: int, side: int, arrangement: bool, seed: int = 0, feature_dim: int = 4
) -> pd.Series:
    """An exhaustive tile-feature Dataset on disk (``feature_dim`` >= 3); returns the slides' labels ("a" / "b")."""
    rng = np.random.default_rng(seed)
    columns = {name: [] for name in tile_features_schema(feature_dim)}
    labels = {}
    for slide in range(n_slides):
        label = slide % 2
        features, coords = _slide_tiles(rng, label, side, arrangement, feature_dim)
        append_tile_row(columns, f"s{slide:03d}", NO_AUGMENTATION, features, coords, PATCH)
        labels[f"s{slide:03d}"] = "ab"[label]
    datasets.Dataset.from_dict(columns, features=tile_features_schema(feature_dim)).save_to_disk(str(folder))
    return pd.Series(labels)


HYBRID_BLOCKS = {"encoder": 8, "mean-pool": 64}


def hybrid_embeddings(n: int, informative: str, signal: float = 1.5, seed: int = 0):
    """IDs, hybrid-like embeddings (blocks :data:`HYBRID_BLOCKS`) and labels: the class shifts two dimensions
    of the ``informative`` block; the other block is pure noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    x = rng.normal(size=(n, sum(HYBRID_BLOCKS.values()))).astype(np.float32)
    start = 0 if informative == "encoder" else HYBRID_BLOCKS["encoder"]
    x[:, start : start + 2] += signal * y[:, None]
    ids = np.array([f"s{i:03d}" for i in range(n)])
    return ids, x, pd.Series(np.where(y == 1, "b", "a"), index=ids)
