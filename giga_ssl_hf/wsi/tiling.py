"""Tile grids at a target resolution and block-wise tile reading.

A tile covers ``patch_size_level0`` level-0 px, so that it shows ``tile_size`` px at ``target_mpp``; tiles
sit on the grid ``(i * patch_size_level0, j * patch_size_level0)`` (coordinates are the level-0 (x, y) of
the top-left corner). They are read from the coarsest pyramid level that does not need upsampling and
resized to ``tile_size`` when the level does not match exactly.

Reading is done in blocks: each run of consecutive kept tiles of a grid row is one ``read_region`` call,
split into tiles afterwards. Fewer, larger calls amortise OpenSlide's per-call overhead and decode each
JPEG tile of the file once, while a block never exceeds ``max_block_px`` wide, so memory stays bounded.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from giga_ssl_hf.wsi.slide import Slide
from giga_ssl_hf.wsi.tissue import TissueMask

logger = logging.getLogger(__name__)

MAX_UPSAMPLE = 2.0  # tiles needing more upsampling than this are refused (the slide is too coarse)


@dataclass
class TileGrid:
    """The kept tiles of a slide and how to read them."""

    coords: np.ndarray  # (n, 2) int64 level-0 (x, y) of the top-left corners, row-major order
    tissue: np.ndarray  # (n,) float32 tissue fraction of each tile
    patch_size_level0: int
    tile_size: int
    level: int  # pyramid level tiles are read from
    read_size: int  # tile side at ``level``, in level px, before resizing to ``tile_size``
    n_candidates: int  # grid positions inside the slide, before the tissue filter
    reason: str | None = None  # why the grid is empty when no tile could be cut at all

    def __len__(self) -> int:
        return len(self.coords)


def tile_grid(
    slide: Slide,
    *,
    tile_size: int = 224,
    target_mpp: float = 1.0,
    mask: TissueMask | None = None,
    min_tissue: float = 0.5,
) -> TileGrid:
    """The grid of ``tile_size`` px tiles at ``target_mpp`` µm/px keeping tiles with >= ``min_tissue``.

    The grid covers the whole slide: tiles at the right and bottom edges extend past it (reads fill that
    part with white, like glass), and their tissue fraction is over the whole tile, so an edge tile is kept
    when its part inside the slide holds enough tissue. Without ``mask`` the fraction is the part of the
    tile inside the slide.
    """
    patch_size_level0 = int(round(tile_size * target_mpp / slide.mpp))
    width0, height0 = slide.dimensions
    empty = np.zeros((0, 2), dtype=np.int64)
    if patch_size_level0 < 1 or tile_size / patch_size_level0 > MAX_UPSAMPLE:
        reason = (
            f"slide resolution {slide.mpp:.4g} µm/px is too coarse for {tile_size} px tiles at "
            f"{target_mpp:g} µm/px (tiles would be upsampled {slide.mpp / target_mpp:.3g}x); "
            "pass --mpp with --override-mpp if the slide metadata is wrong"
        )
        return TileGrid(empty, np.zeros(0, np.float32), max(patch_size_level0, 1), tile_size, 0, 1, 0, reason)
    level = slide.best_level(patch_size_level0 / tile_size)
    read_size = max(1, int(round(patch_size_level0 / slide.level_downsamples[level])))
    xs = np.arange(0, width0, patch_size_level0, dtype=np.int64)
    ys = np.arange(0, height0, patch_size_level0, dtype=np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    n_candidates = len(coords)
    if mask is None:
        inside = np.minimum(coords + patch_size_level0, (width0, height0)) - coords
        tissue = (inside.prod(axis=1) / patch_size_level0**2).astype(np.float32)
    else:
        tissue = tissue_fractions(mask, coords, patch_size_level0, (width0, height0))
    keep = tissue >= min_tissue
    return TileGrid(
        coords=coords[keep],
        tissue=tissue[keep],
        patch_size_level0=patch_size_level0,
        tile_size=tile_size,
        level=level,
        read_size=read_size,
        n_candidates=n_candidates,
    )


def tissue_fractions(
    mask: TissueMask, coords: np.ndarray, patch_size_level0: int, dimensions: tuple[int, int]
) -> np.ndarray:
    """Fraction of each tile's area covered by set mask pixels (summed-area table; a tile spans at least one
    mask px). The part of an edge tile outside the slide counts as no tissue."""
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    height, width = mask.mask.shape
    scale_x, scale_y = width / dimensions[0], height / dimensions[1]  # mask px per level-0 px
    integral = np.zeros((height + 1, width + 1), dtype=np.int64)
    integral[1:, 1:] = mask.mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.clip(np.floor(coords[:, 0] * scale_x + 0.5).astype(np.int64), 0, width - 1)
    y0 = np.clip(np.floor(coords[:, 1] * scale_y + 0.5).astype(np.int64), 0, height - 1)
    x1_full = np.maximum(
        np.floor((coords[:, 0] + patch_size_level0) * scale_x + 0.5).astype(np.int64), x0 + 1
    )
    y1_full = np.maximum(
        np.floor((coords[:, 1] + patch_size_level0) * scale_y + 0.5).astype(np.int64), y0 + 1
    )
    x1, y1 = np.minimum(x1_full, width), np.minimum(y1_full, height)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (inside / ((x1_full - x0) * (y1_full - y0))).astype(np.float32)


@dataclass(frozen=True)
class _Block:
    indices: np.ndarray  # tile indices into grid.coords
    offsets: np.ndarray  # x offset of each tile inside the block, in level px
    location: tuple[int, int]  # level-0 (x, y) of the block
    size: tuple[int, int]  # block (w, h) in level px


def plan_blocks(slide: Slide, grid: TileGrid, max_block_px: int = 8192) -> list[_Block]:
    """Runs of horizontally adjacent kept tiles, at most ``max_block_px`` level px wide."""
    if len(grid) == 0:
        return []
    step = grid.patch_size_level0
    downsample = slide.level_downsamples[grid.level]
    per_block = max(1, max_block_px // grid.read_size)
    cells = grid.coords // step
    blocks = []
    start = 0
    n = len(grid)
    for i in range(1, n + 1):
        run_ends = (
            i == n
            or cells[i, 1] != cells[i - 1, 1]
            or cells[i, 0] != cells[i - 1, 0] + 1
            or i - start >= per_block
        )
        if not run_ends:
            continue
        indices = np.arange(start, i)
        x0, y0 = (int(v) for v in grid.coords[start])
        # Offsets are rounded per tile (not accumulated) so that non-integer downsamples do not drift.
        offsets = np.round((grid.coords[indices, 0] - x0) / downsample).astype(np.int64)
        width = int(offsets[-1]) + grid.read_size
        blocks.append(_Block(indices, offsets, (x0, y0), (width, grid.read_size)))
        start = i
    return blocks


def _read_block(slide: Slide, grid: TileGrid, block: _Block) -> tuple[np.ndarray, torch.Tensor]:
    region = torch.from_numpy(slide.read_region(block.location, grid.level, block.size)).permute(2, 0, 1)
    return block.indices, split_block(region, grid, block)


def split_block(region: torch.Tensor, grid: TileGrid, block: _Block) -> torch.Tensor:
    """The tiles ``(k, 3, tile_size, tile_size)`` uint8 of a block's region ``(3, h, w)`` uint8 (any device)."""
    size = grid.read_size
    tensor = torch.stack([region[:, :size, offset : offset + size] for offset in block.offsets.tolist()])
    if size != grid.tile_size:
        resized = F.interpolate(
            tensor.float(),
            size=(grid.tile_size, grid.tile_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        tensor = resized.round_().clamp_(0, 255).to(torch.uint8)
    return tensor.contiguous()


ReadBlock = Callable[[Slide, TileGrid, _Block], tuple[np.ndarray, torch.Tensor]]


def iter_tile_blocks(
    slide: Slide,
    grid: TileGrid,
    *,
    max_block_px: int = 8192,
    num_workers: int = 1,
    prefetch: int = 4,
    read_block: ReadBlock | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(tile indices, uint8 tiles (k, 3, tile_size, tile_size))`` block by block, in grid order.

    With ``num_workers >= 1`` blocks are read by background threads (OpenSlide and the resize release the
    GIL), at most ``prefetch`` blocks ahead, so reading overlaps with whatever consumes the tiles.
    ``read_block`` reads one block (default: OpenSlide ``read_region``; see :mod:`giga_ssl_hf.wsi.raw_tiles`).
    """
    read_block = read_block or _read_block
    blocks = plan_blocks(slide, grid, max_block_px)
    if num_workers <= 0:
        for block in blocks:
            yield read_block(slide, grid, block)
        return
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="tile-reader")
    try:
        pending: deque = deque()
        upcoming = iter(blocks)
        for block in upcoming:
            pending.append(pool.submit(read_block, slide, grid, block))
            if len(pending) >= max(1, prefetch):
                break
        while pending:
            result = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(read_block, slide, grid, following))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
