"""Similar-slide search and leave-one-out retrieval accuracy."""

import json

import numpy as np
import pandas as pd
import pytest

from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.evaluation.retrieval import majority_vote, nearest_neighbours, retrieval_accuracy

from .synthetic import planted, write_dataset, write_labels, write_npy


def brute_force(base, queries, k, excluded=None):
    """The k most cosine-similar rows, one query at a time in plain Python."""
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    result = []
    for q, query in enumerate(queries):
        candidates = [i for i in range(len(base)) if excluded is None or not excluded[q, i]]
        result.append(sorted(candidates, key=lambda i: -float(unit(base[i]) @ unit(query)))[:k])
    return result


def test_exact_neighbours_are_the_most_cosine_similar_rows_without_the_excluded():
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(40, 6)) * rng.uniform(0.1, 10, size=(40, 1)), rng.normal(size=(7, 6))
    order, similarities = nearest_neighbours(base, queries, 5)
    assert order.tolist() == brute_force(base, queries, 5)
    assert (np.diff(similarities, axis=1) <= 0).all() and np.abs(similarities).max() <= 1 + 1e-6
    excluded = rng.random((7, 40)) < 0.5
    order, _ = nearest_neighbours(base, queries, 5, excluded)
    assert order.tolist() == brute_force(base, queries, 5, excluded)
    # Fewer candidates than k: padded with -1 / -inf.
    order, similarities = nearest_neighbours(base[:3], queries, 5, np.eye(7, 3, dtype=bool))
    assert (
        (order[:3, 2:] == -1).all() and np.isneginf(similarities[:3, 2:]).all() and (order[3:, :3] >= 0).all()
    )


def test_faiss_index_through_datasets_finds_the_same_neighbours():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    base, queries = rng.normal(size=(200, 16)), rng.normal(size=(20, 16))
    excluded = rng.random((20, 200)) < 0.1
    exact_order, exact_sims = nearest_neighbours(base, queries, 10, excluded)
    faiss_order, faiss_sims = nearest_neighbours(base, queries, 10, excluded, backend="faiss")
    np.testing.assert_array_equal(faiss_order, exact_order)
    np.testing.assert_allclose(faiss_sims, exact_sims, rtol=1e-5)


def test_majority_vote_breaks_ties_by_the_nearer_neighbour_and_ignores_padding():
    votes = majority_vote(np.array([[1, 1, 0, 0, 1], [0, 1, 1, 0, -1], [2, -1, -1, -1, -1]]))
    assert votes.tolist() == [1, 0, 2]


def test_retrieval_accuracy_leaves_out_the_query_and_its_patient():
    ids, x, labels = planted(60, signal=6.0)
    separated = retrieval_accuracy(ids, x, labels)
    assert separated["top1"] == 1.0 and separated["majority_at_5"] == 1.0 and separated["n_slides"] == 60
    # A second slide of each patient, identical to the first but with the other label: the nearest slide
    # unless the patient's slides are left out.
    twins = np.array([f"{i}-b" for i in ids])
    flipped = labels.map({"class_0": "class_1", "class_1": "class_0"}).set_axis(twins)
    all_ids, all_x = np.concatenate([ids, twins]), np.concatenate([x, x])
    all_labels = pd.concat([labels, flipped])
    assert retrieval_accuracy(all_ids, all_x, all_labels)["top1"] == 0.0
    patients = pd.Series([i[:9] for i in all_ids], index=all_ids)
    assert retrieval_accuracy(all_ids, all_x, all_labels, patients)["top1"] == 0.5  # the other twins disagree
    unlabelled = retrieval_accuracy(np.append(ids, "extra"), np.vstack([x, x[:1]]), labels)
    assert unlabelled["n_slides"] == 60


def test_search_cli_prints_neighbours_with_labels(tmp_path, capsys):
    ids, x, labels = planted(30, signal=6.0)
    emb = write_dataset(tmp_path / "emb", ids, x)
    csv = write_labels(tmp_path / "labels.csv", labels)
    assert (
        cli_main(
            ["search", "--embeddings", str(emb), "--query", ids[0], ids[1], "-k", "3", "--labels", str(csv)]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{ids[0]} ({labels[ids[0]]}):" and len(lines) == 8
    expected = brute_force(x, x[:1], 3, np.arange(30)[None] == 0)[0]
    for line, index in zip(lines[1:4], expected):
        rank, slide, similarity, label = line.split()
        assert slide == ids[index] and label == labels[ids[index]] == labels[ids[0]]
    # Queries from other embeddings (the same slides again: each finds itself first, similarity 1).
    queries = write_npy(tmp_path / "queries", ids[:2], x[:2])
    assert cli_main(["search", "--embeddings", str(emb), "--query-embeddings", str(queries), "-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[1:] == [ids[0], "1.0000"] and lines[3].split()[1] == ids[1]
    for argv, message in (
        ([], "give --query SLIDE_ID... or --query-embeddings"),
        (["--query", "nope"], "not in"),
        (["--query", ids[0], "-k", "0"], "-k must be positive"),
    ):
        assert cli_main(["search", "--embeddings", str(emb), *argv]) == 2
        assert message in capsys.readouterr().err


def test_evaluate_retrieval_reports_and_writes_accuracy(binary_task, tmp_path, capsys):
    emb, csv, ids, x, labels = binary_task
    argv = ["evaluate", "--embeddings", str(emb), "--labels", str(csv), "--folds", "3", "--no-plots"]
    assert (
        cli_main([*argv, "--retrieval", "--patient-column", "case_id", "--out", str(tmp_path / "out")]) == 0
    )
    printed = capsys.readouterr().out
    assert "retrieval (cosine, leave-one-out, same slide and patient excluded)" in printed
    (record,) = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    patients = pd.Series([i[:9] for i in ids], index=ids)
    assert record == {
        "task": "task",
        "embedding": "embeddings",
        **retrieval_accuracy(ids, x, labels, patients),
    }
    assert cli_main([*argv, "--patient-column", "case_id"]) == 2
    assert "only used by --retrieval" in capsys.readouterr().err
    assert cli_main([*argv, "--retrieval", "--patient-column", "donor"]) == 2
    assert "no patient column 'donor'" in capsys.readouterr().err
