"""Every slide of an exhaustive tile-feature Dataset embedded, views of several slides sharing forward passes.

A slide's embedding depends only on its own tiles, the model and the seed (see :mod:`.views`), and views are
batched so that the model never mixes slides within one sparse map size computation (``grid_size_mode="batch"``
models see one slide's views per forward).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .views import embed_slide, embed_views, mean_of_views, slide_views


def bad_slides(dataset) -> dict[str, str]:
    """``{slide_id: reason}`` of the rows of a tile-feature Dataset that cannot be embedded (no tiles, NaN/inf)."""
    from ..contracts.tile_features import TileArrays, without_indices_mapping

    dataset = without_indices_mapping(dataset)
    slide_ids = dataset.data.column("slide_id").to_pylist()
    return {
        str(slide_ids[row]): reason
        for row, reason in TileArrays.from_dataset(dataset).unusable_rows().items()
    }


def refuse_bad_slides(found: dict[str, str]) -> None:
    """Raise a ValueError naming the slides of :func:`bad_slides` (up to 10), if any."""
    if not found:
        return
    listed = "; ".join(f"{slide_id} ({reason})" for slide_id, reason in list(found.items())[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    raise ValueError(
        f"{len(found)} slide(s) cannot be embedded: {listed}{more}; re-extract them, or pass --skip-bad-slides "
        "to leave them out"
    )


class _SharedPasses:
    """Views of several slides gathered into one forward pass, each slide's embedding written when it runs."""

    def __init__(
        self, model, embeddings: np.ndarray, patch_sizes: np.ndarray, max_views: int, fractions=None
    ):
        self.model, self.embeddings, self.patch_sizes, self.max_views = (
            model,
            embeddings,
            patch_sizes,
            max_views,
        )
        self.fractions = fractions
        self.pending: list[
            tuple[int, np.ndarray, np.ndarray, np.ndarray]
        ] = []  # (slide, features, coords, mask)

    def add(self, slide: int, features: np.ndarray, coords: np.ndarray, mask: np.ndarray) -> None:
        if sum(len(p[1]) for p in self.pending) + len(features) > self.max_views:
            self.flush()
        self.pending.append((slide, features, coords, mask))

    def flush(self) -> None:
        if not self.pending:
            return
        features = np.concatenate([p[1] for p in self.pending])
        coords = np.concatenate([p[2] for p in self.pending])
        mask = np.concatenate([p[3] for p in self.pending])
        patch = np.concatenate([np.full(len(p[1]), self.patch_sizes[p[0]]) for p in self.pending])
        out = embed_views(self.model, features, coords, mask, patch, self.fractions)
        start = 0
        for slide, slide_features, _, _ in self.pending:
            self.embeddings[slide] = mean_of_views(out[start : start + len(slide_features)])
            start += len(slide_features)
        self.pending.clear()


def _exhaustive_slide_ids(dataset) -> list[str]:
    """The slide ids of an exhaustive tile-feature Dataset (one row each), refusing augmented rows."""
    from ..contracts import NO_AUGMENTATION

    aug_ids = np.asarray(dataset.data.column("aug_id").to_numpy())
    if (aug_ids != NO_AUGMENTATION).any():
        raise ValueError(
            "embedding needs the exhaustive (non-augmented) tile features: pass DIR/exhaustive of giga-ssl extract"
        )
    slide_ids = [str(s) for s in dataset.data.column("slide_id").to_pylist()]
    if len(set(slide_ids)) != len(slide_ids):
        raise ValueError("the exhaustive tile-feature Dataset has several rows for one slide")
    return slide_ids


def embed_tile_dataset(
    model,
    dataset,
    tile_sampling: str = "random",
    n_views: int = 100,
    n_tiles: int | None = None,
    seed: int = 0,
    max_views_per_batch: int = 4096,
    progress: bool = True,
    exclude: Collection[str] | None = None,
    top_site_fractions: list[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed the slides of an exhaustive tile-feature Dataset; returns ``(ids (N,), embeddings (N, E))``, or with
    ``top_site_fractions`` (a top-pooling model) ``(N, F * E)``, one unit-norm block per fraction.

    Slides without tiles or with NaN / inf features raise a ValueError naming them, before any work, unless
    the caller passes them as ``exclude`` (then they are left out of the result).
    Views of several slides share a forward pass (up to ``max_views_per_batch`` views) when the model's sparse
    map size is per slide; otherwise each slide's views go alone.
    """
    from tqdm.auto import tqdm

    from ..contracts.tile_features import TileArrays, without_indices_mapping

    if exclude is None:
        refuse_bad_slides(bad_slides(dataset))
        exclude = ()
    n_tiles = n_tiles or model.config.n_tiles
    dataset = without_indices_mapping(dataset)
    slide_ids = _exhaustive_slide_ids(dataset)
    arrays = TileArrays.from_dataset(dataset)
    patch_sizes = np.asarray(dataset.data.column("patch_size_level0").to_numpy())
    share_batches = getattr(model.config, "grid_size_mode", "per_slide") == "per_slide"
    width = model.config.hidden_dim * len(top_site_fractions or [None])
    embeddings = np.zeros((len(slide_ids), width), dtype=np.float32)
    passes = _SharedPasses(model, embeddings, patch_sizes, max_views_per_batch, top_site_fractions)
    excluded = set(exclude)
    kept = [slide for slide, slide_id in enumerate(slide_ids) if slide_id not in excluded]
    for slide in tqdm(kept, desc="embedding slides", unit="slide", disable=not progress):
        features, coords = arrays.row(slide)
        grid_xy = coords // patch_sizes[slide]
        index, mask = slide_views(
            len(features), grid_xy, slide_ids[slide], tile_sampling, n_views, n_tiles, seed
        )
        # A whole-slide view ("all") goes alone: its length is the slide's, unbounded by max_views_per_batch.
        if len(index) > max_views_per_batch or not share_batches or tile_sampling == "all":
            passes.flush()
            embeddings[slide] = embed_slide(
                model, features, coords, patch_sizes[slide], slide_ids[slide], tile_sampling, n_views, n_tiles, seed,
                max_views_per_batch, top_site_fractions,
            )  # fmt: skip
            continue
        passes.add(slide, features[index], coords[index], mask)
    passes.flush()
    return np.asarray(slide_ids)[kept], embeddings[kept]
