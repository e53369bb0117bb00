"""The paper's linear-probe protocol on slide embeddings.

``LogisticRegression(C=10, max_iter=1000, class_weight="balanced")`` fitted on the training slides of
each split; AUC of ``predict_proba[:, 1]`` for two classes, macro one-vs-rest for more, computed by the
``slide_auc`` ``evaluate`` module shipped in this package. Splits are the paper's fixed ``split_k.csv``
files or a seeded stratified k-fold; the training set can be subsampled (stratified, seeded) to draw
few-shot curves.

Beyond the paper (both off by default, so the paper's tables are reproduced unchanged): ``standardize`` z-scores
each feature with a scaler fit on each training split only, and ``C`` may be a list of values, one chosen per
split by a stratified inner cross-validation (AUC) on that split's training slides only.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from giga_ssl_hf.contracts.slide_embeddings import load_embeddings
from giga_ssl_hf.evaluation.data import find_split_sets, load_labels, read_split, require_two_classes

logger = logging.getLogger(__name__)

METRIC_PATH = Path(__file__).parent / "metrics" / "slide_auc"
FULL = "full"
PAPER_CLASSIFIER = {"C": 10, "max_iter": 1000, "class_weight": "balanced"}  # LogisticRegression settings
PAPER_C = float(PAPER_CLASSIFIER["C"])
INNER_FOLDS = 5


@functools.cache
def _auc_metric(multiclass: bool):
    import evaluate  # imported on first use: it takes seconds and `--help` should not wait for it

    # keep_in_memory: hundreds of small computes per run; no need for Arrow cache files on disk.
    return evaluate.load(str(METRIC_PATH), "multiclass" if multiclass else None, keep_in_memory=True)


def slide_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AUC through the packaged metric: ``scores`` (n,) for two classes, (n, C) probabilities for more."""
    scores = np.asarray(scores, dtype=np.float64)
    return _auc_metric(scores.ndim == 2).compute(predictions=scores, references=np.asarray(y_true))["roc_auc"]


def parse_c(text: str | float | list[float] | None) -> list[float]:
    """``"10"`` -> [10.0]; ``"0.01,0.1,1"`` -> a list chosen from by inner cross-validation; None -> the paper's."""
    if text is None:
        return [PAPER_C]
    if isinstance(text, (int, float)):
        values = [float(text)]
    elif isinstance(text, str):
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(
                f"--C {text!r}: expected a number or a comma-separated list of numbers"
            ) from None
    else:
        values = [float(v) for v in text]
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"C {text!r}: the inverse regularisation strength must be positive and finite")
    return values


def fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    standardize: bool = False,
    C: float | list[float] = PAPER_C,
    return_c: bool = False,
):
    """Paper's classifier; returns P(class 1) for two classes, the (n, C) probability matrix otherwise.

    ``standardize`` puts a StandardScaler fit on ``x_train`` before the classifier; a list ``C`` is searched by
    a stratified inner cross-validation on ``(x_train, y_train)`` only. With ``return_c``, returns
    ``(probabilities, chosen C)``.
    """
    values = parse_c(C)
    classifier = LogisticRegression(**{**PAPER_CLASSIFIER, "C": values[0]})
    model = make_pipeline(StandardScaler(), classifier) if standardize else classifier
    if len(values) > 1:
        smallest_class = int(np.bincount(y_train).min())
        if smallest_class < 2:
            raise ValueError(
                "choosing C by inner cross-validation needs at least 2 training slides per class"
            )
        folds = StratifiedKFold(min(INNER_FOLDS, smallest_class), shuffle=True, random_state=0)
        key = "logisticregression__C" if standardize else "C"
        scoring = "roc_auc" if len(np.unique(y_train)) == 2 else "roc_auc_ovr"
        model = GridSearchCV(model, {key: values}, scoring=scoring, cv=folds, refit=True)
    model.fit(x_train, y_train)
    probabilities = model.predict_proba(x_test)
    scores = probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities
    if not return_c:
        return scores
    chosen = model.best_params_[key] if len(values) > 1 else values[0]
    return scores, float(chosen)


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


@dataclass
class SplitResult:
    """One train/test split: its AUC, sizes, and the test predictions (kept for ROC curves)."""

    name: str
    auc: float
    n_train: int
    n_test: int
    y_true: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    C: float = PAPER_C  # the classifier's inverse regularisation (chosen by inner CV when several were given)


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


class _Task:
    """Embeddings aligned with one label table: ID lookups, class indices, and the drop bookkeeping."""

    def __init__(
        self,
        name: str,
        ids: np.ndarray,
        embeddings: np.ndarray,
        labels: pd.Series,
        standardize: bool = False,
        C: list[float] = (PAPER_C,),
    ):
        self.name = name
        self.embeddings = embeddings
        self.standardize, self.C = standardize, list(C)
        # Plain dicts: pandas' Arrow-backed string Index makes per-split `isin` lookups ~100x slower.
        self.row = {slide: i for i, slide in enumerate(ids.tolist())}
        self.classes = sorted(labels.unique())
        index = {c: i for i, c in enumerate(self.classes)}
        self.class_of = {slide: index[label] for slide, label in labels.items()}
        if self.row.keys().isdisjoint(self.class_of):
            raise ValueError(
                f"{name}: none of the {len(self.class_of)} labelled IDs has an embedding (labels list e.g. "
                f"{next(iter(self.class_of))!r}, embeddings e.g. {next(iter(self.row), None)!r}); "
                "both must name slides the same way (slide file stems)"
            )

    def select(self, split_ids: list[str], dropped: dict[str, set[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Embedding rows and class indices of ``split_ids``; IDs lacking a label or embedding go to ``dropped``."""
        rows, y = [], []
        for slide in split_ids:
            if slide not in self.class_of:
                dropped["missing_labels"].add(slide)
            elif slide not in self.row:
                dropped["missing_embeddings"].add(slide)
            else:
                rows.append(self.row[slide])
                y.append(self.class_of[slide])
        return np.array(rows, dtype=np.int64), np.array(y, dtype=np.int64)

    def run_split(
        self, name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], where: str
    ) -> SplitResult:
        (train_rows, y_train), (test_rows, y_test) = train, test
        for part, y in (("training", y_train), ("test", y_test)):
            absent = sorted(set(range(len(self.classes))) - set(y.tolist()))
            if absent:
                raise ValueError(
                    f"{where}, {name}: the {part} set has no slide of class(es) "
                    f"{[self.classes[i] for i in absent]} once IDs without embeddings are dropped"
                )
        scores, chosen_c = fit_predict(
            self.embeddings[train_rows], y_train, self.embeddings[test_rows], self.standardize, self.C, True
        )
        auc = slide_auc(y_test, scores)
        return SplitResult(name, auc, len(train_rows), len(test_rows), y_test, scores, chosen_c)


def _subsample(train_rows, y_train, size: TrainSize, seed: int, split_index: int):
    n = size.resolve(len(y_train))
    # Seeded per split so that every split (and every size) gets its own, reproducible draw.
    keep = stratified_subsample(y_train, n, np.random.default_rng([seed, split_index]))
    return train_rows[keep], y_train[keep]


def _no_drops() -> dict[str, set[str]]:
    return {"missing_embeddings": set(), "missing_labels": set()}


def _probe(
    task: _Task,
    split_set: str,
    splits: list[tuple[str, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
    dropped: dict[str, set[str]],
    train_sizes: list[TrainSize],
    seed: int,
) -> list[ProbeResult]:
    """Run every ``(name, train, test)`` split at every training size; report the dropped IDs once."""
    where = f"{task.name} / {split_set}"
    for reason, ids in dropped.items():
        if ids:
            logger.warning(
                "%s: %d split IDs dropped (%s), e.g. %s", where, len(ids), reason.replace("_", " "), min(ids)
            )
    dropped_ids = {reason: sorted(ids) for reason, ids in dropped.items()}
    return [
        ProbeResult(
            task.name,
            split_set,
            size.label,
            task.classes,
            [
                task.run_split(name, _subsample(*train, size, seed, k), test, f"{where} ({size.label})")
                for k, (name, train, test) in enumerate(splits)
            ],
            dropped_ids,
        )
        for size in train_sizes
    ]


def evaluate_fixed_splits(
    task: _Task, split_set: str, split_files: list[Path], train_sizes: list[TrainSize], seed: int
) -> list[ProbeResult]:
    """Probe on the given ``split_k.csv`` files, once per training size."""
    dropped = _no_drops()
    splits = []
    for path in split_files:
        train_ids, test_ids = read_split(path)
        splits.append((path.stem, task.select(train_ids, dropped), task.select(test_ids, dropped)))
    return _probe(task, split_set, splits, dropped, train_sizes, seed)


def evaluate_kfold(task: _Task, folds: int, train_sizes: list[TrainSize], seed: int) -> list[ProbeResult]:
    """Probe with a seeded stratified k-fold over the labelled slides that have an embedding."""
    dropped = _no_drops()
    rows, y = task.select(list(task.class_of), dropped)
    _, counts = np.unique(y, return_counts=True)
    if counts.min() < folds:
        raise ValueError(
            f"{task.name}: {folds}-fold CV needs at least {folds} slides per class, smallest has {counts.min()}"
        )
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = [
        (f"fold_{k}", (rows[tr], y[tr]), (rows[te], y[te])) for k, (tr, te) in enumerate(kfold.split(rows, y))
    ]
    return _probe(task, f"{folds}-fold CV", splits, dropped, train_sizes, seed)


def evaluate_embeddings(
    embeddings: str | Path | tuple[np.ndarray, np.ndarray],
    labels: str | Path | pd.Series,
    splits: str | Path | None = None,
    folds: int = 5,
    train_sizes: str | list[TrainSize] | None = None,
    seed: int = 0,
    task: str | None = None,
    standardize: bool = False,
    C: float | str | list[float] | None = None,
    embedding: str = "embeddings",
) -> list[ProbeResult]:
    """Linear-probe AUCs of slide embeddings on one labelled task.

    Args:
        embeddings: a source for :func:`~giga_ssl_hf.evaluation.data.load_embeddings`, or ``(ids, array)``.
        labels: a labels CSV (``ID``, ``label``) or a Series of labels indexed by slide ID.
        splits: a folder of ``split_k.csv`` files, or a folder of such folders (each evaluated);
            ``None`` for a stratified ``folds``-fold cross-validation seeded with ``seed``.
        train_sizes: e.g. ``"50,100,25%"``: subsample each training set (stratified, seeded).
        task: name used in reports; defaults to the labels file stem.
        standardize: z-score the features with a scaler fit on each training split only (not the paper's).
        C: the classifier's inverse regularisation (default: the paper's 10), or several (a list, or a
            comma-separated string), one chosen per split by inner cross-validation on its training slides.
        embedding: name of these embeddings in the results (e.g. ``"mean-pool"`` for the baseline).
    Returns:
        One :class:`ProbeResult` per split folder and training size, split folders in order of
        their largest training set, then training sizes ascending.
    """
    ids, array = load_embeddings(embeddings) if isinstance(embeddings, (str, Path)) else embeddings
    if task is None:
        task = Path(labels).stem if isinstance(labels, (str, Path)) else "task"
    label_series = (
        load_labels(labels) if isinstance(labels, (str, Path)) else require_two_classes(labels, task)
    )
    sizes = (
        parse_train_sizes(train_sizes) if train_sizes is None or isinstance(train_sizes, str) else train_sizes
    )
    aligned = _Task(
        task,
        np.asarray(ids).astype(str),
        np.asarray(array, dtype=np.float32),
        label_series,
        standardize,
        parse_c(C),
    )
    if splits is None:
        results = evaluate_kfold(aligned, folds, sizes, seed)
    else:
        results = [
            result
            for split_set, files in find_split_sets(splits).items()
            for result in evaluate_fixed_splits(aligned, split_set, files, sizes, seed)
        ]
    # Split folders by their largest training set, then sizes ascending: reads as a few-shot table.
    largest = {
        r.split_set: max(q.mean_n_train for q in results if q.split_set == r.split_set) for r in results
    }
    results.sort(key=lambda r: (largest[r.split_set], r.split_set, r.mean_n_train))
    for result in results:
        result.embedding = embedding
        logger.info(
            "%s / %s / %s: AUC %.3f ± %.3f over %d splits",
            result.task,
            result.split_set,
            result.train_size,
            result.mean,
            result.std,
            len(result.splits),
        )
    return results
