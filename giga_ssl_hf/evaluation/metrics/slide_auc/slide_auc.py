"""Slide-level ROC AUC of the Giga-SSL linear probe, as an ``evaluate`` metric module.

Shipped inside the package and loaded from its local path (``evaluate.load(<this folder>)``), because
the Hub's ``roc_auc`` module cannot be loaded offline. This file is imported by ``evaluate`` on its own,
outside the package, so it depends only on ``datasets``, ``evaluate`` and ``scikit-learn``.
"""

import datasets
import evaluate
from sklearn.metrics import roc_auc_score

_DESCRIPTION = """
Area under the ROC curve of slide-level predictions, as in the Giga-SSL paper: for two classes, the
AUC of the positive-class probability (``predict_proba[:, 1]``); for more classes, the macro average
of the one-vs-rest AUCs over the class-probability matrix.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: binary config: one score per slide (probability of class 1);
        ``multiclass`` config: one list of class probabilities per slide (rows sum to 1).
    references: the true class index of each slide (0 .. n_classes - 1).
Returns:
    roc_auc: float in [0, 1].
Examples:
    >>> auc = evaluate.load("giga_ssl_hf/evaluation/metrics/slide_auc")
    >>> auc.compute(predictions=[0.1, 0.8, 0.3, 0.9], references=[0, 1, 0, 1])
    {'roc_auc': 1.0}
"""

_CITATION = """
@inproceedings{lazard2023gigassl,
  title = {Giga-SSL: Self-Supervised Learning for Gigapixel Images},
  author = {Lazard, Tristan and Lerousseau, Marvin and Decenci{\\`e}re, Etienne and Walter, Thomas},
  booktitle = {CVPR Workshops},
  year = {2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SlideAuc(evaluate.Metric):
    def _info(self):
        score = datasets.Value("float64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(score) if self.config_name == "multiclass" else score,
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://github.com/trislaz/gigassl"],
        )

    def _compute(self, predictions, references):
        if self.config_name == "multiclass":
            return {
                "roc_auc": float(roc_auc_score(references, predictions, multi_class="ovr", average="macro"))
            }
        return {"roc_auc": float(roc_auc_score(references, predictions))}
