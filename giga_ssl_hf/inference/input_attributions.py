"""Integrated gradients of a saved probe's slide score with respect to each tile's input feature vector.

The slide score ``F(X)`` is the probe's score of the L2-normalised slide embedding of the tile features ``X``
`(n, D)` (the model on one pass of all the tiles, or the mean of the probe's views), as in
:func:`~giga_ssl_hf.inference.tile_scores.additive_direction`: the log-odds for two classes. Integrated gradients
(Sundararajan et al., 2017) move every tile together from a baseline ``X'`` to ``X`` and give tile ``i`` the
attribution ``(x_i - x'_i) . mean_k grad_i F(X' + a_k (X - X'))`` (``a_k`` the midpoints of ``steps`` equal
intervals). By completeness their sum is ``F(X) - F(X')`` up to the quadrature error, which falls with
``steps`` and is logged. Tile scores are ``n`` times the attributions, so that

    F(X) = F(X') + mean(tile scores)        (the baseline's score plays the probe intercept's part)

Baseline: every tile replaced by the slide's own mean tile feature, at its own position. The map then shows
how each tile's difference from the slide's average tile moves the score, which leaves out what all the
slide's tiles share (a stain shift, the slide's signature); for a model linear in the mean tile feature (mean
pooling) it ranks the tiles exactly as the probe's direction applied to each tile.

Unlike the site shares of :func:`~giga_ssl_hf.inference.tile_scores.embedding_scores`, the attribution reaches
the input tiles through the encoder, so the map has the tiles' own resolution rather than the stride-2 sites'.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from giga_ssl_hf.inference.tile_scores import additive_direction

if TYPE_CHECKING:
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe

logger = logging.getLogger(__name__)


class _SlideScore(torch.nn.Module):
    """``F``: tile features `(B, n, D)` of ``B`` copies of one slide -> `(B,)` probe scores of their embeddings."""

    def __init__(self, model, coords, patch_size_level0, probe, class_name, views):
        super().__init__()
        self.model, self.views = model, views
        device = next(model.parameters()).device
        self.coords = torch.from_numpy(np.array(coords, dtype=np.int64)).to(device)
        self.patch_size_level0 = patch_size_level0
        weight, bias, centre = additive_direction(probe, class_name)
        self.weight = torch.from_numpy(weight).to(device)
        self.offset = bias - float(weight @ centre)

    def _embeddings(self, features: torch.Tensor, coords: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        patch = torch.full((len(features),), self.patch_size_level0, device=features.device)
        return self.model(
            tile_features=features, tile_coords=coords, tile_mask=mask, patch_size_level0=patch
        ).slide_embedding

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        copies = len(features)
        if self.views is None:
            mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
            embeddings = self._embeddings(features, self.coords.expand(copies, -1, -1), mask)
        else:
            index, mask = (torch.from_numpy(np.asarray(a)).to(features.device) for a in self.views)
            n_views, k = index.shape
            view_features = features[:, index].reshape(copies * n_views, k, -1)
            view_coords = self.coords[index].expand(copies, -1, -1, -1).reshape(copies * n_views, k, 2)
            view_masks = mask.expand(copies, -1, -1).reshape(copies * n_views, k)
            embeddings = self._embeddings(view_features, view_coords, view_masks)
            embeddings = embeddings.reshape(copies, n_views, -1).mean(dim=1)
        return F.normalize(embeddings.double(), dim=1) @ self.weight + self.offset


def integrated_gradient_scores(
    model,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    probe: SavedProbe,
    class_name: str,
    views: tuple[np.ndarray, np.ndarray] | None = None,
    steps: int = 32,
    steps_per_pass: int = 8,
) -> tuple[np.ndarray, float]:
    """``(tile scores (n,), baseline score)``: the slide's score is the baseline's plus the mean tile score
    (up to the quadrature error of ``steps`` midpoints; see the module's docstring). ``views`` (tile ``index``,
    ``mask``, as :func:`~giga_ssl_hf.inference.views.slide_views` draws them): the slide embedding is their
    mean; without, one pass of all the tiles. ``steps_per_pass`` path points share a forward pass."""
    if steps < 1 or steps_per_pass < 1:
        raise ValueError(f"integrated gradients need steps >= 1 and steps_per_pass >= 1, got {steps}")
    was_training = model.training
    model.eval()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    score = _SlideScore(model, coords, patch_size_level0, probe, class_name, views)
    x = torch.from_numpy(np.array(features, dtype=np.float32)).to(device=device, dtype=dtype)
    baseline = x.mean(dim=0, keepdim=True).expand_as(x)
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    gradient_sum = torch.zeros_like(x, dtype=torch.float64)
    try:
        for part in alphas.split(steps_per_pass):
            a = part.to(device=device, dtype=dtype)[:, None, None]
            path = (baseline + a * (x - baseline)).detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(score(path).sum(), path)
            gradient_sum += gradient.double().sum(dim=0)
        with torch.no_grad():
            ends = score(torch.stack([baseline, x])).cpu().numpy()
    finally:
        model.train(was_training)
    attributions = ((x - baseline).double() * gradient_sum / steps).sum(dim=1).cpu().numpy()
    gap = float(ends[1] - ends[0] - attributions.sum())
    logger.info(
        "integrated gradients: %d steps, completeness gap %.2e (slide score %.4g)", steps, gap, ends[1]
    )
    return attributions * len(x), float(ends[0])
