"""A slide's embedding: which tiles form each view, the encoder run on the views, their mean L2-normalised.

Tile sampling (:mod:`giga_ssl_hf.contracts.tile_sampling`):

- ``random`` (the paper): ``n_views`` views of ``n_tiles`` tiles drawn with replacement from the slide's
  exhaustive (non-augmented) tiles;
- ``chunks`` (the successor package): the tiles in their stored order cut into consecutive chunks of
  ``n_tiles`` that cover every tile exactly once (the last chunk may be shorter);
- ``window``: ``n_views`` spatially contiguous windows, the ``n_tiles`` tiles nearest a random tile (for
  encoders trained with ``--tile-sampling window``).
- ``all``: one view of every tile, the whole slide in one pass.

A slide's views depend only on its own tiles and the seed: its random stream is derived from
``(seed, slide_id)`` (:func:`giga_ssl_hf.runtime.slide_seed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..contracts.tile_sampling import EMBEDDING_SAMPLINGS
from ..runtime import slide_seed

if TYPE_CHECKING:
    import torch


def view_indices(
    n_available: int,
    tile_sampling: str,
    n_views: int,
    n_tiles: int,
    rng: np.random.Generator,
    grid_xy: np.ndarray | None = None,
):
    """Tile indices of each view ``(V, n_tiles)`` and a validity mask ``(V, n_tiles)``.

    ``grid_xy`` `(n_available, 2)`, the tiles' grid positions, is needed by the ``window`` sampling only.
    """
    if tile_sampling == "window":
        from ..features.windows import random_windows

        index = random_windows(grid_xy, n_views, n_tiles, rng)
        return index, np.ones_like(index, dtype=bool)
    if tile_sampling == "random":
        index = rng.integers(0, n_available, size=(n_views, n_tiles))
        return index, np.ones_like(index, dtype=bool)
    if tile_sampling == "all":
        return np.arange(n_available)[None], np.ones((1, n_available), dtype=bool)
    if tile_sampling == "chunks":
        n_chunks = -(-n_available // n_tiles)
        flat = np.arange(n_chunks * n_tiles)
        mask = (flat < n_available).reshape(n_chunks, n_tiles)
        return np.minimum(flat, n_available - 1).reshape(n_chunks, n_tiles), mask
    raise ValueError(f"tile_sampling must be one of {EMBEDDING_SAMPLINGS}, got {tile_sampling!r}")


def slide_views(
    n_tiles_in_slide: int,
    grid_xy: np.ndarray,
    slide_id: str,
    tile_sampling: str,
    n_views: int,
    n_tiles: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The views of one slide, drawn from its own random stream ``(seed, slide_id)``: see :func:`view_indices`."""
    rng = np.random.default_rng(slide_seed(seed, slide_id))
    return view_indices(n_tiles_in_slide, tile_sampling, n_views, n_tiles, rng, grid_xy)


def embed_views(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    mask: np.ndarray,
    patch_size_level0,
    top_site_fractions=None,
) -> torch.Tensor:
    """Run the encoder on views ``(V, n, D)``; returns ``(V, E)`` float32, or ``(V, F, E)`` pooled at each of
    ``top_site_fractions`` (a top-pooling model)."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        output = model(
            tile_features=torch.from_numpy(np.ascontiguousarray(features)).to(device),
            tile_coords=torch.from_numpy(np.ascontiguousarray(coords)).to(device),
            tile_mask=torch.from_numpy(mask).to(device),
            patch_size_level0=torch.as_tensor(patch_size_level0, device=device),
            # Passed only when asked for: remote code saved before top_site_fractions existed has no such argument.
            **({"top_site_fractions": top_site_fractions} if top_site_fractions else {}),
        )
    return output.slide_embedding.float()


def mean_of_views(view_embeddings: torch.Tensor) -> np.ndarray:
    """A slide's embedding from its views' ``(V, E)``: their mean, L2-normalised; from ``(V, F, E)`` (one pooling
    per top-site fraction), each fraction's block so, concatenated ``(F * E,)``."""
    import torch

    return torch.nn.functional.normalize(view_embeddings.mean(dim=0), dim=-1).reshape(-1).cpu().numpy()


def embed_slide(
    model,
    tile_features: np.ndarray,
    tile_coords: np.ndarray,
    patch_size_level0: int,
    slide_id: str,
    tile_sampling: str = "random",
    n_views: int = 100,
    n_tiles: int | None = None,
    seed: int = 0,
    max_views_per_batch: int = 4096,
    top_site_fractions: list[float] | None = None,
) -> np.ndarray:
    """One slide's embedding ``(E,)``, unit L2 norm, from its tile features ``(n, D)`` and level-0 coords ``(n, 2)``;
    with ``top_site_fractions`` (a top-pooling model), ``(F * E,)``: one unit-norm block per fraction.

    Gives the same vector as :func:`~giga_ssl_hf.inference.slides.embed_tile_dataset` and ``giga-ssl embed``
    for that slide: the views are drawn from ``seed`` and ``slide_id`` (the Dataset's ``slide_id``, the slide
    file's stem), which is why ``slide_id`` is required.
    """
    import torch

    n_tiles = n_tiles or model.config.n_tiles
    if len(tile_features) == 0:
        raise ValueError(f"slide {slide_id!r} has no tiles to embed")
    grid_xy = np.asarray(tile_coords) // patch_size_level0
    index, mask = slide_views(len(tile_features), grid_xy, slide_id, tile_sampling, n_views, n_tiles, seed)
    outputs = []
    for start in range(0, len(index), max_views_per_batch):
        part, part_mask = (
            index[start : start + max_views_per_batch],
            mask[start : start + max_views_per_batch],
        )
        patch = np.full(len(part), patch_size_level0)
        outputs.append(
            embed_views(model, tile_features[part], tile_coords[part], part_mask, patch, top_site_fractions)
        )
    return mean_of_views(torch.cat(outputs))
