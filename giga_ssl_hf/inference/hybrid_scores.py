"""Additive tile scores of a probe fit on hybrid embeddings (``giga-ssl embed --concat-mean-pool``).

A hybrid embedding is the encoder's L2-normalised slide embedding followed by the slide's mean tile feature,
standardised over the cohort's slides (:func:`~giga_ssl_hf.features.pooling.standardise_over_slides`, whose
statistics ``embed`` records). The probe is linear in both halves, so its score splits exactly:

- the encoder half is a probe on the encoder's embedding (the hybrid probe's first ``hidden_dim`` weights and
  its intercept), decomposed by :func:`~giga_ssl_hf.inference.tile_scores.embedding_scores`;
- the mean-pool half is linear in the mean tile feature, so each tile gets the half's weights applied to its
  own feature, standardised with the same statistics: the mean over the tiles is the half's score exactly.

The sum of the two per tile adds up to the hybrid probe's score: intercept plus the mean of the tile scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas, datasets and torch are imported where used: heatmap's --help stays fast
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe


@dataclass
class HybridProbe:
    """A hybrid probe split into its encoder half (a probe of its own) and its mean-pool half."""

    encoder_half: SavedProbe
    mean_pool_half: SavedProbe  # zero intercept: the encoder half carries the probe's
    mean: np.ndarray  # (D,) the cohort's mean of the slides' mean tile features
    std: np.ndarray  # (D,) and their standard deviation

    @classmethod
    def split(cls, probe: SavedProbe, hidden_dim: int) -> HybridProbe:
        """Split ``probe`` at ``hidden_dim``, reading the statistics ``embed`` recorded in its metadata."""
        metadata = probe.embeddings_metadata
        mean, std = metadata.get("mean_pool_mean"), metadata.get("mean_pool_std")
        if mean is None or std is None:
            raise ValueError(
                "the probe was fit on hybrid embeddings that do not record their mean-pool statistics (made by an "
                "earlier version): embed again with --concat-mean-pool and re-save the probe"
            )
        if hidden_dim + len(mean) != probe.embedding_dim:
            raise ValueError(
                f"the hybrid probe takes {probe.embedding_dim}-d embeddings, not the model's {hidden_dim} plus "
                f"{len(mean)} mean-pool dimensions"
            )

        from giga_ssl_hf.evaluation.saved_probe import SavedProbe

        def half(columns: slice, intercept: np.ndarray) -> SavedProbe:
            scaler = {}
            if probe.standardize:
                scaler = {
                    "scaler_mean": probe.scaler_mean[columns],
                    "scaler_scale": probe.scaler_scale[columns],
                }
            return SavedProbe(probe.classes, probe.coef[:, columns], intercept, **scaler, info=probe.info)

        return cls(
            half(slice(0, hidden_dim), probe.intercept),
            half(slice(hidden_dim, None), np.zeros_like(probe.intercept)),
            np.asarray(mean, dtype=np.float64),
            np.asarray(std, dtype=np.float64),
        )

    def mean_pool_scores(self, features: np.ndarray, class_name: str) -> np.ndarray:
        """`(n,)` the mean-pool half's share of each tile: its weights on the tile's own standardised feature."""
        from giga_ssl_hf.features.pooling import standardise_over_slides
        from giga_ssl_hf.inference.tile_scores import additive_direction

        weight, _, centre = additive_direction(self.mean_pool_half, class_name)
        standardised = standardise_over_slides(np.asarray(features, dtype=np.float64), self.mean, self.std)
        return (standardised.astype(np.float64) - centre) @ weight


def is_hybrid(probe: SavedProbe) -> bool:
    """Whether ``probe`` was fit on hybrid embeddings (recorded by ``embed --concat-mean-pool``)."""
    return bool(probe.embeddings_metadata.get("concat_mean_pool"))
