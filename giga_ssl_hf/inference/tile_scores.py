"""Per-tile scores of a saved linear probe on one slide: where on the slide the prediction comes from.

Two methods:

- ``embedding``: every tile of the slide goes through the encoder at once (whole-slide context), each tile
  gets its output site's embedding (``GigaSSLModel(..., output_tile_embeddings=True)``), L2-normalised like the
  slide embeddings the probe was fit on, and the probe's log-odds of the class. Slides with more tiles than
  ``max_tiles_per_pass`` go in square chunks of the grid, each with the 8-cell margin that ``layer4`` sees and
  the slide's extreme tiles (which fix the grid origin and map size), so the result equals one pass.
- ``occlusion`` (model-agnostic, a check on the first): the drop in the slide's log-odds when the tiles within
  ``radius`` cells of a tile are removed (positive: that neighbourhood speaks for the class). With ``stride``
  ``s > 1`` the tiles are grouped in ``s x s``-cell blocks that are removed together (with the margin). Each
  block's result equals a whole-slide pass without it, but only the output sites the block can change are
  recomputed (:mod:`~giga_ssl_hf.inference.occlusion`): the cost per block does not grow with the slide.
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


def _chunks(coords: np.ndarray, cells: np.ndarray, side: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(core tiles, tiles of the pass)`` per square block of ``side`` cells: the block, its margin, and the
    tiles that set the slide's grid origin (lowest coordinates) and map size (highest cells)."""
    extremes = np.unique(
        [coords[:, 0].argmin(), coords[:, 1].argmin(), cells[:, 0].argmax(), cells[:, 1].argmax()]
    )
    blocks = cells // side
    chunks = []
    for block in np.unique(blocks, axis=0):
        core = np.flatnonzero((blocks == block).all(axis=1))
        low, high = block * side - RECEPTIVE_MARGIN, (block + 1) * side - 1 + RECEPTIVE_MARGIN
        context = np.flatnonzero(((cells >= low) & (cells <= high)).all(axis=1))
        chunks.append((core, np.union1d(context, extremes)))
    return chunks


def tile_embeddings(
    model, features: np.ndarray, coords: np.ndarray, patch_size_level0: int, max_tiles_per_pass: int = 20000
) -> np.ndarray:
    """`(n, E)` float32 tile embeddings of one slide in whole-slide context (chunked above ``max_tiles_per_pass``)."""
    n = len(features)
    if n <= max_tiles_per_pass:
        out = _forward(model, features, coords, np.ones((1, n), dtype=bool), patch_size_level0, True)
        return out.tile_embeddings[0].float().cpu().numpy()
    if model.config.encoder_type == "mlp":  # no spatial context: any split of the tiles is exact
        parts = np.array_split(np.arange(n), -(-n // max_tiles_per_pass))
        chunks = [(part, part) for part in parts]
    else:
        side = int(np.sqrt(max_tiles_per_pass)) - 2 * RECEPTIVE_MARGIN
        if side < 2:
            raise ValueError(f"max_tiles_per_pass must be at least {(2 + 2 * RECEPTIVE_MARGIN) ** 2}")
        chunks = _chunks(coords, tile_cells(model, coords, patch_size_level0), side)
    result = np.zeros((n, model.config.hidden_dim), dtype=np.float32)
    logger.info("%d tiles in %d chunks", n, len(chunks))
    for core, context in chunks:
        everything = np.ones((1, len(context)), dtype=bool)
        out = _forward(model, features[context], coords[context], everything, patch_size_level0, True)
        result[core] = out.tile_embeddings[0, np.searchsorted(context, core)].float().cpu().numpy()
    return result


def embedding_scores(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    probe: SavedProbe,
    class_name: str,
    max_tiles_per_pass: int = 20000,
) -> np.ndarray:
    """`(n,)` log-odds of ``class_name`` for each tile's L2-normalised tile embedding."""
    embeddings = tile_embeddings(model, features, coords, patch_size_level0, max_tiles_per_pass)
    return probe.log_odds(F.normalize(torch.from_numpy(embeddings), dim=1).numpy(), class_name)


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
