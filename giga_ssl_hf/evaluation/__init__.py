"""Linear-probe evaluation of slide embeddings (the Giga-SSL paper's protocol).

Python API::

    from giga_ssl_hf.evaluation import evaluate_embeddings, write_outputs
    results = evaluate_embeddings("runs/embeddings", "tables/lung.csv", splits="splitdirs/lung")
    write_outputs(results, "results/lung")
"""

import importlib

# Public name -> submodule; loaded on first access, so that `giga-ssl evaluate --help` does not wait for
# scikit-learn, pandas and datasets.
_SUBMODULE_OF = {
    "find_split_sets": "data",
    "load_embeddings": "giga_ssl_hf.contracts.slide_embeddings",
    "load_labels": "data",
    "read_split": "data",
    "ProbeResult": "results",
    "SplitResult": "results",
    "TrainSize": "train_sizes",
    "evaluate_embeddings": "probe",
    "fit_predict": "classifier",
    "parse_train_sizes": "train_sizes",
    "slide_auc": "classifier",
    "format_table": "report",
    "metrics_dict": "report",
    "write_outputs": "report",
}


def __getattr__(name: str):
    if name in _SUBMODULE_OF:
        module = _SUBMODULE_OF[name]
        return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
