"""The results of the linear-probe protocol: one :class:`SplitResult` per split, one :class:`ProbeResult` per
task, split folder and training size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from giga_ssl_hf.evaluation.classifier import PAPER_C


@dataclass
class SplitResult:
    """One train/test split: its AUC, sizes, and the test predictions (kept for ROC curves)."""

    name: str
    auc: float
    n_train: int
    n_test: int
    y_true: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    # The classifier's inverse regularisation (chosen by inner CV when several were given); None for a MIL baseline.
    C: float | None = PAPER_C
    # The column block the probe was fit on (chosen by inner CV among given blocks, e.g. a hybrid's); None: all.
    block: str | None = None


@dataclass
class ProbeResult:
    """All the splits of one task, split folder and training size."""

    task: str
    split_set: str
    train_size: str
    classes: list[str]
    splits: list[SplitResult]
    dropped: dict[str, list[str]] = field(default_factory=dict)
    embedding: str = "embeddings"  # which embeddings: the given ones, or a baseline ("mean-pool")

    @property
    def aucs(self) -> np.ndarray:
        return np.array([s.auc for s in self.splits])

    @property
    def mean(self) -> float:
        return float(self.aucs.mean())

    @property
    def std(self) -> float:
        """Population std over the splits (numpy's default, as in the original evaluation code)."""
        return float(self.aucs.std())

    @property
    def mean_n_train(self) -> float:
        return float(np.mean([s.n_train for s in self.splits]))

    def to_dict(self) -> dict:
        """JSON-ready summary (the per-split predictions are left out)."""
        return {
            "task": self.task,
            "embedding": self.embedding,
            "split_set": self.split_set,
            "train_size": self.train_size,
            "classes": self.classes,
            "auc_mean": self.mean,
            "auc_std": self.std,
            "splits": [
                {k: v for k, v in asdict(s).items() if k not in ("y_true", "scores")} for s in self.splits
            ],
            "n_dropped": {reason: len(ids) for reason, ids in self.dropped.items()},
            "ids_dropped": self.dropped,
        }
