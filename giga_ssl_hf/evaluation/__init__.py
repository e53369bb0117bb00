"""Linear-probe evaluation of slide embeddings (the Giga-SSL paper's protocol).

Python API::

    from giga_ssl_hf.evaluation import evaluate_embeddings, write_outputs
    results = evaluate_embeddings("runs/embeddings", "tables/lung.csv", splits="splitdirs/lung")
    write_outputs(results, "results/lung")
"""

from giga_ssl_hf.evaluation.data import find_split_sets, load_embeddings, load_labels, read_split
from giga_ssl_hf.evaluation.probe import (
    ProbeResult,
    SplitResult,
    TrainSize,
    evaluate_embeddings,
    fit_predict,
    parse_train_sizes,
    slide_auc,
)
from giga_ssl_hf.evaluation.report import format_table, metrics_dict, write_outputs

__all__ = [
    "ProbeResult",
    "SplitResult",
    "TrainSize",
    "evaluate_embeddings",
    "find_split_sets",
    "fit_predict",
    "format_table",
    "load_embeddings",
    "load_labels",
    "metrics_dict",
    "parse_train_sizes",
    "read_split",
    "slide_auc",
    "write_outputs",
]
