"""The paper's classifier and its AUC: ``LogisticRegression(C=10, max_iter=1000, class_weight="balanced")``, the AUC
of ``predict_proba[:, 1]`` for two classes, macro one-vs-rest for more, computed by the ``slide_auc`` ``evaluate``
module shipped in this package.

Beyond the paper (off by default): ``standardize`` z-scores each feature with a scaler fit on the training slides
only, ``C`` may be a list of values, and ``blocks`` may split the columns into named blocks (a hybrid embedding:
the encoder's embedding, then the mean tile feature), of which each block alone or all together is fitted; C and
the block are chosen jointly by a stratified inner cross-validation (AUC) on the training slides only. A chosen
block is kept as zero coefficients on the other columns, so the fitted probe still takes whole embeddings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

METRIC_PATH = Path(__file__).parent / "metrics" / "slide_auc"
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


class ColumnBlock(TransformerMixin, BaseEstimator):
    """Keeps the columns ``start:stop`` of its input (all of them for ``None``): the candidate block of a search."""

    def __init__(self, columns: tuple[int, int] | None = None):
        self.columns = columns

    def fit(self, x, y=None):
        # The width of the whole embedding, for the probe's coefficients on every column.
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x):
        return x if self.columns is None else x[:, slice(*self.columns)]


def block_candidates(blocks: dict[str, int], width: int) -> dict[str, tuple[int, int]]:
    """``{name: (start, stop)}`` of the candidates: all blocks together (named ``"a+b"``), then each block alone."""
    sizes = list(blocks.values())
    if len(sizes) < 2 or min(sizes) < 1 or sum(sizes) != width:
        raise ValueError(
            f"column blocks {blocks} must be at least two positive sizes adding up to the {width} columns"
        )
    bounds = np.cumsum([0, *sizes]).tolist()
    alone = {name: (bounds[k], bounds[k + 1]) for k, name in enumerate(blocks)}
    return {"+".join(blocks): (0, width), **alone}


@dataclass
class FittedProbe:
    """A probe refit on the whole training split with the chosen C and column block (None: no blocks given)."""

    model: Pipeline  # [StandardScaler,] ColumnBlock, LogisticRegression
    C: float
    block: str | None = None

    def scores(self, x: np.ndarray) -> np.ndarray:
        """P(class 1) for two classes, the (n, C) probability matrix otherwise."""
        probabilities = self.model.predict_proba(x)
        return probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities

    @property
    def classifier(self) -> LogisticRegression:
        return self.model[-1]

    @property
    def scaler(self) -> StandardScaler | None:
        return self.model[0] if isinstance(self.model[0], StandardScaler) else None

    @property
    def coef(self) -> np.ndarray:
        """`(K, E)` coefficients on the whole embedding: zero on the columns outside the chosen block."""
        columns = self.model[-2].columns
        if columns is None:
            return self.classifier.coef_
        coef = np.zeros((self.classifier.coef_.shape[0], self.model[-2].n_features_in_))
        coef[:, slice(*columns)] = self.classifier.coef_
        return coef


def best_auc_then_log_loss(cv_results: dict) -> int:
    """The candidate of the best mean inner-CV AUC; among equal AUCs the best log loss. With few slides several
    candidates often reach an AUC of 1.0 on every inner fold; the log loss still tells a fit that spreads its
    weight over noise columns from one that does not."""
    auc = np.asarray(cv_results["mean_test_auc"])
    log_loss = np.asarray(cv_results["mean_test_neg_log_loss"])  # negated: higher is better
    tied = np.flatnonzero(auc >= np.nanmax(auc) - 1e-12)
    return int(tied[np.argmax(log_loss[tied])])


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    standardize: bool = False,
    C: float | list[float] = PAPER_C,
    blocks: dict[str, int] | None = None,
) -> FittedProbe:
    """The paper's classifier fit on ``(x_train, y_train)``, after a StandardScaler with ``standardize``.

    When ``C`` lists several values or ``blocks`` (``{name: number of columns}``, in column order) is given,
    each (C, candidate block) pair is scored by a stratified inner cross-validation (AUC, ties broken by the log
    loss) on ``(x_train, y_train)`` only, and the best is refit on all of it.
    """
    values = parse_c(C)
    model = make_pipeline(
        *([StandardScaler()] if standardize else []),
        ColumnBlock(),
        LogisticRegression(**{**PAPER_CLASSIFIER, "C": values[0]}),
    )
    candidates = block_candidates(blocks, x_train.shape[1]) if blocks else {}
    if len(values) == 1 and not candidates:
        model.fit(x_train, y_train)
        return FittedProbe(model, values[0])
    smallest_class = int(np.bincount(y_train).min())
    if smallest_class < 2:
        raise ValueError(
            "choosing C or a column block by inner cross-validation needs at least 2 training slides per class"
        )
    grid = {"logisticregression__C": values}
    if candidates:
        grid["columnblock__columns"] = list(candidates.values())
    folds = StratifiedKFold(min(INNER_FOLDS, smallest_class), shuffle=True, random_state=0)
    scoring = {
        "auc": "roc_auc" if len(np.unique(y_train)) == 2 else "roc_auc_ovr",
        "neg_log_loss": "neg_log_loss",
    }
    search = GridSearchCV(model, grid, scoring=scoring, cv=folds, refit=best_auc_then_log_loss)
    search.fit(x_train, y_train)
    chosen = search.best_params_
    block = None
    if candidates:
        block = next(
            name for name, columns in candidates.items() if columns == chosen["columnblock__columns"]
        )
    return FittedProbe(search.best_estimator_, float(chosen["logisticregression__C"]), block)


def fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    standardize: bool = False,
    C: float | list[float] = PAPER_C,
    return_c: bool = False,
    blocks: dict[str, int] | None = None,
):
    """Paper's classifier; returns P(class 1) for two classes, the (n, C) probability matrix otherwise.

    ``standardize``, ``C`` and ``blocks`` as in :func:`fit_probe`. With ``return_c``, returns
    ``(probabilities, chosen C)``.
    """
    fitted = fit_probe(x_train, y_train, standardize, C, blocks)
    scores = fitted.scores(x_test)
    return (scores, fitted.C) if return_c else scores
