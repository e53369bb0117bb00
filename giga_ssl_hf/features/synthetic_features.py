"""Synthetic tile-feature Datasets with learnable structure, for tests, benchmarks and the demo.

Each slide has a class, a tissue region on a tile grid and a slide-specific signature. A tile's features are

    class signal (along a fixed direction per class) + slide signature + tile noise      (first half of the dims)
    augmentation nuisance (strong, shared by every tile of one shared augmentation)    (second half)

so that an untrained encoder's embedding is dominated by the nuisance, while SimCLR, which pulls together
two views of a slide made from *different* augmentations, learns to ignore it and keeps the slide (and
class) information: a linear probe on the classes then improves with training.
"""

from __future__ import annotations

import datasets
import numpy as np

from ..contracts import NO_AUGMENTATION
from .schema import tile_features_schema


def synthetic_tile_dataset(
    n_slides: int = 64,
    n_classes: int = 2,
    feature_dim: int = 16,
    n_aug: int = 4,
    tiles_per_slide: int = 40,
    patch_size_level0: int = 448,
    class_signal: float = 1.0,
    nuisance: float = 3.0,
    seed: int = 0,
    augmented: bool = True,
) -> tuple[datasets.Dataset, dict[str, int]]:
    """A tile-feature Dataset (schema of :mod:`giga_ssl_hf.features.schema`) and each slide's class.

    With ``augmented`` the Dataset has ``n_aug`` rows per slide (``aug_id`` 0..n_aug-1), else one exhaustive
    row (``aug_id = -1``, no nuisance).
    """
    rng = np.random.default_rng(seed)
    signal_dim = feature_dim // 2
    directions = np.zeros((n_classes, feature_dim))
    directions[:, :signal_dim] = rng.normal(size=(n_classes, signal_dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    columns: dict[str, list] = {name: [] for name in tile_features_schema(feature_dim)}
    labels = {}
    for slide in range(n_slides):
        slide_id = f"synthetic_{slide:04d}"
        label = slide % n_classes
        labels[slide_id] = label
        # A compact tissue region: tiles on distinct cells around a random centre.
        side = int(np.ceil(np.sqrt(tiles_per_slide * 2)))
        cells = rng.choice(side * side, size=tiles_per_slide, replace=False)
        origin = rng.integers(0, 50, size=2)
        coords = (np.stack([cells // side, cells % side], axis=1) + origin) * patch_size_level0
        tiles = np.zeros((tiles_per_slide, feature_dim))
        tiles[:, :signal_dim] = rng.normal(size=signal_dim) + 0.5 * rng.normal(
            size=(tiles_per_slide, signal_dim)
        )
        tiles += class_signal * directions[label]
        for aug_id in range(n_aug) if augmented else [NO_AUGMENTATION]:
            shift = np.zeros(feature_dim)
            if aug_id != NO_AUGMENTATION:
                shift[signal_dim:] = nuisance * rng.normal(size=feature_dim - signal_dim)
            columns["slide_id"].append(slide_id)
            columns["aug_id"].append(aug_id)
            columns["features"].append((tiles + shift).astype(np.float16))
            columns["coords"].append(coords.astype(np.int64))
            columns["patch_size_level0"].append(patch_size_level0)
            columns["mpp"].append(0.5)
            columns["magnification"].append(20.0)
    return datasets.Dataset.from_dict(columns, features=tile_features_schema(feature_dim)), labels
