"""Mean pooling of tile features: the baseline every slide embedding is compared with, and the hybrid's half."""

from __future__ import annotations

import datasets
import numpy as np

from ..contracts import NO_AUGMENTATION
from ..contracts.extraction_folder import EXHAUSTIVE
from ..contracts.tile_features import (
    TileArrays,
    load_tile_dataset,
    resolve_tile_dataset_dir,
    without_indices_mapping,
)


def mean_pool(dataset: datasets.Dataset, exclude: set[str] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """``(slide ids (N,), mean tile feature (N, D) float32)`` of an exhaustive tile-feature Dataset, in its row
    order, without the slides in ``exclude``."""
    dataset = without_indices_mapping(dataset)
    if (np.asarray(dataset.data.column("aug_id").to_numpy()) != NO_AUGMENTATION).any():
        raise ValueError(
            "mean pooling needs the exhaustive (non-augmented) tile features: pass DIR/exhaustive of giga-ssl extract"
        )
    ids = np.asarray([str(s) for s in dataset.data.column("slide_id").to_pylist()])
    if len(set(ids.tolist())) != len(ids):
        raise ValueError("the exhaustive tile-feature Dataset has several rows for one slide")
    arrays = TileArrays.from_dataset(dataset)
    kept = np.array([row for row, slide in enumerate(ids) if slide not in exclude], dtype=np.int64)
    means = np.zeros((len(kept), arrays.feature_dim), dtype=np.float32)
    for position, row in enumerate(kept):
        features, _ = arrays.row(row)
        if len(features) == 0:
            raise ValueError(f"slide {ids[row]!r} has no tiles: drop empty slides first")
        means[position] = features.mean(axis=0, dtype=np.float64)
    return ids[kept], means


def mean_pool_folder(features: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mean_pool` of an exhaustive tile-feature Dataset folder, or of an extraction folder."""
    return mean_pool(load_tile_dataset(resolve_tile_dataset_dir(features, EXHAUSTIVE)))


def standardise_over_slides(
    values: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None
) -> np.ndarray:
    """Z-score each column over the slides, scaled by 1/sqrt(D) so that a row has unit norm on average.
    ``mean`` and ``std`` (default: the columns' own over ``values``) apply the statistics of another set of rows
    (the hybrid heatmap standardises each tile's feature as its cohort's slide means were)."""
    mean = values.mean(axis=0) if mean is None else np.asarray(mean)
    std = values.std(axis=0) if std is None else np.asarray(std)
    centred = (values - mean) / np.where(std > 0, std, 1.0)
    return (centred / np.sqrt(values.shape[1])).astype(np.float32)
