"""Fixtures of the evaluation tests."""

import pytest

from .synthetic import planted, write_labels, write_npy


@pytest.fixture
def binary_task(tmp_path):
    """(npy folder, labels CSV, ids, embeddings, labels) of a well-separated two-class task."""
    ids, x, labels = planted(120)
    return write_npy(tmp_path / "emb", ids, x), write_labels(tmp_path / "task.csv", labels), ids, x, labels
