"""Per-tile scores of a saved linear probe on one slide: where on the slide the prediction comes from.

Two methods here (``tiles``, the heatmap's default, builds on them: :mod:`~giga_ssl_hf.inference.own_tiles`;
``integrated-gradients``: :mod:`~giga_ssl_hf.inference.input_attributions`):

- ``embedding`` (additive): every tile of the slide goes through the encoder at once (whole-slide context) and
  gets its share of the slide embedding (:func:`tile_contributions`), whose mean over the tiles is the slide's
  one-pass embedding before its L2 norm. Through the norm, the probe's standardisation and its linear map,
  each tile's score is its contribution to the slide's log-odds, in the same units: **the slide's log-odds
  equal the probe's intercept plus the mean of its tile scores** (:func:`additive_scores`). Slides with more
  tiles than ``max_tiles_per_pass`` go in square chunks of the grid, each with the margin that ``layer4``
  sees and the slide's extreme tiles (which fix the grid origin and map size), so the result equals one pass.
- ``occlusion`` (model-agnostic, a check on the first): the drop in the slide's log-odds when the tiles within
  ``radius`` cells of a tile are removed (positive: that neighbourhood speaks for the class). With ``stride``
  ``s > 1`` the tiles are grouped in ``s x s``-cell blocks that are removed together (with the margin). Each
  block's result equals a whole-slide pass without it, but only the output sites the block can change are
  recomputed (:mod:`~giga_ssl_hf.inference.occlusion`): the cost per block does not grow with the slide.

:func:`tile_embeddings` (each tile's own output site, no sharing) stays available for other uses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from giga_ssl_hf.inference.occlusion import (
    WholeSlide,
    copies_per_batch,
    grid_changing_blocks,
    local_slide_embeddings,
    supports_local_occlusion,
)
from giga_ssl_hf.models.gigassl.modeling_gigassl import SparseConvMILEncoder

if TYPE_CHECKING:
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe

logger = logging.getLogger(__name__)

# Cells around a tile whose tiles can change its layer4 output site (stride-2 window, then 3 more 3x3 convs).
RECEPTIVE_MARGIN = 8
# The output sites whose 3x3 / stride-2 window holds a tile reach one site (2 cells) further than its own.
CONTRIBUTION_MARGIN = RECEPTIVE_MARGIN + 2


def tile_cells(model, coords: np.ndarray, patch_size_level0: int) -> np.ndarray:
    """`(n, 2)` int64 grid cells of a slide's tiles, exactly as the encoder places them."""
    config = model.config
    cell_size = config.grid_cell_size if config.fixed_grid_cell_size else patch_size_level0
    coords_t = torch.from_numpy(np.array(coords, dtype=np.int64))[None]  # (1, n, 2), writable copy
    mask = torch.ones(coords_t.shape[:2], dtype=torch.bool)
    return SparseConvMILEncoder.tile_cells(coords_t, mask, torch.tensor([cell_size]))[0].numpy()


@torch.no_grad()
def _forward(
    model, features, coords, masks: np.ndarray, patch_size_level0: int, output_tile_embeddings: bool = False
):
    """The model on ``len(masks)`` copies of one slide, copy ``i`` keeping the tiles of ``masks[i]``."""
    device = next(model.parameters()).device
    copies = len(masks)
    # Copies: the Arrow-backed arrays are read-only views, which torch cannot wrap safely.
    features_t = torch.from_numpy(np.array(features)).to(device)[None].expand(copies, -1, -1)
    coords_t = torch.from_numpy(np.array(coords, dtype=np.int64)).to(device)
    return model(
        tile_features=features_t,
        tile_coords=coords_t[None].expand(copies, -1, -1),
        tile_mask=torch.from_numpy(masks).to(device),
        patch_size_level0=torch.full((copies,), patch_size_level0, device=device),
        output_tile_embeddings=output_tile_embeddings,
    )


def _chunks(
    coords: np.ndarray, cells: np.ndarray, side: int, margin: int = RECEPTIVE_MARGIN
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(core tiles, tiles of the pass)`` per square block of ``side`` cells: the block, its ``margin``, and
    the tiles that set the slide's grid origin (lowest coordinates) and map size (highest cells)."""
    extremes = np.unique(
        [coords[:, 0].argmin(), coords[:, 1].argmin(), cells[:, 0].argmax(), cells[:, 1].argmax()]
    )
    blocks = cells // side
    chunks = []
    for block in np.unique(blocks, axis=0):
        core = np.flatnonzero((blocks == block).all(axis=1))
        low, high = block * side - margin, (block + 1) * side - 1 + margin
        context = np.flatnonzero(((cells >= low) & (cells <= high)).all(axis=1))
        chunks.append((core, np.union1d(context, extremes)))
    return chunks


def _passes(model, coords: np.ndarray, patch_size_level0: int, max_tiles_per_pass: int, margin: int):
    """``(core tiles, tiles of the pass)`` of each forward pass over one slide (one pass when it fits)."""
    n = len(coords)
    if n <= max_tiles_per_pass:
        return [(np.arange(n), np.arange(n))]
    if model.config.encoder_type == "mlp":  # no spatial context: any split of the tiles is exact
        parts = np.array_split(np.arange(n), -(-n // max_tiles_per_pass))
        return [(part, part) for part in parts]
    side = int(np.sqrt(max_tiles_per_pass)) - 2 * margin
    if side < 2:
        raise ValueError(f"max_tiles_per_pass must be at least {(2 + 2 * margin) ** 2}")
    return _chunks(coords, tile_cells(model, coords, patch_size_level0), side, margin)


def tile_embeddings(
    model, features: np.ndarray, coords: np.ndarray, patch_size_level0: int, max_tiles_per_pass: int = 20000
) -> np.ndarray:
    """`(n, E)` float32 tile embeddings of one slide in whole-slide context (chunked above ``max_tiles_per_pass``)."""
    chunks = _passes(model, coords, patch_size_level0, max_tiles_per_pass, RECEPTIVE_MARGIN)
    result = np.zeros((len(features), model.config.hidden_dim), dtype=np.float32)
    logger.info("%d tiles in %d pass(es)", len(features), len(chunks))
    for core, context in chunks:
        everything = np.ones((1, len(context)), dtype=bool)
        out = _forward(model, features[context], coords[context], everything, patch_size_level0, True)
        result[core] = out.tile_embeddings[0, np.searchsorted(context, core)].float().cpu().numpy()
    return result


def _site_windows(cells: np.ndarray, last_site: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tile, site (x, y))`` pairs: every output site whose 3x3 / stride-2 window holds the tile's cell.

    ``cells`` `(T, 2)`, ``last_site`` `(T, 2)` or `(2,)`: the last site index the tile's map allows. The strided
    convolution makes a site active when its window holds a tile, so these pairs cover every output site
    (windows overlap: a tile on an even cell sits in two sites along that axis)."""
    tiles, sites = [], []
    for shift in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        site = cells // 2 + np.array(shift)
        inside = ((site >= 0) & (site <= last_site) & (2 * site <= cells) & (cells <= 2 * site + 2)).all(
            axis=1
        )
        tiles.append(np.flatnonzero(inside))
        sites.append(site[inside])
    return np.concatenate(tiles), np.concatenate(sites)


@torch.no_grad()
def _site_shares(model, features, coords, index: np.ndarray, mask: np.ndarray, patch_size_level0: int):
    """The sparse encoder on views ``(V, k)`` of one slide (tile ``index``, ``mask``), each output site split
    equally between the tiles in its window. Returns, per (tile occurrence, site) pair: its view, its tile (an
    index into ``features``) and the share `(P, E)`; then the number of output sites of each view, and the
    last output-site index (x, y) of each view's map."""
    encoder, device = model.encoder, next(model.parameters()).device
    features_t = torch.from_numpy(np.array(features)[index]).to(device=device, dtype=model.dtype)
    coords_t = torch.from_numpy(np.array(coords, dtype=np.int64)[index]).to(device)
    mask_t = torch.from_numpy(mask).to(device)
    cell_size = model.config.grid_cell_size if model.config.fixed_grid_cell_size else patch_size_level0
    cell_size_t = torch.full((len(index),), cell_size, device=device)
    input_grid = encoder.build_grid(features_t, coords_t, mask_t, cell_size_t)
    grid = encoder.layer4(input_grid)
    cells = encoder.tile_cells(coords_t, mask_t, cell_size_t).cpu().numpy()  # (V, k, 2)
    last_site = ((input_grid.spatial_size - 3) // 2).cpu().numpy()  # (V, 2)
    view, position = np.nonzero(mask)
    occurrence, site = _site_windows(cells[view, position], last_site[view])
    view, position = view[occurrence], position[occurrence]
    keys, inverse, sharing = np.unique(
        np.column_stack([view, site]), axis=0, return_inverse=True, return_counts=True
    )
    inverse = inverse.reshape(-1)
    rows = grid.rows_of(torch.from_numpy(keys[:, 0]).to(device), torch.from_numpy(keys[:, 1:]).to(device))
    shares = grid.features[rows].double().cpu().numpy()[inverse] / sharing[inverse, None]
    return view, index[view, position], shares, np.bincount(keys[:, 0], minlength=len(index)), last_site


def _one_pass_contributions(model, features, coords, patch_size_level0: int, max_tiles_per_pass: int):
    """Contributions (see :func:`tile_contributions`) to the embedding of one pass of all the tiles."""
    n = len(features)
    chunks = _passes(model, coords, patch_size_level0, max_tiles_per_pass, CONTRIBUTION_MARGIN)
    logger.info("%d tiles in %d pass(es)", n, len(chunks))
    result = np.zeros((n, model.config.hidden_dim))
    for core, context in chunks:
        everything = np.ones((1, len(context)), dtype=bool)
        _, tiles, shares, _, last_site = _site_shares(
            model, features, coords, context[None], everything, patch_size_level0
        )
        in_core = np.isin(tiles, core)  # the chunk's margin makes these sites and their sharing exact
        np.add.at(result, tiles[in_core], shares[in_core])
    _, sites = _site_windows(tile_cells(model, coords, patch_size_level0), last_site[0])
    return result * (n / len(np.unique(sites, axis=0)))


def tile_contributions(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    max_tiles_per_pass: int = 20000,
    views: tuple[np.ndarray, np.ndarray] | None = None,
    max_views_per_batch: int = 256,
) -> np.ndarray:
    """`(n, E)` float64 shares of the slide embedding, before its L2 norm: their mean over the tiles is it.

    The slide embedding is the model on one pass of all its tiles (``model(...).slide_embedding``) or, with
    ``views`` (tile ``index`` and ``mask``, `(V, k)`, as :func:`~giga_ssl_hf.inference.views.slide_views`
    draws them), the mean of those views' embeddings, as ``giga-ssl embed`` computes it. The sparse encoder
    averages each pass's ``S`` output sites; each site is split equally between the ``m`` tiles in its 3x3 /
    stride-2 window, and a tile holds the sum of its shares over the passes, times ``n / (S V)``. The ``mlp``
    encoder averages its tiles: each tile holds its own embedding. Above ``max_tiles_per_pass`` the one pass
    goes in chunks whose margin makes every needed site exact, so the identity still holds."""
    if getattr(model.config, "slide_pooling", "mean") != "mean":
        raise ValueError(
            f"a model whose slide pooling is {model.config.slide_pooling!r} (not the mean) has no additive split of "
            "its slide embedding into tile shares: use heatmap --method occlusion or integrated-gradients"
        )
    n = len(features)
    if views is None and model.config.encoder_type == "mlp":
        return tile_embeddings(model, features, coords, patch_size_level0, max_tiles_per_pass).astype(
            np.float64
        )
    if views is None:
        return _one_pass_contributions(model, features, coords, patch_size_level0, max_tiles_per_pass)
    index, mask = views
    result = np.zeros((n, model.config.hidden_dim))
    for start in range(0, len(index), max_views_per_batch):
        part, part_mask = (
            index[start : start + max_views_per_batch],
            mask[start : start + max_views_per_batch],
        )
        if model.config.encoder_type == "mlp":  # each view's mean of its tiles' embeddings
            view, position = np.nonzero(part_mask)
            tiles = part[view, position]
            shares = tile_embeddings(model, features[tiles], coords[tiles], patch_size_level0).astype(
                np.float64
            )
            per_view = part_mask.sum(axis=1)
        else:
            view, tiles, shares, per_view, _ = _site_shares(
                model, features, coords, part, part_mask, patch_size_level0
            )
        np.add.at(result, tiles, shares / per_view[view, None])
    return result * (n / len(index))


def additive_direction(probe: SavedProbe, class_name: str) -> tuple[np.ndarray, float, np.ndarray]:
    """``(w, b, centre)`` such that the probe's score of ``class_name`` on an embedding ``x`` is
    ``w . (x - centre) + b``, the standardisation folded in (``w = coef / scale``, ``centre = mean``).

    The score is the class's log-odds for a two-class probe; for more classes, log-odds are not linear, and the
    score is the class's logit minus the mean of all classes' logits (the softmax is unchanged by that shift).
    """
    k = probe.class_index(class_name)
    if len(probe.classes) == 2:
        sign = 1.0 if k == 1 else -1.0
        weight, bias = sign * probe.coef[0], sign * float(probe.intercept[0])
    else:
        weight = probe.coef[k] - probe.coef.mean(axis=0)
        bias = float(probe.intercept[k] - probe.intercept.mean())
    if not probe.standardize:
        return weight, bias, np.zeros_like(weight)
    return weight / probe.scaler_scale, bias, probe.scaler_mean


def additive_scores(
    contributions: np.ndarray, probe: SavedProbe, class_name: str
) -> tuple[np.ndarray, float]:
    """``(scores (n,), intercept)`` of tile ``contributions`` (:func:`tile_contributions`): the probe's score of
    the slide embedding ``normalise(mean(contributions))`` equals ``intercept + scores.mean()``.

    Tile ``i`` scores ``w . (c_i / ||mean(c)|| - centre)`` (:func:`additive_direction`): the L2 norm is the
    slide's, shared by all its tiles, so the map shows each tile's contribution in the slide's own units."""
    weight, bias, centre = additive_direction(probe, class_name)
    contributions = np.asarray(contributions, dtype=np.float64)
    norm = np.linalg.norm(contributions.mean(axis=0))
    if norm == 0:
        raise ValueError("the slide embedding is zero: its tiles have no L2-normalisable mean")
    return (contributions / norm - centre) @ weight, bias


def embedding_scores(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    probe: SavedProbe,
    class_name: str,
    max_tiles_per_pass: int = 20000,
    views: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """`(n,)` additive tile scores: the slide's log-odds of ``class_name`` (its embedding from one pass, or the
    mean of ``views``: see :func:`tile_contributions`) are the probe's intercept plus their mean."""
    contributions = tile_contributions(model, features, coords, patch_size_level0, max_tiles_per_pass, views)
    return additive_scores(contributions, probe, class_name)[0]


def _slide_log_odds(model, features, coords, masks, patch_size_level0, probe, class_name) -> np.ndarray:
    embedding = _forward(model, features, coords, masks, patch_size_level0).slide_embedding.float()
    return probe.log_odds(F.normalize(embedding, dim=1).cpu().numpy(), class_name)


def occlusion_scores(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    probe: SavedProbe,
    class_name: str,
    radius: int = 1,
    stride: int = 1,
    max_tiles_per_pass: int = 20000,
) -> np.ndarray:
    """`(n,)` drop of the slide's log-odds when the tiles within ``radius`` cells of a tile's block are removed.

    Equal to one whole-slide pass per block, but only the output sites a block can change are recomputed
    (:mod:`~giga_ssl_hf.inference.occlusion`), so the cost per block does not grow with the slide. NaN for a
    tile whose removal would leave the slide without tiles; a slide where that holds for every tile (one or two
    adjacent tiles at radius 1) is refused with a ValueError: there is no slide left to compare with.
    """
    if radius < 0 or stride < 1:
        raise ValueError(f"occlusion radius must be >= 0 and stride >= 1, got {radius} and {stride}")
    config = model.config
    cell_size = config.grid_cell_size if config.fixed_grid_cell_size else patch_size_level0
    cells = tile_cells(model, coords, patch_size_level0)
    blocks, block_of_tile = np.unique(cells // stride, axis=0, return_inverse=True)
    low, high = blocks * stride - radius, (blocks + 1) * stride - 1 + radius  # (k, 2) removed cell boxes
    whole_pass = np.ones(len(blocks), dtype=bool)
    if supports_local_occlusion(model):
        whole_pass = grid_changing_blocks(model, coords, cells, low, high, cell_size)
    logger.info("occlusion: %d blocks over %d tiles, %d of them by a whole-slide pass", len(blocks), len(cells),
                int(whole_pass.sum()))  # fmt: skip
    base = _slide_log_odds(model, features, coords, np.ones((1, len(cells)), dtype=bool), patch_size_level0,
                           probe, class_name)[0]  # fmt: skip
    drops = np.full(len(blocks), np.nan)
    local = np.flatnonzero(~whole_pass)
    if len(local):
        drops[local] = base - _local_log_odds(model, features, coords, cell_size, low[local], high[local], probe,
                                              class_name)  # fmt: skip
    spread = np.flatnonzero(whole_pass)
    drops[spread] = base - _whole_pass_log_odds(
        model, features, coords, cells, low[spread], high[spread], patch_size_level0, probe, class_name,
        max_tiles_per_pass,
    )  # fmt: skip
    if np.isnan(drops).all():
        raise ValueError(
            f"occlusion at radius {radius} removes all {len(cells)} tile(s) of the slide whichever tile is "
            "occluded: no slide is left to compare with (use --method embedding or a smaller --occlusion-radius)"
        )
    return drops[block_of_tile.reshape(-1)]


def _local_log_odds(model, features, coords, cell_size, low, high, probe, class_name) -> np.ndarray:
    """Slide log-odds with each box ``[low[k], high[k]]`` removed, recomputed around the box only."""
    box_span = int(high[0, 0] - low[0, 0])
    # Boxes reach radius + stride - 1 <= box_span cells past the grid, windows a few sites more.
    whole = WholeSlide.run(model, features, coords, cell_size, pad=box_span + 16)
    device = whole.input_features.device
    per_batch = copies_per_batch(model, box_span)
    log_odds = np.empty(len(low))
    for start in range(0, len(low), per_batch):
        part = slice(start, start + per_batch)
        embeddings = local_slide_embeddings(
            model, whole, torch.from_numpy(low[part]).to(device), torch.from_numpy(high[part]).to(device)
        )
        log_odds[part] = probe.log_odds(F.normalize(embeddings.float(), dim=1).cpu().numpy(), class_name)
    return log_odds


def _whole_pass_log_odds(
    model, features, coords, cells, low, high, patch_size_level0, probe, class_name, max_tiles_per_pass
) -> np.ndarray:
    """Slide log-odds with each box ``[low[k], high[k]]`` removed, by whole-slide passes (NaN: nothing left)."""
    n = len(cells)
    log_odds = np.full(len(low), np.nan)
    copies_per_pass = max(1, max_tiles_per_pass // n)
    for start in range(0, len(low), copies_per_pass):
        part = slice(start, start + copies_per_pass)
        removed = ((cells[None] >= low[part, None]) & (cells[None] <= high[part, None])).all(axis=2)  # (g, n)
        keeps = ~removed
        valid = keeps.any(axis=1)
        if valid.any():
            log_odds[start + np.flatnonzero(valid)] = _slide_log_odds(
                model, features, coords, keeps[valid], patch_size_level0, probe, class_name
            )
    return log_odds
