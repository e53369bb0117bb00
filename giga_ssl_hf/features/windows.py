"""Spatially contiguous windows of a slide's tiles: the ``k`` tiles nearest a centre tile on the grid.

A window around a tissue tile is the connected patch of cells, growing outwards from it, that holds ``k``
tissue tiles (a disc on solid tissue, the tissue's shape near its edges). Used by the window views of
training (``--view_sampling window``), the window strategy of ``embed`` and ``extract --aug-sampling window``,
so that a sparse CNN sees neighbourhoods instead of tiles scattered over the slide.
"""

from __future__ import annotations

import numpy as np

# "window-pair": the views of one slide are windows around the same place (see training.views.SlideViews).
VIEW_SAMPLINGS = ("random", "window", "window-pair")


def window_indices(grid_xy: np.ndarray, centres: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices ``(len(centres), k)`` of the ``k`` tiles nearest each centre tile (grid distance, nearest first).

    ``grid_xy`` `(n, 2)` holds the tiles' grid positions (``coords // patch_size_level0``); ``centres`` are tile
    indices. Ties in distance are broken at random, so windows of one centre differ in their outer ring. A slide
    with fewer than ``k`` tiles repeats its tiles (drawn at random) to fill the window.
    """
    grid_xy = np.asarray(grid_xy, dtype=np.float64)
    n = len(grid_xy)
    centres = np.asarray(centres, dtype=np.int64)
    if n <= k:
        fill = rng.integers(0, n, size=(len(centres), k - n))
        return np.concatenate([np.broadcast_to(np.arange(n), (len(centres), n)), fill], axis=1)
    # (C, n) squared distances; the jitter (< 1/4 cell^2) only reorders tiles at equal distance.
    distance = ((grid_xy[None, :, :] - grid_xy[centres][:, None, :]) ** 2).sum(-1)
    distance += rng.random(distance.shape) * 0.25
    nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(distance, nearest, axis=1), axis=1)
    return np.take_along_axis(nearest, order, axis=1)


def random_windows(grid_xy: np.ndarray, n_windows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n_windows`` windows of ``k`` tiles, each around a tile drawn uniformly at random: ``(n_windows, k)``."""
    centres = rng.integers(0, len(grid_xy), size=n_windows)
    return window_indices(grid_xy, centres, k, rng)
