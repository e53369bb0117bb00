"""The paper's classifier and its AUC: ``LogisticRegression(C=10, max_iter=1000, class_weight="balanced")``, the AUC
of ``predict_proba[:, 1]`` for two classes, macro one-vs-rest for more, computed by the ``slide_auc`` ``evaluate``
module shipped in this package.

Beyond the paper (off by default): ``standardize`` z-scores each feature with a scaler fit on the training slides
only, and ``C`` may be a list of values, one chosen by a stratified inner cross-validation (AUC) on the training
slides only.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
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
