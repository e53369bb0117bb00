"""A fitted linear probe saved without pickle: ``probe.safetensors`` (arrays) + ``probe.json`` (strict JSON).

``giga-ssl evaluate --save-probe DIR`` fits the paper's classifier on every labelled slide that has an embedding
(after the reported cross-validated evaluation) and writes:

- ``probe.safetensors``: ``coef`` `(K, E)` and ``intercept`` `(K,)` float64, sklearn's layout (``K = 1`` for two
  classes: the decision value of ``classes[1]``; ``K = C`` otherwise, multinomial logits); with standardisation
  also ``scaler_mean`` and ``scaler_scale`` `(E,)`, applied as ``(x - mean) / scale`` before the linear map;
- ``probe.json``: ``format``, ``format_version``, ``classes`` (in column order), ``embedding_dim``,
  ``standardize`` (whether the scaler arrays are present), the classifier's settings, the training counts,
  and ``embeddings``: the source it was fit on and that source's metadata (the embedding model and revision,
  tile sampling, views, and the sha256 of its weight files), so that a probe is never applied to another model's
  embeddings unnoticed (``giga-ssl heatmap`` compares that hash with its ``--model``'s); for a probe of
  hybrid embeddings also ``column_blocks`` and the ``block`` chosen by inner cross-validation (the coefficients
  of the other block are zero, so the arrays keep their shapes).

:meth:`SavedProbe.load` reads it back with numpy and no sklearn; scores match ``LogisticRegression`` exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from giga_ssl_hf.contracts import PROBE_CONFIG, PROBE_WEIGHTS
from giga_ssl_hf.files import staged_directory

PROBE_FORMAT = "giga-ssl-linear-probe"
PROBE_FORMAT_VERSION = 1


@dataclass
class SavedProbe:
    """A linear probe on slide embeddings: an optional standardisation, then ``x @ coef.T + intercept``."""

    classes: list[str]
    coef: np.ndarray  # (K, E)
    intercept: np.ndarray  # (K,)
    scaler_mean: np.ndarray | None = None  # (E,)
    scaler_scale: np.ndarray | None = None  # (E,)
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64).reshape(-1)
        n_rows = 1 if len(self.classes) == 2 else len(self.classes)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"a probe needs at least two distinct classes, got {self.classes}")
        if self.coef.ndim != 2 or self.coef.shape[0] != n_rows or self.intercept.shape != (n_rows,):
            raise ValueError(
                f"probe arrays do not fit {len(self.classes)} classes: coef {self.coef.shape}, "
                f"intercept {self.intercept.shape} (expected ({n_rows}, E) and ({n_rows},))"
            )
        if (self.scaler_mean is None) != (self.scaler_scale is None):
            raise ValueError("a probe's standardisation needs both scaler_mean and scaler_scale")
        if self.scaler_mean is not None:
            self.scaler_mean = np.asarray(self.scaler_mean, dtype=np.float64)
            self.scaler_scale = np.asarray(self.scaler_scale, dtype=np.float64)
            if self.scaler_mean.shape != (self.embedding_dim,) or self.scaler_scale.shape != (
                self.embedding_dim,
            ):
                raise ValueError(f"probe scaler arrays must have shape ({self.embedding_dim},)")
        if not all(np.isfinite(a).all() for a in self._arrays().values()):
            raise ValueError("probe arrays hold non-finite values")

    @property
    def embedding_dim(self) -> int:
        return int(self.coef.shape[1])

    @property
    def standardize(self) -> bool:
        return self.scaler_mean is not None

    def decision_function(self, embeddings: np.ndarray) -> np.ndarray:
        """`(n, K)` decision values of `(n, E)` embeddings (sklearn's ``decision_function``, 2-D)."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.embedding_dim:
            raise ValueError(f"the probe takes (n, {self.embedding_dim}) embeddings, got shape {x.shape}")
        if self.standardize:
            x = (x - self.scaler_mean) / self.scaler_scale
        return x @ self.coef.T + self.intercept

    def class_logits(self, embeddings: np.ndarray) -> np.ndarray:
        """`(n, C)` logits whose softmax is :meth:`predict_proba` (binary: ``[0, d]``)."""
        decision = self.decision_function(embeddings)
        return (
            np.concatenate([np.zeros_like(decision), decision], axis=1)
            if len(self.classes) == 2
            else decision
        )

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """`(n, C)` class probabilities, as ``LogisticRegression.predict_proba``."""
        logits = self.class_logits(embeddings)
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def log_odds(self, embeddings: np.ndarray, class_name: str) -> np.ndarray:
        """`(n,)` ``log(p / (1 - p))`` of ``class_name`` (for two classes, the signed decision value)."""
        k = self.class_index(class_name)
        logits = self.class_logits(embeddings)
        others = np.delete(logits, k, axis=1)
        top = others.max(axis=1)
        return logits[:, k] - (top + np.log(np.exp(others - top[:, None]).sum(axis=1)))

    def class_index(self, class_name: str) -> int:
        if class_name not in self.classes:
            raise ValueError(f"the probe has no class {class_name!r}; its classes are {self.classes}")
        return self.classes.index(class_name)

    @property
    def default_class(self) -> str:
        """The class scored by default: the positive (second, sorted) class of two, else the last."""
        return self.classes[-1]

    @property
    def embedding_model(self) -> str | None:
        return self.embeddings_metadata.get("model") or None

    @property
    def embedding_model_sha256(self) -> str | None:
        """sha256 of the weight files of the model that made the embeddings (recorded by giga-ssl embed)."""
        return self.embeddings_metadata.get("model_sha256") or None

    @property
    def embeddings_metadata(self) -> dict:
        """The metadata of the embeddings the probe was fit on, as giga-ssl embed recorded them ({} if none)."""
        return (self.info.get("embeddings") or {}).get("metadata") or {}

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"coef": self.coef, "intercept": self.intercept}
        if self.standardize:
            arrays |= {"scaler_mean": self.scaler_mean, "scaler_scale": self.scaler_scale}
        return arrays

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write ``probe.safetensors`` + ``probe.json`` into ``directory`` (appears complete or not at all)."""
        from safetensors.numpy import save_file

        directory = Path(directory)
        check_probe_target(directory, overwrite)
        config = {
            "format": PROBE_FORMAT,
            "format_version": PROBE_FORMAT_VERSION,
            "classes": list(self.classes),
            "embedding_dim": self.embedding_dim,
            "standardize": self.standardize,
            **self.info,
        }
        text = json.dumps(config, indent=2, allow_nan=False)  # strict JSON: fails before anything is written
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays().items()}
        with staged_directory(directory) as tmp:
            save_file(arrays, str(tmp / PROBE_WEIGHTS))
            (tmp / PROBE_CONFIG).write_text(text + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SavedProbe:
        """Read a probe written by :meth:`save` (no pickle: safetensors and JSON only)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        directory = Path(directory)
        if not (directory / PROBE_CONFIG).is_file() or not (directory / PROBE_WEIGHTS).is_file():
            raise ValueError(
                f"{directory}: not a saved probe (expected {PROBE_CONFIG} and {PROBE_WEIGHTS}; "
                "write one with giga-ssl evaluate --save-probe)"
            )
        try:
            config = json.loads((directory / PROBE_CONFIG).read_text())
            arrays = load_file(str(directory / PROBE_WEIGHTS))
        except (json.JSONDecodeError, SafetensorError, UnicodeDecodeError) as error:
            raise ValueError(f"{directory}: unreadable saved probe ({error})") from error
        if config.get("format") != PROBE_FORMAT or config.get("format_version") != PROBE_FORMAT_VERSION:
            raise ValueError(
                f"{directory}: {PROBE_CONFIG} is not a {PROBE_FORMAT} version {PROBE_FORMAT_VERSION} file "
                f"(format {config.get('format')!r}, version {config.get('format_version')!r})"
            )
        if {"coef", "intercept"} - set(arrays):
            raise ValueError(f"{directory}: {PROBE_WEIGHTS} lacks coef / intercept (has {sorted(arrays)})")
        if config.get("standardize") != ("scaler_mean" in arrays):
            raise ValueError(
                f"{directory}: {PROBE_CONFIG} and {PROBE_WEIGHTS} disagree on the standardisation"
            )
        reserved = {"format", "format_version", "classes", "embedding_dim", "standardize"}
        probe = cls(
            classes=[str(c) for c in config.get("classes", [])],
            coef=arrays["coef"],
            intercept=arrays["intercept"],
            scaler_mean=arrays.get("scaler_mean"),
            scaler_scale=arrays.get("scaler_scale"),
            info={k: v for k, v in config.items() if k not in reserved},
        )
        if probe.embedding_dim != config.get("embedding_dim"):
            raise ValueError(
                f"{directory}: embedding_dim {config.get('embedding_dim')} but coef is {probe.coef.shape}"
            )
        return probe


def check_probe_target(directory: str | Path, overwrite: bool) -> None:
    """Refuse to replace a saved probe without ``overwrite``, and any other non-empty folder at all."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        if not (directory / PROBE_CONFIG).exists():
            raise FileExistsError(f"{directory} exists and is not a saved-probe folder: choose another path")
        if not overwrite:
            raise FileExistsError(
                f"{directory} already holds a saved probe: pass --overwrite-probe to replace it"
            )


def fit_saved_probe(
    ids: np.ndarray,
    embeddings: np.ndarray,
    labels: pd.Series,
    task: str = "task",
    standardize: bool = False,
    embeddings_source: str | None = None,
    embeddings_metadata: dict | None = None,
    C: float | None = None,
    blocks: dict[str, int] | None = None,
) -> SavedProbe:
    """Fit the paper's classifier on every labelled slide that has an embedding; returns the probe.

    ``standardize`` fits a per-dimension standardisation (mean, std over those slides) before the classifier;
    ``C`` replaces the paper's inverse regularisation (10); ``blocks`` (``{name: columns}``) chooses each block
    alone or all together by inner cross-validation on those slides, as the evaluation does on each training
    split: the other blocks' coefficients are zero, and the choice is recorded in the info's ``block``.
    """
    # Imported here: loading a probe (heatmap) needs neither sklearn nor the evaluation's data handling.
    from giga_ssl_hf.evaluation.classifier import PAPER_CLASSIFIER, fit_probe
    from giga_ssl_hf.evaluation.probe import AlignedTask, no_drops

    aligned = AlignedTask(task, np.asarray(ids).astype(str), np.asarray(embeddings, dtype=np.float32), labels)
    dropped = no_drops()
    rows, y = aligned.select(list(aligned.class_of), dropped)
    # float32, as the evaluation fits it
    fitted = fit_probe(
        aligned.embeddings[rows], y, standardize, PAPER_CLASSIFIER["C"] if C is None else C, blocks
    )
    settings = {**PAPER_CLASSIFIER, "C": fitted.C}
    counts = np.bincount(y, minlength=len(aligned.classes))
    info = {
        "task": task,
        "classifier": {"type": "sklearn.linear_model.LogisticRegression", **settings},
        **({"column_blocks": dict(blocks), "block": fitted.block} if blocks else {}),
        "n_train": int(len(y)),
        "class_counts": {c: int(n) for c, n in zip(aligned.classes, counts)},
        "n_labelled_without_embedding": len(dropped["missing_embeddings"]),
        "embeddings": {"source": embeddings_source, "metadata": embeddings_metadata or {}},
    }
    scaler = fitted.scaler
    return SavedProbe(
        classes=[str(c) for c in aligned.classes],
        coef=fitted.coef,
        intercept=fitted.classifier.intercept_,
        scaler_mean=scaler.mean_ if scaler else None,
        scaler_scale=scaler.scale_ if scaler else None,
        info=info,
    )
