import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from giga_ssl_hf.contracts import PROBE_CONFIG, PROBE_WEIGHTS
from giga_ssl_hf.evaluation.classifier import fit_predict
from giga_ssl_hf.evaluation.evaluate_command import main
from giga_ssl_hf.evaluation.saved_probe import SavedProbe, fit_saved_probe

from .synthetic import HYBRID_BLOCKS, hybrid_embeddings, planted, write_dataset, write_labels


def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("standardize", [False, True])
def test_saved_probe_reproduces_sklearn_after_a_round_trip(tmp_path, n_classes, standardize):
    ids, x, labels = planted(90, n_classes=n_classes, signal=1.5)
    x = (x * np.linspace(0.5, 4, x.shape[1]) + 2).astype(
        np.float32
    )  # dimensions on different scales: standardisation matters
    # Unlabelled slides and labels without embeddings are left out.
    probe = fit_saved_probe(ids[:80], x[:80], labels, task="planted", standardize=standardize)
    assert probe.info["n_train"] == 80 and probe.info["n_labelled_without_embedding"] == 10
    classes = sorted(labels.unique())
    y = np.array([classes.index(labels[i]) for i in ids[:80]])
    scaler = StandardScaler().fit(x[:80]) if standardize else None
    reference = LogisticRegression(C=10, max_iter=1000, class_weight="balanced")
    reference.fit(scaler.transform(x[:80]) if standardize else x[:80], y)
    test_x = x[80:].astype(np.float64)  # sklearn then scores in float64, as the saved probe does
    expected = reference.predict_proba(scaler.transform(test_x) if standardize else test_x)

    probe.save(tmp_path / "probe")
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == [PROBE_CONFIG, PROBE_WEIGHTS]
    config = _strict_json(tmp_path / "probe" / PROBE_CONFIG)
    assert config["classes"] == classes and config["standardize"] is standardize
    assert config["classifier"]["C"] == 10 and config["embedding_dim"] == 8
    arrays = load_file(str(tmp_path / "probe" / PROBE_WEIGHTS))
    assert arrays["coef"].shape == (1 if n_classes == 2 else n_classes, 8)
    assert ("scaler_mean" in arrays) is standardize

    loaded = SavedProbe.load(tmp_path / "probe")
    np.testing.assert_allclose(loaded.predict_proba(test_x), expected, rtol=1e-9, atol=1e-12)
    for k, name in enumerate(classes):
        p = expected[:, k]
        np.testing.assert_allclose(loaded.log_odds(test_x, name), np.log(p / (1 - p)), rtol=1e-6, atol=1e-8)
    if n_classes == 2:
        np.testing.assert_allclose(loaded.decision_function(test_x)[:, 0], reference.decision_function(
            scaler.transform(test_x) if standardize else test_x))  # fmt: skip
    assert loaded.default_class == classes[-1]
    with pytest.raises(ValueError, match="no class 'nope'"):
        loaded.log_odds(test_x, "nope")
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        loaded.decision_function(test_x[:, :5])


@pytest.mark.parametrize("standardize", [False, True])
def test_a_probe_of_column_blocks_keeps_the_chosen_block_and_scores_as_the_evaluations_fit(
    tmp_path, standardize
):
    ids, x, labels = hybrid_embeddings(60, "mean-pool")
    probe = fit_saved_probe(ids, x, labels, standardize=standardize, blocks=HYBRID_BLOCKS)
    probe.save(tmp_path / "probe")
    loaded = SavedProbe.load(tmp_path / "probe")
    assert loaded.info["block"] == "mean-pool" and loaded.info["column_blocks"] == HYBRID_BLOCKS
    assert loaded.coef.shape == (1, 72) and not loaded.coef[:, :8].any() and loaded.coef[:, 8:].all()
    assert loaded.standardize is standardize and (not standardize or loaded.scaler_mean.shape == (72,))
    y = (labels[ids] == "b").to_numpy().astype(int)
    scores = loaded.predict_proba(x.astype(np.float64))[:, 1]
    # The evaluation's probe fit on the same slides, and the probe of the chosen block alone.
    np.testing.assert_allclose(scores, fit_predict(x, y, x, standardize, blocks=HYBRID_BLOCKS), rtol=1e-5)
    np.testing.assert_allclose(scores, fit_predict(x[:, 8:], y, x[:, 8:], standardize), rtol=1e-5)


def test_save_refuses_to_replace_work(tmp_path):
    ids, x, labels = planted(40)
    probe = fit_saved_probe(ids, x, labels)
    probe.save(tmp_path / "probe")
    with pytest.raises(FileExistsError, match="--overwrite-probe"):
        probe.save(tmp_path / "probe")
    probe.save(tmp_path / "probe", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a saved-probe folder"):
        probe.save(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_failed_save_leaves_the_previous_probe_and_no_temporary(tmp_path, monkeypatch):
    import safetensors.numpy

    ids, x, labels = planted(40)
    probe = fit_saved_probe(ids, x, labels)
    probe.save(tmp_path / "probe")
    before = {p.name: p.read_bytes() for p in (tmp_path / "probe").iterdir()}

    def half_written(arrays, filename):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        probe.save(tmp_path / "probe", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["probe"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "probe").iterdir()} == before


def test_load_rejects_what_is_not_a_probe(tmp_path):
    with pytest.raises(ValueError, match="not a saved probe"):
        SavedProbe.load(tmp_path)
    ids, x, labels = planted(40)
    fit_saved_probe(ids, x, labels).save(tmp_path / "p")
    config = json.loads((tmp_path / "p" / PROBE_CONFIG).read_text())
    (tmp_path / "p" / PROBE_CONFIG).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="version"):
        SavedProbe.load(tmp_path / "p")
    (tmp_path / "p" / PROBE_CONFIG).write_text(json.dumps({**config, "standardize": True}))
    with pytest.raises(ValueError, match="disagree"):
        SavedProbe.load(tmp_path / "p")
    (tmp_path / "p" / PROBE_CONFIG).write_text(json.dumps(config))
    arrays = load_file(str(tmp_path / "p" / PROBE_WEIGHTS))
    save_file({"coef": arrays["coef"], "intercept": np.zeros(3)}, str(tmp_path / "p" / PROBE_WEIGHTS))
    with pytest.raises(ValueError, match="do not fit 2 classes"):
        SavedProbe.load(tmp_path / "p")
    (tmp_path / "p" / PROBE_WEIGHTS).write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match="unreadable"):
        SavedProbe.load(tmp_path / "p")


def test_evaluate_save_probe_records_the_embedding_model(tmp_path, capsys):
    ids, x, labels = planted(60)
    embeddings = write_dataset(tmp_path / "emb", ids, x)
    metadata = {
        "model": "org/gigassl-tcga",
        "model_revision": "abc123",
        "tile_sampling": "random",
        "n_views": 100,
    }
    (embeddings / "giga_ssl_metadata.json").write_text(json.dumps(metadata))
    labels_csv = write_labels(tmp_path / "lung.csv", labels)
    argv = ["--embeddings", str(embeddings), "--labels", str(labels_csv), "--folds", "3"]
    assert main([*argv, "--save-probe", str(tmp_path / "probe")]) == 0
    assert "saved the lung probe (60 slides" in capsys.readouterr().out
    probe = SavedProbe.load(tmp_path / "probe")
    assert probe.embedding_model == "org/gigassl-tcga" and probe.info["task"] == "lung"
    assert probe.info["embeddings"] == {"source": str(embeddings), "metadata": metadata}
    assert probe.standardize is False
    np.testing.assert_allclose(probe.predict_proba(x), fit_saved_probe(ids, x, labels).predict_proba(x))

    # A second run refuses before evaluating, names the flag, and leaves the probe alone.
    before = (tmp_path / "probe" / PROBE_WEIGHTS).read_bytes()
    assert main([*argv, "--save-probe", str(tmp_path / "probe")]) == 2
    captured = capsys.readouterr()
    assert "--overwrite-probe" in captured.err and "AUC" not in captured.out
    assert (tmp_path / "probe" / PROBE_WEIGHTS).read_bytes() == before
    assert main([*argv, "--save-probe", str(tmp_path / "probe"), "--overwrite-probe"]) == 0

    # Several tasks: one sub-folder each.
    other = write_labels(tmp_path / "kidney.csv", planted(60, seed=3)[2])
    argv = ["--embeddings", str(embeddings), "--labels", str(labels_csv), str(other), "--folds", "3"]
    assert main([*argv, "--save-probe", str(tmp_path / "many")]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["kidney", "lung"]
    assert SavedProbe.load(tmp_path / "many" / "kidney").info["task"] == "kidney"
