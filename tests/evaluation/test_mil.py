"""The supervised MIL baselines (ABMIL, graph MIL on the tile grid) under the probe's protocol and table."""

import json

import numpy as np
import pytest

from giga_ssl_hf.evaluation.evaluate_command import main
from giga_ssl_hf.evaluation.mil import grid_edges, mil_baseline
from giga_ssl_hf.evaluation.mil_recipe import MILRecipe
from giga_ssl_hf.evaluation.probe import evaluate_embeddings

from .synthetic import PATCH, write_labels, write_npy, write_tile_cohort


def test_grid_edges_join_the_eight_neighbours_only():
    # a 3 x 3 block plus one far tile: the centre has 8 neighbours, corners 3, edges 5, the far tile none
    cells = [(x, y) for x in range(3) for y in range(3)] + [(10, 10)]
    source, target = grid_edges(np.array(cells) * PATCH + 7, PATCH)
    degree = np.bincount(target, minlength=10)
    assert degree.tolist() == [3, 5, 3, 5, 8, 5, 3, 5, 3, 0]
    pairs = {(int(s), int(t)) for s, t in zip(source, target)}
    assert all((t, s) in pairs for s, t in pairs)  # undirected
    assert all(max(abs(np.subtract(cells[s], cells[t]))) == 1 for s, t in pairs)


@pytest.mark.slow
def test_mil_baselines_beside_mean_pool_in_one_table(tmp_path, capsys):
    labels = write_tile_cohort(tmp_path / "exhaustive", 24, 6, arrangement=False)
    embeddings = write_npy(
        tmp_path / "emb", labels.index.to_numpy(), np.random.default_rng(1).normal(size=(24, 8))
    )
    labels_csv = write_labels(tmp_path / "task.csv", labels)
    argv = [
        "--embeddings",
        str(embeddings),
        "--labels",
        str(labels_csv),
        "--folds",
        "3",
        "--train-sizes",
        "8,full",
    ]
    argv += [
        "--baseline",
        "mean-pool",
        "abmil",
        "--features",
        str(tmp_path / "exhaustive"),
        "--mil-epochs",
        "8",
    ]
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-plots", "--retrieval"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if "±" in line]  # the AUC table (retrieval follows it)
    assert {(row[1], row[4]) for row in rows} == {
        (name, size) for name in ("embeddings", "mean-pool", "abmil") for size in ("8", "full")
    }
    retrieval = (tmp_path / "out" / "retrieval.json").read_text()
    assert "mean-pool" in retrieval and "abmil" not in retrieval  # a MIL model has no slide vector to compare
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    abmil = metrics["baselines"]["abmil"]["task"]["3-fold CV"]["train_sizes"]
    assert abmil["full"]["auc_mean"] > 0.9  # the composition signal is learnt
    assert [split["n_train"] for split in abmil["8"]["splits"]] == [8, 8, 8]
    assert {split["C"] for split in abmil["full"]["splits"]} == {None}  # no probe C for a MIL model


def test_fits_are_seeded_and_streamed_from_the_dataset(tmp_path):
    labels = write_tile_cohort(tmp_path / "exhaustive", 12, 4, arrangement=False)
    recipe = MILRecipe(epochs=3, validation_fraction=0.25)
    ids, model = mil_baseline("graph-mil", str(tmp_path / "exhaustive"), recipe, slide_ids=labels.index[2:])
    assert ids.tolist() == labels.index[2:].tolist()
    assert model.rows.tolist() == list(range(2, 12))  # positions map to the Dataset's rows
    y = (labels.loc[ids] == "b").to_numpy().astype(np.int64)
    first = model.fit_predict(np.arange(8), y[:8], np.arange(8, 10), 2)
    again = model.fit_predict(np.arange(8), y[:8], np.arange(8, 10), 2)
    assert first.shape == (2,) and np.array_equal(first, again)
    # the tiles are zero-copy views of the memory-mapped Arrow column, not a loaded copy of the cohort
    assert not model.arrays.features[0].flags.owndata


@pytest.mark.slow
def test_graph_mil_sees_arrangement_that_attention_mil_cannot(tmp_path):
    labels = write_tile_cohort(tmp_path / "exhaustive", 32, 8, arrangement=True)
    recipe = MILRecipe(epochs=12)
    auc = {}
    for kind in ("abmil", "graph-mil"):
        source = mil_baseline(kind, str(tmp_path / "exhaustive"), recipe)
        (result,) = evaluate_embeddings(source, labels, folds=4, embedding=kind)
        auc[kind] = result.mean
    assert auc["graph-mil"] > 0.9, auc
    assert auc["abmil"] < 0.75, auc  # same composition in both classes: attention pooling sees no difference


def test_inner_split_holds_out_a_stratified_share_of_the_training_slides():
    from giga_ssl_hf.evaluation.mil import _inner_split

    rows, y = np.arange(100, 120), np.array([0] * 12 + [1] * 6 + [2] * 2)
    fit_rows, fit_y, held_rows, held_y = _inner_split(rows, y, 0.25, np.random.default_rng(0))
    assert np.bincount(held_y).tolist() == [3, 2, 1]  # a quarter, at least one, never a whole class
    assert sorted([*fit_rows, *held_rows]) == rows.tolist()
    assert len(_inner_split(rows, y, 0.0, np.random.default_rng(0))[2]) == 0


def test_several_classes_get_a_probability_per_class(tmp_path):
    write_tile_cohort(tmp_path / "exhaustive", 9, 3, arrangement=False)
    _, model = mil_baseline("abmil", str(tmp_path / "exhaustive"), MILRecipe(epochs=1))
    probabilities = model.fit_predict(np.arange(6), np.array([0, 1, 2, 0, 1, 2]), np.arange(6, 9), 3)
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
