"""Synthetic slide embeddings with a known amount of class signal, written in every supported format."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pandas as pd


def planted(n: int, n_classes: int = 2, dim: int = 8, signal: float = 4.0, seed: int = 0):
    """IDs, embeddings and labels where class k is shifted by ``signal`` along dimension k."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[np.arange(n), y] += signal
    ids = np.array([f"TCGA-{i:04d}" for i in range(n)])
    labels = pd.Series(np.array([f"class_{c}" for c in range(n_classes)])[y], index=ids)
    return ids, x, labels


def write_npy(folder: Path, ids: np.ndarray, x: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", x)
    np.save(folder / "ids.npy", ids.astype(str))
    return folder


def write_dataset(folder: Path, ids: np.ndarray, x: np.ndarray) -> Path:
    features = datasets.Features(
        {"slide_id": datasets.Value("string"), "embedding": datasets.Sequence(datasets.Value("float32"))}
    )
    datasets.Dataset.from_dict({"slide_id": list(ids), "embedding": x}, features=features).save_to_disk(
        str(folder)
    )
    return folder


def write_labels(path: Path, labels: pd.Series, extra_column: bool = True) -> Path:
    table = pd.DataFrame({"ID": labels.index, "label": labels.to_numpy()})
    if extra_column:
        table["case_id"] = [i[:9] for i in labels.index]
    table.to_csv(path, index=False)
    return path


def write_split(path: Path, train: list[str], test: list[str]) -> Path:
    """A split CSV as the paper writes them: columns of unequal length padded with empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([pd.Series(train, name="train"), pd.Series(test, name="test")], axis=1).to_csv(
        path, index=False
    )
    return path
