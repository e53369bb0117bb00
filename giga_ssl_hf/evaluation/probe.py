"""The paper's linear-probe protocol on slide embeddings: the classifier of :mod:`.classifier` fitted on the
training slides of each split and scored on its test slides. Splits are the paper's fixed ``split_k.csv`` files or
a seeded stratified k-fold; the training set can be subsampled (stratified, seeded: :mod:`.train_sizes`) to draw
few-shot curves. Results: :mod:`.results`.

The protocol's building blocks are importable from here too (``fit_predict``, ``slide_auc``, ``TrainSize``...).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from giga_ssl_hf.contracts.slide_embeddings import load_embeddings
from giga_ssl_hf.evaluation.classifier import METRIC_PATH, PAPER_C, fit_predict, fit_probe, parse_c, slide_auc
from giga_ssl_hf.evaluation.data import find_split_sets, load_labels, read_split, require_two_classes
from giga_ssl_hf.evaluation.results import ProbeResult, SplitResult
from giga_ssl_hf.evaluation.train_sizes import TrainSize, parse_train_sizes, stratified_subsample

__all__ = [
    "METRIC_PATH",
    "AlignedTask",
    "ProbeResult",
    "SplitResult",
    "TrainSize",
    "evaluate_embeddings",
    "evaluate_fixed_splits",
    "evaluate_kfold",
    "fit_predict",
    "parse_c",
    "parse_train_sizes",
    "slide_auc",
    "stratified_subsample",
]

logger = logging.getLogger(__name__)


class AlignedTask:
    """Embeddings aligned with one label table: ID lookups, class indices, and the drop bookkeeping.

    ``embeddings`` is an `(n, E)` array (the linear probe is fit on its rows), or a slide model with
    ``fit_predict(train positions, y_train, test positions, n_classes)`` (a MIL baseline,
    :mod:`giga_ssl_hf.evaluation.mil`), scored the same way on the same splits. ``blocks`` (``{name: columns}``,
    in column order) has the probe choose, per split, each block alone or all together by inner cross-validation.
    """

    def __init__(
        self,
        name: str,
        ids: np.ndarray,
        embeddings: np.ndarray,
        labels: pd.Series,
        standardize: bool = False,
        C: list[float] = (PAPER_C,),
        blocks: dict[str, int] | None = None,
    ):
        self.name = name
        self.embeddings = embeddings
        self.standardize, self.C, self.blocks = standardize, list(C), blocks
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
        if isinstance(self.embeddings, np.ndarray):
            fitted = fit_probe(self.embeddings[train_rows], y_train, self.standardize, self.C, self.blocks)
            scores, chosen_c, block = fitted.scores(self.embeddings[test_rows]), fitted.C, fitted.block
        else:  # a model trained on the slides themselves (a MIL baseline): no C or block to choose
            scores = self.embeddings.fit_predict(train_rows, y_train, test_rows, len(self.classes))
            chosen_c, block = None, None
        auc = slide_auc(y_test, scores)
        return SplitResult(name, auc, len(train_rows), len(test_rows), y_test, scores, chosen_c, block)


def _subsample(train_rows, y_train, size: TrainSize, seed: int, split_index: int):
    n = size.resolve(len(y_train))
    # Seeded per split so that every split (and every size) gets its own, reproducible draw.
    keep = stratified_subsample(y_train, n, np.random.default_rng([seed, split_index]))
    return train_rows[keep], y_train[keep]


def no_drops() -> dict[str, set[str]]:
    """Empty bookkeeping of the split IDs dropped, by reason (filled by :meth:`AlignedTask.select`)."""
    return {"missing_embeddings": set(), "missing_labels": set()}


def _probe(
    task: AlignedTask,
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
    task: AlignedTask, split_set: str, split_files: list[Path], train_sizes: list[TrainSize], seed: int
) -> list[ProbeResult]:
    """Probe on the given ``split_k.csv`` files, once per training size."""
    dropped = no_drops()
    splits = []
    for path in split_files:
        train_ids, test_ids = read_split(path)
        splits.append((path.stem, task.select(train_ids, dropped), task.select(test_ids, dropped)))
    return _probe(task, split_set, splits, dropped, train_sizes, seed)


def evaluate_kfold(
    task: AlignedTask, folds: int, train_sizes: list[TrainSize], seed: int
) -> list[ProbeResult]:
    """Probe with a seeded stratified k-fold over the labelled slides that have an embedding."""
    dropped = no_drops()
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


def _align(embeddings, labels, task: str | None, standardize: bool, C, blocks) -> AlignedTask:
    """The embeddings (a source or ``(ids, array)``) aligned with the labels (a CSV or a Series)."""
    ids, array = load_embeddings(embeddings) if isinstance(embeddings, (str, Path)) else embeddings
    if task is None:
        task = Path(labels).stem if isinstance(labels, (str, Path)) else "task"
    label_series = (
        load_labels(labels) if isinstance(labels, (str, Path)) else require_two_classes(labels, task)
    )
    return AlignedTask(
        task,
        np.asarray(ids).astype(str),
        array if hasattr(array, "fit_predict") else np.asarray(array, dtype=np.float32),
        label_series,
        standardize,
        parse_c(C),
        blocks,
    )


def _sort_and_log(results: list[ProbeResult], embedding: str) -> None:
    """Split folders by their largest training set, then sizes ascending (reads as a few-shot table); each
    result named after ``embedding`` and logged."""
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
    blocks: dict[str, int] | None = None,
) -> list[ProbeResult]:
    """Linear-probe AUCs of slide embeddings on one labelled task.

    Args:
        embeddings: a source for :func:`~giga_ssl_hf.contracts.slide_embeddings.load_embeddings`, or ``(ids, array)``,
            or ``(ids, model)`` with a slide model trained per split instead of the probe (a MIL baseline).
        labels: a labels CSV (``ID``, ``label``) or a Series of labels indexed by slide ID.
        splits: a folder of ``split_k.csv`` files, or a folder of such folders (each evaluated);
            ``None`` for a stratified ``folds``-fold cross-validation seeded with ``seed``.
        train_sizes: e.g. ``"50,100,25%"``: subsample each training set (stratified, seeded).
        task: name used in reports; defaults to the labels file stem.
        standardize: z-score the features with a scaler fit on each training split only (not the paper's).
        C: the classifier's inverse regularisation (default: the paper's 10), or several (a list, or a
            comma-separated string), one chosen per split by inner cross-validation on its training slides.
        embedding: name of these embeddings in the results (e.g. ``"mean-pool"`` for the baseline).
        blocks: named column blocks in column order (``{"encoder": 64, "mean-pool": 32}`` for a hybrid
            embedding, :func:`~giga_ssl_hf.contracts.slide_embeddings.column_blocks`): per split, each block alone
            and all together are candidates, chosen (with C) by inner cross-validation on its training slides;
            recorded in each :class:`SplitResult`'s ``block``.
    Returns:
        One :class:`ProbeResult` per split folder and training size, split folders in order of
        their largest training set, then training sizes ascending.
    """
    aligned = _align(embeddings, labels, task, standardize, C, blocks)
    sizes = (
        parse_train_sizes(train_sizes) if train_sizes is None or isinstance(train_sizes, str) else train_sizes
    )
    if splits is None:
        results = evaluate_kfold(aligned, folds, sizes, seed)
    else:
        results = [
            result
            for split_set, files in find_split_sets(splits).items()
            for result in evaluate_fixed_splits(aligned, split_set, files, sizes, seed)
        ]
    _sort_and_log(results, embedding)
    return results
