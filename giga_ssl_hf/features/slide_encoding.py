"""One slide through the tile encoder: its tile grid, the tiles of its shared augmentations, and the features of
both passes, reading each tile region once (:func:`encode_slide`; :func:`process_slide` adds the slide's
opening, tile selection, thumbnail and manifest record).

Each kept tile region is decoded at most once, then encoded as-is for the exhaustive pass and through the
augmentations of the views that sampled it. Augmentation draws are seeded from the config's seed and the
slide id, so results do not depend on the order slides are processed in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from giga_ssl_hf.contracts.extraction_folder import AUGMENTED, EXHAUSTIVE
from giga_ssl_hf.features.extraction_settings import BOTH_PASSES, ExtractionConfig

if TYPE_CHECKING:
    import torch
    from tqdm.auto import tqdm

    from giga_ssl_hf.features.augment import AugmentationParams, SharedAugmentation
    from giga_ssl_hf.features.encoders import EncoderRunner
    from giga_ssl_hf.wsi.tiling import ReadBlock, TileGrid


class PassProgress:
    """A progress bar per pass, counting encoded images (the augmented pass: one per (tile, view) pair)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.encoded: dict[str, int] = {}
        self.bars: dict[str, tqdm] = {}

    def update(self, which: str, count: int) -> None:
        from tqdm.auto import tqdm

        if which not in self.bars:
            # A slide redone for one pass also recomputes the pass it keeps: bars appear as passes run.
            self.bars[which] = tqdm(
                desc=f"{which} tiles", unit="tile", disable=not self.enabled, position=len(self.bars) + 1
            )
            self.encoded[which] = 0
        self.encoded[which] += count
        self.bars[which].update(count)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _Batcher:
    """Accumulates images until ``batch_size``, encodes them and stores features at their target rows."""

    def __init__(self, runner: EncoderRunner, out: np.ndarray, batch_size: int):
        self.runner, self.out, self.batch_size = runner, out, batch_size
        self.images: list[torch.Tensor] = []
        self.targets: list[np.ndarray] = []
        self.count = 0

    def add(self, images: torch.Tensor, targets: np.ndarray) -> None:
        self.images.append(images)
        self.targets.append(targets)
        self.count += len(targets)
        if self.count >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        import torch

        if not self.count:
            return
        features = self.runner(torch.cat(self.images))
        self.out[np.concatenate(self.targets)] = features.numpy()
        self.images, self.targets, self.count = [], [], 0


def augmented_tile_indices(
    grid: TileGrid, config: ExtractionConfig, generator: torch.Generator
) -> np.ndarray:
    """Tiles of each shared augmentation ``(n_aug, k)``: ``n_tiles_per_aug`` drawn with replacement (``random``,
    the paper's), the ``n_tiles_per_aug`` tiles nearest a random tile (``window``: contiguous, for window
    views; ``k`` = min(n_tiles_per_aug, n)), or every tissue tile (``all``: ``k = n``)."""
    import torch

    from giga_ssl_hf.features.windows import window_indices

    n = len(grid)
    if config.tile_sampling == "random":
        return torch.randint(n, (config.n_aug, config.n_tiles_per_aug), generator=generator).numpy()
    if config.tile_sampling == "all":
        return np.broadcast_to(np.arange(n), (config.n_aug, n))
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    centres = rng.integers(0, n, size=config.n_aug)
    return window_indices(grid.coords // grid.patch_size_level0, centres, min(config.n_tiles_per_aug, n), rng)


@dataclass
class _SharedViews:
    """A slide's shared augmentations as unique (tile, view) pairs: a tile drawn twice in a view gets the same
    augmentation, hence the same features, so each pair is encoded once. Pairs are sorted by tile, so the
    pairs of a block of tiles are one contiguous range."""

    augmentation: SharedAugmentation
    params: list[AugmentationParams]
    sampled: np.ndarray  # (n_aug, k) tile of each view's position
    inverse: np.ndarray  # pair of each view position
    pair_tile: np.ndarray
    pair_view: np.ndarray

    @classmethod
    def draw(cls, grid: TileGrid, config: ExtractionConfig, slide_id: str) -> _SharedViews:
        import torch

        from giga_ssl_hf.features.augment import SharedAugmentation
        from giga_ssl_hf.runtime import slide_seed

        augmentation = SharedAugmentation(grid.tile_size)
        generator = torch.Generator().manual_seed(slide_seed(config.seed, slide_id))
        sampled = augmented_tile_indices(grid, config, generator)
        params = [augmentation.sample(generator) for _ in range(config.n_aug)]
        views = np.broadcast_to(np.arange(config.n_aug)[:, None], sampled.shape)
        pairs, inverse = np.unique(sampled * config.n_aug + views, return_inverse=True)
        return cls(augmentation, params, sampled, inverse, pairs // config.n_aug, pairs % config.n_aug)

    def encode_block(self, batcher: _Batcher, tiles: torch.Tensor, indices: np.ndarray) -> int:
        """Queue the augmented images of the pairs whose tile is in this block; returns their number."""
        lo, hi = np.searchsorted(self.pair_tile, [indices[0], indices[-1] + 1])
        position_of = {int(tile): i for i, tile in enumerate(indices)}
        for start in range(lo, hi, batcher.batch_size):
            chunk = np.arange(start, min(hi, start + batcher.batch_size))
            for view in np.unique(self.pair_view[chunk]):
                selected = chunk[self.pair_view[chunk] == view]
                rows = [position_of[int(tile)] for tile in self.pair_tile[selected]]
                batcher.add(self.augmentation.apply(tiles[rows], self.params[int(view)]), selected)
        return int(hi - lo)


def encode_slide(
    slide,
    grid: TileGrid,
    runner: EncoderRunner,
    config: ExtractionConfig,
    slide_id: str,
    *,
    passes: Sequence[str] = BOTH_PASSES,
    batch_size: int = 64,
    num_readers: int = 1,
    progress: PassProgress | None = None,
    read_block: ReadBlock | None = None,
) -> dict[str, np.ndarray]:
    """Features of a slide's tiles for ``passes``, reading each tile region once.

    Returns ``exhaustive_features (n, D)``, ``exhaustive_coords (n, 2)``, ``augmented_features
    (n_aug, k, D)``, ``augmented_coords (n_aug, k, 2)`` (those of the passes asked for), in ``config.dtype``.
    """
    from giga_ssl_hf.wsi import iter_tile_blocks

    n, dim = len(grid), runner.feature_dim
    features: dict[str, np.ndarray] = {}
    batchers: dict[str, _Batcher] = {}
    if EXHAUSTIVE in passes:
        features[EXHAUSTIVE] = np.empty((n, dim), dtype=np.float32)
    if AUGMENTED in passes:
        views = _SharedViews.draw(grid, config, slide_id)
        features[AUGMENTED] = np.empty((len(views.pair_tile), dim), dtype=np.float32)
    for which, out in features.items():
        batchers[which] = _Batcher(runner, out, batch_size)
    # An augmentation-only run reads just the tiles some view sampled.
    read_indices = np.arange(n) if EXHAUSTIVE in passes else np.unique(views.pair_tile)
    subset = dataclasses.replace(grid, coords=grid.coords[read_indices], tissue=grid.tissue[read_indices])
    for block_positions, tiles in iter_tile_blocks(
        slide, subset, num_workers=num_readers, read_block=read_block
    ):
        indices = read_indices[block_positions]
        counts = {}
        if EXHAUSTIVE in batchers:
            batchers[EXHAUSTIVE].add(tiles, indices)
            counts[EXHAUSTIVE] = len(indices)
        if AUGMENTED in batchers:
            counts[AUGMENTED] = views.encode_block(batchers[AUGMENTED], tiles, indices)
        for which, count in counts.items():
            if progress is not None:
                progress.update(which, count)
    for batcher in batchers.values():
        batcher.flush()
    result: dict[str, np.ndarray] = {}
    if EXHAUSTIVE in features:
        result["exhaustive_features"] = features[EXHAUSTIVE].astype(config.dtype)
        result["exhaustive_coords"] = grid.coords.astype(np.int64)
    if AUGMENTED in features:
        pair_features = features[AUGMENTED][views.inverse.reshape(-1)].reshape(*views.sampled.shape, dim)
        result["augmented_features"] = pair_features.astype(config.dtype)
        result["augmented_coords"] = grid.coords[views.sampled].astype(np.int64)
    return result


@dataclass(frozen=True)
class SlideOptions:
    """How one slide is read and encoded (none of it changes the features)."""

    passes: tuple[str, ...]
    mpp: float | None = None  # fallback level-0 µm/px (a slide's own from a slides CSV wins)
    override_mpp: bool = False
    batch_size: int = 64
    num_readers: int = 1
    decode: str = "auto"
    thumbnails_dir: Path | None = None  # with --thumbnails: where <slide_id>.png goes


def _tiling_record(slide, mask, grid: TileGrid, source: dict) -> dict:
    """The manifest fields of a slide's tiling."""
    return {
        "n_tiles": len(grid),
        "n_candidates": grid.n_candidates,
        "patch_size_level0": grid.patch_size_level0,
        "level": grid.level,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "magnification": None if math.isnan(slide.magnification) else slide.magnification,
        "tissue_fraction": None if mask is None else mask.tissue_fraction,
        **source,
    }


def process_slide(
    path: Path,
    slide_id: str,
    runner: EncoderRunner,
    config: ExtractionConfig,
    options: SlideOptions,
    progress,
) -> tuple[dict, dict | None]:
    """Record (manifest fields) and arrays of one slide; exceptions are the caller's to record."""
    from giga_ssl_hf.wsi import open_slide, raw_tiles, save_thumbnail
    from giga_ssl_hf.wsi.tile_sources import select_tiles

    tiling = {
        name: getattr(config, name)
        for name in ("tile_size", "target_mpp", "min_tissue", "mask_mpp", "saturation_threshold")
        + ("min_saturation", "coords_from", "tissue_geojson")
    }
    with open_slide(path, options.mpp, override_mpp=options.override_mpp) as slide:
        mask, grid, source = select_tiles(slide, slide_id, **tiling)
        if options.thumbnails_dir is not None:
            save_thumbnail(options.thumbnails_dir / f"{slide_id}.png", slide, mask, grid)
        record = _tiling_record(slide, mask, grid, source)
        if len(grid) == 0:
            # "empty" is a slide without tissue; a slide that cannot be tiled at all is an error.
            record.update(status="empty" if grid.reason is None else "failed", error=grid.reason)
            return record, None
        record["decoder"] = raw_tiles.resolve_decoder(options.decode, slide, grid.level, runner.device)
        reader = raw_tiles.block_reader(record["decoder"], slide, grid.level, runner.device)
        try:
            arrays = encode_slide(
                slide,
                grid,
                runner,
                config,
                slide_id,
                passes=options.passes,
                batch_size=options.batch_size,
                num_readers=raw_tiles.reader_threads(record["decoder"], options.num_readers),
                progress=progress,
                read_block=reader,
            )
        finally:
            if reader is not None:
                reader.close()
    record.update(status="ok", error=None)
    return record, arrays
