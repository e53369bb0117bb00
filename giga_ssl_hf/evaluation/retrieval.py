"""Similar slides: cosine nearest neighbours of slide embeddings (``giga-ssl search``) and leave-one-out
retrieval accuracy (``giga-ssl evaluate --retrieval``).

    giga-ssl search --embeddings runs/embeddings --query slide_007 -k 10 --labels labels.csv
    giga-ssl search --embeddings owner/tcga-gigassl --query-embeddings my_embeddings -k 5

Cosine similarity is the inner product of L2-normalised embeddings. The default backend is exact (one numpy
matrix product: fine up to tens of thousands of slides); ``--backend faiss`` builds a FAISS inner-product
index through ``datasets``' ``add_faiss_index`` (needs ``pip install faiss-cpu``) and finds the same
neighbours. Retrieval accuracy: each labelled slide is a query against all the others (never itself, and,
with patients given, never a slide of its own patient); top-1 is how often the nearest one has the query's
label, majority@5 how often the majority label of the 5 nearest does (a tie goes to the label of the nearer
slide).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from giga_ssl_hf.settings import SettingsParser, option, run_main

logger = logging.getLogger(__name__)

MAJORITY_K = 5


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """`(n, E)` float32 rows scaled to unit L2 norm (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _exact_neighbours(base, queries, k, excluded):
    similarities = queries @ base.T  # (q, n)
    if excluded is not None:
        similarities = np.where(excluded, -np.inf, similarities)
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarities, order, axis=1)


def _faiss_neighbours(base, queries, k, excluded):
    try:
        import faiss
    except ImportError as error:
        raise ValueError("--backend faiss needs the faiss package: pip install faiss-cpu") from error
    from giga_ssl_hf.contracts.slide_embeddings import embeddings_dataset

    rows = embeddings_dataset(np.arange(len(base)).astype(str), base)
    rows.add_faiss_index("embedding", metric_type=faiss.METRIC_INNER_PRODUCT)
    extra = 0 if excluded is None else int(excluded.sum(axis=1).max())
    found = rows.get_nearest_examples_batch("embedding", queries, k=min(len(base), k + extra))
    order = np.full((len(queries), k), -1)
    similarities = np.full((len(queries), k), -np.inf)
    for query, (scores, examples) in enumerate(zip(found.total_scores, found.total_examples)):
        hits = [
            (int(i), s)
            for i, s in zip(examples["slide_id"], scores)
            if excluded is None or not excluded[query, int(i)]
        ]
        hits = hits[:k]
        order[query, : len(hits)] = [i for i, _ in hits]
        similarities[query, : len(hits)] = [s for _, s in hits]
    return order, similarities


def nearest_neighbours(
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    excluded: np.ndarray | None = None,
    backend: Literal["exact", "faiss"] = "exact",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``base`` most cosine-similar to each query: ``(indices (q, k), similarities (q, k))``,
    nearest first. ``excluded`` `(q, n)` bool leaves rows out for a query; where fewer than ``k`` remain the
    row is padded with index -1 and similarity -inf."""
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    base, queries = unit_rows(base), unit_rows(queries)
    if base.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queries are {queries.shape[1]}-d but the searched embeddings are {base.shape[1]}-d"
        )
    k_found = min(k, len(base))
    search = _faiss_neighbours if backend == "faiss" else _exact_neighbours
    order, similarities = search(base, queries, k_found, excluded)
    order = np.where(np.isfinite(similarities), order, -1)
    pad = ((0, 0), (0, k - k_found))
    return np.pad(order, pad, constant_values=-1), np.pad(similarities, pad, constant_values=-np.inf)


def majority_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Per row, the most frequent label (-1 entries ignored); a tie goes to the label met first (the nearest)."""
    votes = []
    for row in neighbour_labels:
        row = row[row >= 0]
        counts = np.bincount(row) if len(row) else np.zeros(1)
        tied = np.flatnonzero(counts == counts.max())
        votes.append(next((label for label in row if label in tied), -1))
    return np.array(votes)


def retrieval_accuracy(
    ids: np.ndarray, embeddings: np.ndarray, labels: pd.Series, patients: pd.Series | None = None
) -> dict:
    """Leave-one-out top-1 and majority@5 accuracy of the labelled slides that have an embedding.

    ``patients`` (slide ID -> patient) leaves out the slides of the query's own patient as well."""
    ids = np.asarray(ids).astype(str)
    keep = np.flatnonzero(pd.Index(ids).isin(labels.index))
    if len(keep) < 2:
        raise ValueError("retrieval needs at least two labelled slides with an embedding")
    classes, y = np.unique(labels.loc[ids[keep]].to_numpy(), return_inverse=True)
    excluded = np.eye(len(keep), dtype=bool)
    if patients is not None:
        patient = patients.reindex(ids[keep]).fillna(pd.Series(ids[keep], index=ids[keep])).to_numpy()
        excluded |= patient[:, None] == patient[None, :]
    order, _ = nearest_neighbours(embeddings[keep], embeddings[keep], MAJORITY_K, excluded)
    neighbour_labels = np.where(order >= 0, y[np.maximum(order, 0)], -1)
    answered = order[:, 0] >= 0
    return {
        "n_slides": int(len(keep)),
        "n_without_candidates": int((~answered).sum()),
        "top1": float((neighbour_labels[:, 0] == y).mean()),
        f"majority_at_{MAJORITY_K}": float((majority_vote(neighbour_labels) == y).mean()),
        "majority_class_rate": float(np.bincount(y).max() / len(y)),
        "classes": classes.tolist(),
    }


def read_patients(labels_file: str | Path, column: str) -> pd.Series:
    """Slide ID -> patient from the labels CSV's ``column``."""
    table = pd.read_csv(labels_file, dtype=str, skipinitialspace=True)
    table.columns = table.columns.str.strip()
    if column not in table.columns:
        raise ValueError(f"{labels_file}: no patient column {column!r} (columns: {list(table.columns)})")
    return table.dropna(subset=["ID", column]).set_index("ID")[column].str.strip()


def retrieval_report(
    sources: dict[str, tuple[np.ndarray, np.ndarray]],
    labels_files: list[str],
    tasks: list[str],
    patient_column: str | None = None,
) -> tuple[list[dict], str]:
    """:func:`retrieval_accuracy` of every source (embeddings, baselines) on every task: records and a table."""
    from giga_ssl_hf.evaluation.data import load_labels

    records = []
    for labels_file, task in zip(labels_files, tasks):
        labels = load_labels(labels_file)
        patients = read_patients(labels_file, patient_column) if patient_column else None
        for name, (ids, vectors) in sources.items():
            records.append(
                {"task": task, "embedding": name, **retrieval_accuracy(ids, vectors, labels, patients)}
            )
    excluded = "same slide and patient" if patient_column else "same slide"
    lines = [
        f"retrieval (cosine, leave-one-out, {excluded} excluded):",
        f"{'task':12s} {'embedding':12s} {'slides':>6s} {'top-1':>6s} {'maj@5':>6s} {'majority class':>14s}",
    ]
    for r in records:
        lines.append(
            f"{r['task']:12s} {r['embedding']:12s} {r['n_slides']:6d} {r['top1']:6.3f} "
            f"{r[f'majority_at_{MAJORITY_K}']:6.3f} {r['majority_class_rate']:14.3f}"
        )
    return records, "\n".join(lines)


@dataclass
class SearchSettings:
    """giga-ssl search's settings."""

    embeddings: str | None = option(
        None,
        "Slide embeddings to search: a folder or a Hub dataset repo id.",
        metavar="SOURCE",
        required=True,
    )
    query: tuple[str, ...] | None = option(
        None,
        "Slide ID(s) of --embeddings to find the neighbours of (the slide itself is left out).",
        metavar="ID",
    )
    query_embeddings: str | None = option(
        None,
        "Other slide embeddings (folder or Hub repo): the neighbours of each of their slides.",
        metavar="SOURCE",
    )
    k: int = option(10, "Neighbours per query.", flag="-k", aliases=("--k",))
    labels: Path | None = option(None, "Labels CSV (ID, label): print each neighbour's label.", metavar="CSV")
    backend: Literal["exact", "faiss"] = option(
        "exact", "exact numpy, or a FAISS index (pip install faiss-cpu)."
    )

    def __post_init__(self):
        if (self.query is None) == (self.query_embeddings is None):
            raise ValueError("give --query SLIDE_ID... or --query-embeddings SOURCE (one of them)")
        if self.k < 1:
            raise ValueError("-k must be positive")


def _queries(settings: SearchSettings, ids: np.ndarray, embeddings: np.ndarray):
    """``(query ids, query vectors, excluded (q, n))``: the own slide is never its own neighbour."""
    from giga_ssl_hf.contracts.slide_embeddings import load_embeddings

    if settings.query_embeddings is not None:
        query_ids, vectors = load_embeddings(settings.query_embeddings)
        return query_ids, vectors, None
    unknown = sorted(set(settings.query) - set(ids.tolist()))
    if unknown:
        raise ValueError(f"--query: not in {settings.embeddings}: {unknown}")
    rows = np.array([np.flatnonzero(ids == query)[0] for query in settings.query])
    return np.asarray(settings.query), embeddings[rows], rows[:, None] == np.arange(len(ids))[None]


def search(settings: SearchSettings) -> int:
    """Print the ``k`` nearest slides of each query (rank, slide_id, cosine similarity, label)."""
    from giga_ssl_hf.contracts.slide_embeddings import load_embeddings
    from giga_ssl_hf.evaluation.data import load_labels

    labels = load_labels(settings.labels) if settings.labels else None
    ids, embeddings = load_embeddings(settings.embeddings)
    query_ids, queries, excluded = _queries(settings, ids, embeddings)
    order, similarities = nearest_neighbours(embeddings, queries, settings.k, excluded, settings.backend)
    for query, row, sims in zip(query_ids, order, similarities):
        own = f" ({labels.get(str(query), 'unlabelled')})" if labels is not None else ""
        print(f"{query}{own}:")
        for rank, (index, similarity) in enumerate(zip(row[row >= 0], sims[row >= 0]), start=1):
            label = f"  {labels.get(str(ids[index]), 'unlabelled')}" if labels is not None else ""
            print(f"  {rank:3d}  {ids[index]}  {similarity:.4f}{label}")
    return 0


def build_parser() -> SettingsParser:
    return SettingsParser(
        SearchSettings,
        prog="giga-ssl search",
        description="The most similar slides (cosine similarity of slide embeddings) to given slides.",
        epilog=__doc__.split("\n\n")[1],
    )


def main_search(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), search, argv)


main = main_search

if __name__ == "__main__":
    sys.exit(main_search())
