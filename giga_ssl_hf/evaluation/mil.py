"""Supervised multiple-instance (MIL) baselines on the tile features, under the probe's splits and table.

The paper's claim is that a linear probe on Giga-SSL slide embeddings matches fully supervised MIL on the
same tile features; these baselines are that MIL, trained from the labels of each training split:

- ``abmil``: gated attention MIL (Ilse et al., 2018): tiles -> Linear-ReLU-Dropout, gated attention
  ``softmax(w . (tanh(V h) * sigmoid(U h)))`` over the tiles, attention-weighted mean, Linear classifier.
- ``graph-mil``: the same attention MIL after two rounds of message passing over the tile grid (each tile
  adds the mean of its 8 grid neighbours, ``coords // patch_size_level0`` one apart), so that it can see
  local arrangement, which ABMIL and mean pooling cannot by construction.

The standard recipe: AdamW, dropout, the cross-entropy weighted by inverse class frequency, one slide per
step, a fixed number of epochs; with ``validation_fraction`` > 0, early stopping on a stratified inner split
of the *training* slides only (the epoch of least inner loss is kept). Every fit is seeded.

Slides are streamed from the memory-mapped tile-feature Dataset (zero-copy numpy views, one slide on the
device at a time), so a cohort of huge slides is never loaded at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from giga_ssl_hf.contracts import NO_AUGMENTATION
from giga_ssl_hf.contracts.extraction_folder import EXHAUSTIVE
from giga_ssl_hf.contracts.tile_features import (
    TileArrays,
    load_tile_dataset,
    resolve_tile_dataset_dir,
    without_indices_mapping,
)
from giga_ssl_hf.evaluation.mil_recipe import MIL_BASELINES, MILRecipe

logger = logging.getLogger(__name__)

# The 8 grid neighbours of a tile (cells one apart, diagonals included).
_NEIGHBOUR_OFFSETS = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy])


class GatedAttentionPooling(nn.Module):
    """Ilse et al.'s gated attention: one weight per tile, softmax over each slide's tiles."""

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.value = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh())
        self.gate = nn.Sequential(nn.Linear(dim, attention_dim), nn.Sigmoid())
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, tiles: torch.Tensor, slide: torch.Tensor, n_slides: int) -> torch.Tensor:
        """`(T, dim)` tiles of ``n_slides`` slides (tile -> slide index `(T,)`) -> `(n_slides, dim)`."""
        scores = self.score(self.value(tiles) * self.gate(tiles)).squeeze(1)  # (T,)
        # A softmax within each slide: subtracting the slide's maximum keeps exp() finite.
        top = scores.new_full((n_slides,), float("-inf")).scatter_reduce(0, slide, scores, "amax")
        exp = torch.exp(scores - top[slide])
        weights = exp / exp.new_zeros(n_slides).index_add_(0, slide, exp)[slide]  # (T,)
        return tiles.new_zeros(n_slides, tiles.shape[1]).index_add_(0, slide, weights[:, None] * tiles)


class AttentionMIL(nn.Module):
    """Tile embedding, ``message_rounds`` rounds of neighbour averaging on the grid, gated attention, linear."""

    def __init__(self, feature_dim: int, n_classes: int, recipe: MILRecipe, message_rounds: int = 0):
        super().__init__()
        hidden = recipe.hidden_dim
        self.embed = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(), nn.Dropout(recipe.dropout))
        self.messages = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU()) for _ in range(message_rounds)
        )
        self.pool = GatedAttentionPooling(hidden, recipe.attention_dim)
        self.classifier = nn.Sequential(nn.Dropout(recipe.dropout), nn.Linear(hidden, n_classes))

    def forward(self, bag: SlideBatch) -> torch.Tensor:
        """`(n_slides, n_classes)` logits of a batch of slides."""
        tiles = self.embed(bag.features)
        if self.messages:
            source, target = bag.edges
            ones = torch.ones_like(target, dtype=tiles.dtype)
            degree = tiles.new_zeros(len(tiles)).index_add_(0, target, ones).clamp(min=1)[:, None]
            for message in self.messages:
                tiles = tiles + message(torch.zeros_like(tiles).index_add_(0, target, tiles[source]) / degree)
        return self.classifier(self.pool(tiles, bag.slide, bag.n_slides))


@dataclass
class SlideBatch:
    """The tiles of several slides, concatenated: features `(T, D)`, slide index `(T,)`, and (graph MIL) the
    `(2, m)` directed grid edges source -> target between tiles of the same slide."""

    features: torch.Tensor
    slide: torch.Tensor
    n_slides: int
    edges: torch.Tensor | None


def grid_edges(coords: np.ndarray, patch_size_level0: float) -> np.ndarray:
    """`(2, m)` int64 (source, target) pairs of tiles whose grid cells (``coords // patch_size_level0``) are
    8-neighbours."""
    cells = (np.asarray(coords) // patch_size_level0).astype(np.int64)
    cells -= cells.min(axis=0)
    height = int(cells[:, 1].max()) + 3  # a margin so that a neighbour's key never wraps onto another column
    keys = (cells[:, 0] + 1) * height + cells[:, 1] + 1
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    sources, targets = [], []
    for dx, dy in _NEIGHBOUR_OFFSETS:
        wanted = keys + dx * height + dy
        position = np.searchsorted(sorted_keys, wanted).clip(max=len(keys) - 1)
        found = sorted_keys[position] == wanted
        sources.append(order[position[found]])
        targets.append(np.flatnonzero(found))
    return np.stack([np.concatenate(sources), np.concatenate(targets)])


class MILBaseline:
    """A supervised MIL baseline over an exhaustive tile-feature Dataset: what the probe protocol fits and
    scores in place of a linear probe. The protocol names slides by position ``i``, Dataset row ``rows[i]``."""

    def __init__(
        self, kind: str, arrays: TileArrays, patch_sizes: np.ndarray, recipe: MILRecipe, rows: np.ndarray
    ):
        if kind not in MIL_BASELINES:
            raise ValueError(f"unknown MIL baseline {kind!r}: choose from {MIL_BASELINES}")
        self.kind, self.arrays, self.patch_sizes, self.recipe = kind, arrays, patch_sizes, recipe
        self.rows = np.asarray(rows, dtype=np.int64)

    def _batch(self, rows: np.ndarray) -> SlideBatch:
        """Slides ``rows`` on the recipe's device: float32 copies of their tiles only, read from the views."""
        features, slide, edges, offset = [], [], [], 0
        for position, row in enumerate(rows):
            tiles, coords = self.arrays.row(int(row))
            features.append(np.asarray(tiles, dtype=np.float32))
            slide.append(np.full(len(tiles), position, dtype=np.int64))
            if self.kind == "graph-mil":
                edges.append(grid_edges(coords, self.patch_sizes[row]) + offset)
            offset += len(tiles)
        device = self.recipe.device
        return SlideBatch(
            torch.from_numpy(np.concatenate(features)).to(device),
            torch.from_numpy(np.concatenate(slide)).to(device),
            len(rows),
            torch.from_numpy(np.concatenate(edges, axis=1)).to(device) if edges else None,
        )

    def _new_model(self, n_classes: int) -> AttentionMIL:
        rounds = 2 if self.kind == "graph-mil" else 0
        return AttentionMIL(self.arrays.feature_dim, n_classes, self.recipe, rounds).to(self.recipe.device)

    def fit(self, train: np.ndarray, y_train: np.ndarray, n_classes: int) -> AttentionMIL:
        """The recipe's model trained on the slides at positions ``train`` (classes ``y_train``), in eval mode;
        the recipe's ``validation_fraction`` of them held out to keep the epoch of the best held-out loss."""
        recipe = self.recipe
        devices = [recipe.device] if recipe.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):  # seeded without touching the caller's RNG state
            torch.manual_seed(recipe.seed)
            rng = np.random.default_rng(recipe.seed)
            fit_rows, fit_y, held_rows, held_y = _inner_split(
                self.rows[train], y_train, recipe.validation_fraction, rng
            )
            model = self._new_model(n_classes)
            self._train(model, fit_rows, fit_y, held_rows, held_y, n_classes, rng)
        return model.eval()

    def fit_predict(self, train: np.ndarray, y_train: np.ndarray, test: np.ndarray, n_classes: int):
        """Train on the slides at positions ``train`` (classes ``y_train``); returns the ``test`` slides'
        P(class 1) for two classes, their `(n, C)` probabilities otherwise (as the linear probe)."""
        probabilities = self._predict(self.fit(train, y_train, n_classes), self.rows[test])
        return probabilities[:, 1] if n_classes == 2 else probabilities

    def _train(self, model, rows, y, held_rows, held_y, n_classes: int, rng: np.random.Generator) -> None:
        device = self.recipe.device
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        weights = len(y) / (n_classes * np.maximum(counts, 1))  # sklearn's class_weight="balanced"
        loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=self.recipe.learning_rate, weight_decay=self.recipe.weight_decay
        )
        targets = torch.as_tensor(y, device=device)
        best_loss, best_state = float("inf"), None
        for _ in range(self.recipe.epochs):
            model.train()
            order = rng.permutation(len(rows))
            for start in range(0, len(rows), self.recipe.slides_per_step):
                step = order[start : start + self.recipe.slides_per_step]
                loss = loss_fn(model(self._batch(rows[step])), targets[step])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            if len(held_rows):
                held_loss = _held_out_loss(self._predict(model, held_rows), held_y, weights)
                if held_loss < best_loss:
                    best_loss = held_loss
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if best_state is not None:
            model.load_state_dict(best_state)

    @torch.no_grad()
    def _predict(self, model: AttentionMIL, rows: np.ndarray) -> np.ndarray:
        model.eval()
        step = self.recipe.slides_per_step
        logits = torch.cat([model(self._batch(rows[i : i + step])) for i in range(0, len(rows), step)])
        return torch.softmax(logits.double(), dim=1).cpu().numpy()


def _inner_split(rows, y, fraction: float, rng: np.random.Generator):
    """``(fit rows, fit y, held rows, held y)``: a stratified ``fraction`` of each class held out (at least one
    slide per class, and only from classes with 2 slides or more); none when ``fraction`` is 0."""
    held = np.zeros(len(y), dtype=bool)
    if fraction > 0:
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            if len(members) >= 2:
                count = max(1, int(round(fraction * len(members))))
                held[rng.choice(members, size=min(count, len(members) - 1), replace=False)] = True
    return rows[~held], y[~held], rows[held], y[held]


def _held_out_loss(probabilities: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """Class-weighted cross-entropy of the held-out slides (the training loss, measured without dropout)."""
    picked = np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-12, None))
    return float(-(weights[y] * picked).sum() / weights[y].sum())


def mil_baseline(
    kind: str, features: str, recipe: MILRecipe, slide_ids=None
) -> tuple[np.ndarray, MILBaseline]:
    """``(slide ids, MILBaseline)`` of an exhaustive tile-feature Dataset (or ``giga-ssl extract`` folder);
    with ``slide_ids``, the baseline sees those slides only (memory-mapped, nothing loaded up front)."""
    dataset = without_indices_mapping(load_tile_dataset(resolve_tile_dataset_dir(features, EXHAUSTIVE)))
    if (np.asarray(dataset.data.column("aug_id").to_numpy()) != NO_AUGMENTATION).any():
        raise ValueError(
            f"--baseline {kind} needs the exhaustive (non-augmented) tile features: DIR/exhaustive"
        )
    ids = np.asarray([str(s) for s in dataset.data.column("slide_id").to_pylist()])
    arrays = TileArrays.from_dataset(dataset)
    unusable = arrays.unusable_rows()
    keep = np.array([row not in unusable for row in range(len(ids))])
    if slide_ids is not None:
        keep &= np.isin(ids, np.asarray(slide_ids).astype(str))
    for row, reason in sorted(unusable.items()):
        logger.warning("--baseline %s: slide %s left out (%s)", kind, ids[row], reason)
    patch_sizes = np.asarray(dataset.data.column("patch_size_level0").to_numpy(), dtype=np.float64)
    return ids[keep], MILBaseline(kind, arrays, patch_sizes, recipe, np.flatnonzero(keep))
