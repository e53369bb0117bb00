"""The probe beyond the paper: --standardize, --C (one value or inner CV), and the mean-pool baseline."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler

from giga_ssl_hf.contracts import NO_AUGMENTATION
from giga_ssl_hf.contracts.tile_features import tile_features_schema
from giga_ssl_hf.evaluation.evaluate_command import main
from giga_ssl_hf.evaluation.probe import evaluate_embeddings, fit_predict, parse_c

from .synthetic import write_labels, write_npy


def small_scale_signal(n=200, seed=0):
    """The class lives in a feature 1000x smaller than the noise features: C=10 without scaling misses it."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 20))
    x[:, 0] = (y + 0.3 * rng.normal(size=n)) * 1e-3
    ids = np.array([f"s{i:03d}" for i in range(n)])
    return ids, x.astype(np.float32), pd.Series(np.where(y == 1, "b", "a"), index=ids)


def test_standardize_finds_a_small_scale_signal_the_paper_probe_misses():
    ids, x, labels = small_scale_signal()
    (paper,) = evaluate_embeddings((ids, x), labels, folds=4, task="t")
    (standardised,) = evaluate_embeddings((ids, x), labels, folds=4, task="t", standardize=True)
    assert paper.mean < 0.75 and standardised.mean > 0.9


def test_standardize_fits_the_scaler_on_the_training_slides_only():
    rng = np.random.default_rng(1)
    x_train, x_test = rng.normal(size=(40, 3)), rng.normal(loc=5.0, scale=3.0, size=(10, 3))
    y_train = np.arange(40) % 2
    scaler = StandardScaler().fit(x_train)
    expected = (
        LogisticRegression(C=10, max_iter=1000, class_weight="balanced")
        .fit(scaler.transform(x_train), y_train)
        .predict_proba(scaler.transform(x_test))[:, 1]
    )
    np.testing.assert_allclose(fit_predict(x_train, y_train, x_test, standardize=True), expected, rtol=1e-6)


def test_c_list_is_chosen_by_inner_cv_on_the_training_split():
    ids, x, labels = small_scale_signal(120, seed=2)
    y = (labels == "b").to_numpy().astype(int)
    train, test = np.arange(80), np.arange(80, 120)
    scores, chosen = fit_predict(x[train], y[train], x[test], True, [0.001, 0.1, 10.0], return_c=True)
    search = GridSearchCV(
        LogisticRegression(max_iter=1000, class_weight="balanced"),
        {"C": [0.001, 0.1, 10.0]},
        scoring="roc_auc",
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    ).fit(StandardScaler().fit(x[train]).transform(x[train]), y[train])
    assert chosen == search.best_params_["C"]
    assert scores.shape == (40,)


@pytest.mark.parametrize("text", ["abc", "0", "-1,2", ""])
def test_bad_c_is_a_clear_error(text):
    with pytest.raises(ValueError, match="C"):
        parse_c(text)


def write_tile_features(folder, labels: pd.Series, seed=0):
    """Exhaustive tile features whose mean carries the class (a shift of feature 0 on a third of the tiles)."""
    import datasets

    rng = np.random.default_rng(seed)
    columns = {name: [] for name in tile_features_schema(4)}
    for slide, label in labels.items():
        n = int(rng.integers(20, 40))
        features = rng.normal(size=(n, 4))
        features[: n // 3, 0] += 3.0 * (label == "b")
        columns["slide_id"].append(slide)
        columns["aug_id"].append(NO_AUGMENTATION)
        columns["features"].append(features.astype(np.float16))
        columns["coords"].append(np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.int64) * 224)
        columns["patch_size_level0"].append(224)
        columns["mpp"].append(0.5)
        columns["magnification"].append(20.0)
    datasets.Dataset.from_dict(columns, features=tile_features_schema(4)).save_to_disk(str(folder))
    return folder


def test_mean_pool_baseline_in_the_same_table_and_metrics(tmp_path, capsys):
    ids = np.array([f"s{i:03d}" for i in range(60)])
    labels = pd.Series(np.where(np.arange(60) % 2, "b", "a"), index=ids)
    embeddings = write_npy(tmp_path / "emb", ids, np.random.default_rng(0).normal(size=(60, 8)))  # no signal
    features = write_tile_features(tmp_path / "exhaustive", labels)
    labels_csv = write_labels(tmp_path / "task.csv", labels)
    out = tmp_path / "out"
    argv = ["--embeddings", str(embeddings), "--labels", str(labels_csv), "--folds", "3", "--standardize"]
    argv += ["--C", "0.1,1,10", "--baseline", "mean-pool", "--features", str(features), "--out", str(out)]
    assert main(argv + ["--no-plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "probe: logistic regression, C=0.1,1,10, standardised features: yes"
    assert "embedding" in lines[1].split()
    rows = {line.split()[1]: float(line.split()[-3]) for line in lines[2:]}
    assert set(rows) == {"embeddings", "mean-pool"}
    assert rows["mean-pool"] > 0.9 and rows["embeddings"] < 0.8
    metrics = json.loads((out / "metrics.json").read_text())
    baseline = metrics["baselines"]["mean-pool"]["task"]["3-fold CV"]["train_sizes"]["full"]
    assert baseline["auc_mean"] > 0.9
    assert {s["C"] for s in baseline["splits"]} <= {0.1, 1.0, 10.0}
    assert (out / "metrics.csv").read_text().startswith("embedding,task,")


def test_baseline_features_of_other_slides_are_refused_before_any_work(tmp_path, capsys):
    ids = np.array([f"s{i:03d}" for i in range(12)])
    labels = pd.Series(np.where(np.arange(12) % 2, "b", "a"), index=ids)
    embeddings = write_npy(tmp_path / "emb", ids, np.random.default_rng(0).normal(size=(12, 8)))
    other_cohort = pd.Series(labels.to_numpy(), index=[f"t{i:03d}" for i in range(12)])
    features = write_tile_features(tmp_path / "exhaustive", other_cohort)
    out = tmp_path / "out"
    argv = ["--embeddings", str(embeddings), "--labels", str(write_labels(tmp_path / "task.csv", labels))]
    argv += ["--folds", "3", "--baseline", "mean-pool", "--features", str(features), "--out", str(out)]
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()  # refused before the embeddings' evaluation
    assert captured.err.count("\n") == 1 and "lacks 12 of the 12 slides" in captured.err


def test_baseline_without_features_is_a_usage_error(binary_task, capsys):
    folder, labels_csv, *_ = binary_task
    assert main(["--embeddings", str(folder), "--labels", str(labels_csv), "--baseline", "mean-pool"]) == 2
    assert "--features" in capsys.readouterr().err


def test_bad_c_on_the_command_line_exits_2(binary_task, capsys):
    folder, labels_csv, *_ = binary_task
    assert main(["--embeddings", str(folder), "--labels", str(labels_csv), "--C", "ten"]) == 2
    assert capsys.readouterr().err.startswith("giga-ssl evaluate: error: --C 'ten'")


def test_save_probe_keeps_the_evaluated_probe_settings(binary_task, tmp_path, capsys):
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe, fit_saved_probe

    folder, labels_csv, ids, x, labels = binary_task
    argv = ["--embeddings", str(folder), "--labels", str(labels_csv), "--folds", "3", "--standardize"]
    assert main([*argv, "--C", "0.5", "--save-probe", str(tmp_path / "probe")]) == 0
    probe = SavedProbe.load(tmp_path / "probe")
    assert probe.standardize and probe.info["classifier"]["C"] == 0.5
    expected = fit_saved_probe(ids, x, labels, standardize=True, C=0.5)
    np.testing.assert_allclose(probe.predict_proba(x), expected.predict_proba(x), rtol=1e-6)
    # one saved probe: one C, not a search
    assert main([*argv, "--C", "0.1,1", "--save-probe", str(tmp_path / "other")]) == 2
    assert "single --C" in capsys.readouterr().err
