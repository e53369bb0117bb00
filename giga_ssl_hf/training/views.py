"""Slide views for SimCLR: tiles of one shared augmentation, sampled with replacement, coordinates jittered.

A view of a slide = one of its augmentations picked at random, ``n_tiles`` of that augmentation's tiles (drawn
with replacement for ``random`` views, the paper's; the ``n_tiles`` tiles nearest a random tile of the row for
``window`` views, so that the sparse CNN sees neighbourhoods; ``window-pair``: the windows of one slide's views
are all centred on the same grid cell), and a random transform of their grid positions
(rotation, flip per axis, scale per axis in [0.7, 1.3]). Everything is vectorised over a batch of slides and read through zero-copy
numpy views of the memory-mapped Arrow columns (:class:`~giga_ssl_hf.contracts.tile_features.TileArrays`).

Randomness is a pure function of ``(seed, epoch, slide index)``: a batch's views do not depend on which
process or DataLoader worker draws them, so resuming at step N replays exactly the views of an uninterrupted
run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch

from ..contracts import NO_AUGMENTATION
from ..contracts.tile_features import TileArrays, without_indices_mapping
from ..contracts.tile_sampling import VIEW_SAMPLINGS
from ..features.windows import window_indices


@dataclass(frozen=True)
class CoordinateAugmentation:
    """Random transform of a view's tile positions (in grid cells).

    There is no translation: the encoder anchors every slide at its own minimum before truncating positions to
    cells (as the original did), so shifting a whole view, by whole or fractional cells, changes nothing.
    """

    rotation: bool = True
    flips: bool = True
    scale_range: tuple[float, float] = (0.7, 1.3)

    def __call__(self, grid_xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """grid_xy `(V, n, 2)` float -> transformed `(V, n, 2)`; one transform per view."""
        views = grid_xy.shape[0]
        xy = grid_xy - grid_xy.mean(axis=1, keepdims=True)  # rotate and scale about the view's centre
        if self.flips:
            xy = xy * np.where(rng.random((views, 1, 2)) < 0.5, -1.0, 1.0)
        low, high = self.scale_range
        xy = xy * rng.uniform(low, high, size=(views, 1, 2))
        if self.rotation:
            angle = rng.uniform(0.0, 2 * math.pi, size=views)
            cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
            xy = np.stack([cos * xy[..., 0] - sin * xy[..., 1], sin * xy[..., 0] + cos * xy[..., 1]], axis=-1)
        return xy


class SlideViews(torch.utils.data.Dataset):
    """Two-view (or k-view) samples of the slides of a tile-feature Dataset.

    Index with a list of ``(epoch, slide_index)`` keys (``__getitems__``, as a DataLoader with a batch sampler
    does) to get one batch::

        {"tile_features": (B, n_views, n_tiles, D) float32, "tile_coords": (B, n_views, n_tiles, 2) float32
         level-0 px, "patch_size_level0": (B,) float32, "slide_index": (B,) int64}

    Args:
        dataset: augmented (one row per slide and augmentation) or exhaustive tile-feature Dataset.
        n_tiles: tiles per view.
        n_views: views per slide (2 for SimCLR).
        seed: base seed.
        coordinate_augmentation: None keeps the tiles' positions as they are.
        tile_sampling: ``random`` (tiles drawn with replacement from the row, the paper's) or ``window`` (the
            ``n_tiles`` tiles nearest a random tile of the row: a spatially contiguous window; meaningful when
            the augmentation rows hold contiguous tiles, e.g. ``extract --tile-sampling window`` or ``all``), or
            ``window-pair`` (windows of every view of a slide centred on one grid cell: two views at different places
            share only what is the same everywhere on the slide, such as composition and stain, so SimCLR would
            reward those; views of one place must agree on its local arrangement).
        places_per_slide: with ``window-pair``, each slide of a batch is drawn at this many places, each place one
            SimCLR instance (its views are the positives): the slide's other places are among the negatives, so
            what is constant over the slide no longer tells instances apart. The batch holds ``B * places`` rows.
        view_offset: with ``window-pair``, each later view's centre is the tile nearest the first's moved by up to
            this many grid cells per axis (overlapping, not identical windows).
        disjoint_views: with ``window-pair``, the views deal out the tiles of one window of ``n_views * n_tiles``
            tiles at random: the same place, no tile in common, so that matching a tile's own noise cannot tell
            the views' instance; they must agree on what the place holds and how it is laid out.
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        n_tiles: int,
        n_views: int = 2,
        seed: int = 0,
        coordinate_augmentation: CoordinateAugmentation | None = CoordinateAugmentation(),
        tile_sampling: str = "random",
        places_per_slide: int = 1,
        view_offset: int = 0,
        disjoint_views: bool = False,
    ):
        if tile_sampling not in VIEW_SAMPLINGS:
            raise ValueError(f"tile_sampling must be one of {VIEW_SAMPLINGS}, got {tile_sampling!r}")
        if (places_per_slide != 1 or view_offset or disjoint_views) and tile_sampling != "window-pair":
            raise ValueError(
                "places_per_slide, view_offset and disjoint_views apply to window-pair views only"
            )
        if places_per_slide < 1 or view_offset < 0:
            raise ValueError("places_per_slide must be at least 1 and view_offset not negative")
        self.tile_sampling, self.places_per_slide = tile_sampling, places_per_slide
        self.view_offset, self.disjoint_views = view_offset, disjoint_views
        dataset = without_indices_mapping(dataset)
        self.arrays = TileArrays.from_dataset(dataset)
        self.n_tiles, self.n_views, self.seed = n_tiles, n_views, seed
        self.coordinate_augmentation = coordinate_augmentation
        slide_ids = np.asarray(dataset.data.column("slide_id").to_numpy(zero_copy_only=False), dtype=object)
        self.aug_ids = dataset.data.column("aug_id").to_numpy()
        self.slide_ids, row_slide = np.unique(slide_ids, return_inverse=True)
        # Rows of slide s: self.rows_by_slide[self.slide_row_start[s] : ... + self.slide_row_count[s]]
        self.rows_by_slide = np.argsort(row_slide, kind="stable")
        self.slide_row_count = np.bincount(row_slide, minlength=len(self.slide_ids))
        self.slide_row_start = np.concatenate([[0], np.cumsum(self.slide_row_count)[:-1]])
        patch = dataset.data.column("patch_size_level0").to_numpy().astype(np.float32)
        self.patch_size_level0 = patch[self.rows_by_slide[self.slide_row_start]]  # (n_slides,)

    def __len__(self) -> int:
        return len(self.slide_ids)

    @property
    def has_augmentations(self) -> bool:
        return bool(np.any(self.aug_ids != NO_AUGMENTATION))

    def rng(self, epoch: int, slide_indices: np.ndarray) -> np.random.Generator:
        # One stream per (seed, epoch, batch content): any process or worker drawing this batch gets these views.
        return np.random.default_rng([self.seed, epoch, *np.asarray(slide_indices).tolist()])

    def sample(self, slide_indices: np.ndarray, epoch: int = 0) -> dict[str, torch.Tensor]:
        slide_indices = np.asarray(slide_indices, dtype=np.int64)
        rng = self.rng(epoch, slide_indices)
        slide_indices = np.repeat(slide_indices, self.places_per_slide)
        shape = (len(slide_indices), self.n_views)
        # One random row (= augmentation) per view, then n_tiles of its tiles with replacement.
        counts = self.slide_row_count[slide_indices][:, None]
        pick = (rng.random(shape) * counts).astype(np.int64)
        rows = self.rows_by_slide[self.slide_row_start[slide_indices][:, None] + pick]  # (B, V)
        lengths = self.arrays.row_length[rows]  # (B, V)
        if (lengths == 0).any():
            raise ValueError("a slide row without tiles reached the view sampler")
        patch = self.patch_size_level0[slide_indices]  # (B,)
        if self.tile_sampling != "random":
            shared = self.tile_sampling == "window-pair"
            tile_index = self._window_index(rows, patch, rng, shared_centre=shared)
        else:
            tile_index = (rng.random((*shape, self.n_tiles)) * lengths[..., None]).astype(np.int64)
        features, coords = self.arrays.gather(rows.reshape(-1), tile_index.reshape(-1, self.n_tiles))
        coords = coords.astype(np.float32)
        if self.coordinate_augmentation is not None:
            cell = np.repeat(patch, self.n_views)[:, None, None]
            coords = self.coordinate_augmentation(coords / cell, rng) * cell
        return {
            "tile_features": torch.from_numpy(features.reshape(*shape, self.n_tiles, -1)).float(),
            "tile_coords": torch.from_numpy(coords.reshape(*shape, self.n_tiles, 2).astype(np.float32)),
            "patch_size_level0": torch.from_numpy(patch),
            "slide_index": torch.from_numpy(slide_indices),
        }

    def _window_index(
        self, rows: np.ndarray, patch: np.ndarray, rng: np.random.Generator, shared_centre: bool
    ) -> np.ndarray:
        """``(B * V, n_tiles)`` within-row indices of windows in rows ``(B, V)``: each around a random tile of its
        row, or (``shared_centre``) every view of a slide around the tile of its row nearest one random cell."""
        index = np.empty((rows.size, self.n_tiles), dtype=np.int64)
        n_views = rows.shape[1]
        # Disjoint views: one window of every view's tiles, dealt out at random (a tile is in one view only).
        size = self.n_tiles * n_views if self.disjoint_views else self.n_tiles
        for slide, (slide_rows, cell) in enumerate(zip(rows, patch)):
            centre_cell = None
            deal = rng.permutation(size).reshape(-1, self.n_tiles) if self.disjoint_views else None
            tie_seed = int(rng.integers(2**62)) if shared_centre else None
            for view, row in enumerate(slide_rows):
                grid_xy = self.arrays.row(row)[1] // cell
                if centre_cell is None or not shared_centre:
                    centre = rng.integers(0, len(grid_xy), size=1)
                    centre_cell = grid_xy[centre[0]]
                else:  # augmentation rows may hold different tiles: the one nearest the (moved) shared cell
                    moved = centre_cell + rng.integers(-self.view_offset, self.view_offset + 1, size=2)
                    centre = np.array([np.abs(grid_xy - moved).sum(axis=1).argmin()])
                # One tie-break stream per slide: views of rows holding the same tiles get the same window.
                ties = np.random.default_rng(tie_seed) if shared_centre else rng
                window = window_indices(grid_xy, centre, size, ties)[0]
                index[slide * n_views + view] = window if deal is None else window[deal[view]]
        return index

    def __getitems__(self, keys: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        epochs = {epoch for epoch, _ in keys}
        if len(epochs) != 1:
            raise ValueError("a batch must come from one epoch")
        return self.sample(np.array([index for _, index in keys]), epochs.pop())

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        return self.__getitems__([key])


class EpochBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of ``(epoch, slide_index)`` keys; the order depends only on ``(seed, epoch)``.

    Accelerate shards it across processes (each takes whole batches), so ranks see different slides.
    """

    def __init__(self, n_slides: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        self.n_slides, self.batch_size, self.seed, self.drop_last = n_slides, batch_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.n_slides, self.batch_size)
        return full if self.drop_last or not rest else full + 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_slides)
        for batch in range(len(self)):
            chunk = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield [(self.epoch, int(index)) for index in chunk]


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The sampler already returns a collated batch (``__getitems__``)."""
    return batch
