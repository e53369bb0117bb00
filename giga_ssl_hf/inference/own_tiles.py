"""Tile scores from each tile's own embedding: ``giga-ssl heatmap --method tiles`` (the default).

Each tile goes through the encoder alone, as the paper's views (5 tiles drawn from hundreds) nearly always see
it, and its output is its *own embedding* ``e_i``. The slide embedding the probe scores (the mean of its
recorded views, or one pass of all tiles; before the L2 norm) is ``E = mean_i e_i + r``: ``r`` is what the
views' context adds to the tiles' own embeddings (tiles sharing a view's sites, neighbours, each tile's weight
in its views). No tile owns ``r``, so every tile gets an equal share: tile ``i`` holds ``e_i + r``, their mean is
``E`` exactly, and through the probe (:func:`~giga_ssl_hf.inference.tile_scores.additive_scores`) **the slide's
log-odds equal the probe's intercept plus the mean of the tile scores**, as with ``--method embedding``.

Why not the views' own shares (``--method embedding``): a tile gets a share only from the views that drew it,
and 32-100 views of 5 tiles leave most tiles of a large slide out; the site shares of one pass put each tile in
a context the paper's encoder never saw in training. Every tile's own embedding avoids both
(``benchmarks/bench_localisation.py``: per-slide tile AUC against a planted region 0.87-0.98 against 0.54-0.62
for the views' shares, same probe; the shared ``r`` moves every tile of a slide alike, so the ranking of its
tiles is that of their own embeddings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from giga_ssl_hf.inference.tile_scores import additive_scores, tile_contributions

if TYPE_CHECKING:
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe


def single_tile_views(n_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(index, mask)`` `(n, 1)` of every tile alone."""
    return np.arange(n_tiles)[:, None], np.ones((n_tiles, 1), dtype=bool)


def own_tile_contributions(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    max_tiles_per_pass: int = 20000,
    views: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """`(n, E)` float64: each tile's own embedding plus an equal share of the context term, so that their mean is
    the slide embedding before its L2 norm (of ``views``, or of one pass: see
    :func:`~giga_ssl_hf.inference.tile_scores.tile_contributions`)."""
    own = tile_contributions(
        model, features, coords, patch_size_level0, views=single_tile_views(len(features))
    )
    slide = tile_contributions(model, features, coords, patch_size_level0, max_tiles_per_pass, views)
    return own + (slide.mean(axis=0) - own.mean(axis=0))


def own_tile_scores(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    probe: SavedProbe,
    class_name: str,
    max_tiles_per_pass: int = 20000,
    views: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """`(n,)` additive tile scores from the tiles' own embeddings: the probe's intercept plus their mean is the
    slide's score (its embedding from ``views``, or one pass)."""
    contributions = own_tile_contributions(
        model, features, coords, patch_size_level0, max_tiles_per_pass, views
    )
    return additive_scores(contributions, probe, class_name)[0]
