import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from giga_ssl_hf.evaluation.probe import (
    TrainSize,
    evaluate_embeddings,
    fit_predict,
    parse_train_sizes,
    slide_auc,
    stratified_subsample,
)

from .synthetic import planted, write_split


def test_planted_separability_gives_auc_near_one(binary_task):
    folder, labels_csv, *_ = binary_task
    (result,) = evaluate_embeddings(folder, labels_csv, folds=5)
    assert result.task == "task" and result.split_set == "5-fold CV" and result.train_size == "full"
    assert len(result.splits) == 5 and result.mean > 0.98
    assert sum(s.n_test for s in result.splits) == 120


def test_noise_gives_auc_near_half():
    ids, x, labels = planted(400, signal=0.0, seed=3)
    (result,) = evaluate_embeddings((ids, x), labels, folds=5, seed=1)
    assert abs(result.mean - 0.5) < 0.08


def test_three_classes_one_vs_rest():
    ids, x, labels = planted(150, n_classes=3)
    (result,) = evaluate_embeddings((ids, x), labels, folds=3)
    assert result.classes == ["class_0", "class_1", "class_2"]
    assert result.splits[0].scores.shape[1] == 3
    assert result.mean > 0.97


def test_metric_module_matches_sklearn():
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 50)
    s2 = rng.random(50)
    assert slide_auc(y2, s2) == pytest.approx(roc_auc_score(y2, s2))
    y3 = np.arange(60) % 3
    p3 = rng.dirichlet([1, 1, 1], 60)
    assert slide_auc(y3, p3) == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr", average="macro"))


def test_paper_classifier_returns_positive_class_probability():
    ids, x, labels = planted(40)
    y = (labels == "class_1").to_numpy().astype(int)
    scores = fit_predict(x, y, x)
    assert scores.shape == (40,) and slide_auc(y, scores) == 1.0


def test_fixed_splits_report_missing_ids(tmp_path, caplog):
    ids, x, labels = planted(100)
    has_embedding = ids[:90]
    for k in range(3):
        order = np.random.default_rng(k).permutation(ids)
        write_split(tmp_path / "splits" / f"split_{k}.csv", [*order[:70], "NOT-LABELLED"], list(order[70:]))
    with caplog.at_level(logging.WARNING):
        (result,) = evaluate_embeddings((has_embedding, x[:90]), labels, splits=tmp_path / "splits", task="t")
    assert result.split_set == "splits"
    assert result.dropped["missing_embeddings"] == sorted(ids[90:])
    assert result.dropped["missing_labels"] == ["NOT-LABELLED"]
    assert result.to_dict()["n_dropped"] == {"missing_embeddings": 10, "missing_labels": 1}
    assert all(s.n_train + s.n_test == 90 for s in result.splits)
    assert "10 split IDs dropped (missing embeddings)" in caplog.text
    assert "1 split IDs dropped (missing labels)" in caplog.text
    assert result.mean > 0.98


def test_folder_of_split_folders_and_train_sizes(tmp_path):
    ids, x, labels = planted(200)
    for size, n_train in (("full", 150), ("50", 50)):
        for k in range(2):
            order = np.random.default_rng(k).permutation(ids)
            write_split(tmp_path / "task" / size / f"split_{k}.csv", list(order[:n_train]), list(order[150:]))
    results = evaluate_embeddings((ids, x), labels, splits=tmp_path / "task", train_sizes="20,full")
    got = [(r.split_set, r.train_size, r.mean_n_train) for r in results]
    assert got == [("50", "20", 20), ("50", "full", 50), ("full", "20", 20), ("full", "full", 150)]
    assert all(s.n_test == 50 for r in results for s in r.splits)


def test_single_class_training_split_is_a_clear_error(tmp_path):
    ids, x, labels = planted(40)
    ones = list(labels.index[labels == "class_1"])
    write_split(tmp_path / "s" / "split_0.csv", ones[:10], list(ids))
    with pytest.raises(ValueError, match=r"training set has no slide of class\(es\) \['class_0'\]"):
        evaluate_embeddings((ids, x), labels, splits=tmp_path / "s")


def test_labels_series_with_one_class_is_refused():
    ids, x, _ = planted(10)
    with pytest.raises(ValueError, match="at least two classes"):
        evaluate_embeddings((ids, x), pd.Series("a", index=ids), task="one")


def test_kfold_is_deterministic_for_a_seed_and_varies_with_it():
    ids, x, labels = planted(120, signal=1.0)
    aucs = [
        evaluate_embeddings((ids, x), labels, folds=4, seed=s, train_sizes="30")[0].aucs for s in (0, 0, 1)
    ]
    np.testing.assert_array_equal(aucs[0], aucs[1])
    assert not np.array_equal(aucs[0], aucs[2])


def test_too_few_slides_for_the_folds():
    ids, x, labels = planted(8)
    with pytest.raises(ValueError, match="at least 5 slides per class"):
        evaluate_embeddings((ids, x), labels, folds=5)


def test_parse_train_sizes():
    sizes = parse_train_sizes("50, 25%,full")
    assert [s.label for s in sizes] == ["50", "25%", "full"]
    assert [s.resolve(200) for s in sizes] == [50, 50, 200]
    assert TrainSize.parse("500").resolve(120) == 120
    assert parse_train_sizes(None) == [TrainSize("full")]
    for bad in ("abc", "0", "150%", "-3"):
        with pytest.raises(ValueError, match="training size"):
            TrainSize.parse(bad)


def test_stratified_subsample_keeps_rare_classes():
    y = np.array([0] * 95 + [1] * 4 + [2] * 1)
    rng = np.random.default_rng(0)
    keep = stratified_subsample(y, 10, rng)
    assert len(keep) == 10 and len(set(keep)) == 10
    assert set(y[keep]) == {0, 1, 2}
    np.testing.assert_array_equal(keep, stratified_subsample(y, 10, np.random.default_rng(0)))
    balanced = stratified_subsample(np.repeat([0, 1], 50), 20, rng)
    assert np.bincount(np.repeat([0, 1], 50)[balanced]).tolist() == [10, 10]
    with pytest.raises(ValueError, match="cannot hold all 3 classes"):
        stratified_subsample(y, 2, rng)


def test_labels_and_embeddings_naming_slides_differently():
    ids, x, labels = planted(20)
    with pytest.raises(ValueError, match="none of the 20 labelled IDs has an embedding"):
        evaluate_embeddings((np.char.add("slide-", ids), x), labels)
