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
from ..contracts.tile_features import tile_features_schema


def append_tile_row(
    columns: dict[str, list],
    slide_id: str,
    aug_id: int,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    mpp: float = 0.5,
    magnification: float = 20.0,
) -> None:
    """Append one row of the tile-feature schema (features ``(n, D)`` stored float16) to column lists."""
    columns["slide_id"].append(slide_id)
    columns["aug_id"].append(aug_id)
    columns["features"].append(np.asarray(features).astype(np.float16))
    columns["coords"].append(np.asarray(coords).astype(np.int64))
    columns["patch_size_level0"].append(patch_size_level0)
    columns["mpp"].append(mpp)
    columns["magnification"].append(magnification)


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
    """A tile-feature Dataset (schema of :mod:`giga_ssl_hf.contracts.tile_features`) and each slide's class.

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
            append_tile_row(columns, slide_id, aug_id, tiles + shift, coords, patch_size_level0)
    return datasets.Dataset.from_dict(columns, features=tile_features_schema(feature_dim)), labels


def _tile_disc(cells: np.ndarray, radius: float, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mask of the tiles within ``radius`` cells of a random tile, the disc not overlapping ``exclude``."""
    candidates = np.flatnonzero(~exclude)
    while True:
        inside = np.linalg.norm(cells - cells[rng.choice(candidates)], axis=1) <= radius
        if not (inside & exclude).any():
            return inside


def _tissue_cells(side: int, tissue_radius: float, rng: np.random.Generator) -> np.ndarray:
    """Tissue of a ``side`` x ``side`` grid: the cells within a wobbly radius of the centre."""
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), axis=-1).reshape(-1, 2)
    centre = np.array([side / 2, side / 2])
    angle = np.arctan2(*(grid - centre).T)
    wobble = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi))
    return grid[np.linalg.norm(grid - centre, axis=1) <= tissue_radius * wobble]


def synthetic_region_cohort(
    n_slides: int = 40,
    feature_dim: int = 32,
    n_aug: int = 4,
    tissue_radius: float = 7.0,
    region_radius: float = 3.0,
    signal: float = 3.0,
    slide_variation: float = 0.3,
    nuisance: float = 3.0,
    patch_size_level0: int = 448,
    seed: int = 0,
) -> tuple[datasets.Dataset, datasets.Dataset, dict[str, int], dict[str, np.ndarray]]:
    """Slides whose class is decided by a planted, spatially contiguous region: a known tile mask per slide.

    Each slide is a roughly round patch of tissue (radius ``tissue_radius`` cells) with a slide signature (std
    ``slide_variation``) and tile noise (std 0.5). Every slide holds a *decoy* disc (radius ``region_radius``,
    its own feature direction, in both classes); slides of class 1 also hold a *discriminative* disc (another direction, away from the decoy). A
    tile map must therefore single out the discriminative region, not any region that stands out.

    Returns the augmented Dataset (``n_aug`` rows per slide, with a strong nuisance per augmentation in the
    second half of the dimensions), the exhaustive Dataset (one row per slide, no nuisance), each slide's
    class, and each slide's ``(n,)`` bool mask of discriminative tiles (all False for class 0), in tile order.
    """
    rng = np.random.default_rng(seed)
    signal_dim = feature_dim // 2
    discriminative, decoy = np.zeros((2, feature_dim))
    discriminative[:signal_dim], decoy[:signal_dim] = rng.normal(size=(2, signal_dim))
    discriminative /= np.linalg.norm(discriminative)
    decoy /= np.linalg.norm(decoy)
    schema = tile_features_schema(feature_dim)
    augmented: dict[str, list] = {name: [] for name in schema}
    exhaustive: dict[str, list] = {name: [] for name in schema}
    labels, masks = {}, {}
    side = int(2 * tissue_radius + 3)
    for slide in range(n_slides):
        slide_id = f"region_{slide:04d}"
        label = slide % 2
        cells = _tissue_cells(side, tissue_radius, rng)
        n = len(cells)

        decoy_mask = _tile_disc(cells, region_radius, np.zeros(n, dtype=bool), rng)
        mask = _tile_disc(cells, region_radius, decoy_mask, rng) if label == 1 else np.zeros(n, dtype=bool)
        tiles = np.zeros((n, feature_dim))
        tiles[:, :signal_dim] = slide_variation * rng.normal(size=signal_dim) + 0.5 * rng.normal(
            size=(n, signal_dim)
        )
        tiles += signal * (decoy_mask[:, None] * decoy + mask[:, None] * discriminative)
        coords = ((cells + rng.integers(0, 50, size=2)) * patch_size_level0).astype(np.int64)
        labels[slide_id], masks[slide_id] = label, mask
        append_tile_row(exhaustive, slide_id, NO_AUGMENTATION, tiles, coords, patch_size_level0)
        for aug_id in range(n_aug):
            shift = np.r_[np.zeros(signal_dim), nuisance * rng.normal(size=feature_dim - signal_dim)]
            append_tile_row(augmented, slide_id, aug_id, tiles + shift, coords, patch_size_level0)
    return (
        datasets.Dataset.from_dict(augmented, features=schema),
        datasets.Dataset.from_dict(exhaustive, features=schema),
        labels,
        masks,
    )
