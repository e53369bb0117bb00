"""Training-set sizes of few-shot curves: the whole training set, a number of slides or a fraction, drawn
stratified and seeded."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

FULL = "full"


@dataclass(frozen=True)
class TrainSize:
    """A training-set size: an absolute number of slides, a fraction of the split's training set, or all."""

    label: str
    count: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> TrainSize:
        text = text.strip()
        if text.lower() in (FULL, "all"):
            return cls(FULL)
        if match := re.fullmatch(r"(\d+(?:\.\d+)?)%", text):
            fraction = float(match.group(1)) / 100
            if not 0 < fraction <= 1:
                raise ValueError(f"training size {text!r}: a percentage must be in (0, 100]")
            return cls(text, fraction=fraction)
        if text.isdigit() and int(text) > 0:
            return cls(text, count=int(text))
        raise ValueError(
            f"training size {text!r}: expected a number of slides (50), a percentage (25%) or 'full'"
        )

    def resolve(self, n_available: int) -> int:
        if self.count is not None:
            return min(self.count, n_available)
        if self.fraction is not None:
            return max(1, round(self.fraction * n_available))
        return n_available


def parse_train_sizes(text: str | None) -> list[TrainSize]:
    """``"50,100,25%"`` -> sizes; ``None`` or empty -> the whole training set only."""
    if not text:
        return [TrainSize(FULL)]
    return [TrainSize.parse(part) for part in text.split(",") if part.strip()]


def stratified_subsample(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` items of ``y``, class proportions kept and every class present at least once."""
    classes, counts = np.unique(y, return_counts=True)
    if n >= len(y):
        return np.arange(len(y))
    if n < len(classes):
        raise ValueError(f"a training set of {n} slides cannot hold all {len(classes)} classes")
    quota = counts * n / len(y)
    allocation = np.minimum(np.maximum(np.floor(quota).astype(int), 1), counts)
    # Largest remainder first; at most len(classes) rounds either way.
    while allocation.sum() < n:
        room = np.where(allocation < counts, quota - allocation, -np.inf)
        allocation[np.argmax(room)] += 1
    while allocation.sum() > n:
        allocation[np.argmax(np.where(allocation > 1, allocation - quota, -np.inf))] -= 1
    chosen = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c, k in zip(classes, allocation)]
    return np.sort(np.concatenate(chosen))
