"""The probe's column-block selection (hybrid embeddings): each block alone or all together, by inner CV."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from giga_ssl_hf.evaluation.classifier import block_candidates, fit_predict, fit_probe
from giga_ssl_hf.evaluation.probe import AlignedTask, evaluate_embeddings

from .synthetic import HYBRID_BLOCKS, hybrid_embeddings

ENCODER_COLUMNS, MEAN_POOL_COLUMNS = slice(0, 8), slice(8, 72)


def _split(informative: str, n_train: int = 60, seed: int = 0):
    ids, x, labels = hybrid_embeddings(160, informative, seed=seed)
    y = (labels == "b").to_numpy().astype(int)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@pytest.mark.parametrize("informative", ["encoder", "mean-pool"])
def test_the_informative_block_is_chosen_and_beats_the_probe_on_both(informative):
    x_train, y_train, x_test, y_test = _split(informative)
    fitted = fit_probe(x_train, y_train, standardize=True, blocks=HYBRID_BLOCKS)
    both = fit_probe(x_train, y_train, standardize=True)
    assert fitted.block == informative and both.block is None
    assert roc_auc_score(y_test, fitted.scores(x_test)) > roc_auc_score(y_test, both.scores(x_test))


@pytest.mark.parametrize("standardize", [False, True])
def test_the_dropped_blocks_coefficients_are_zero_and_the_probe_is_the_chosen_blocks_own(standardize):
    x_train, y_train, x_test, _ = _split("encoder")
    fitted = fit_probe(x_train, y_train, standardize, blocks=HYBRID_BLOCKS)
    assert fitted.block == "encoder" and fitted.coef.shape == (1, 72)
    assert not fitted.coef[:, MEAN_POOL_COLUMNS].any() and fitted.coef[:, ENCODER_COLUMNS].all()
    if standardize:  # the scaler still covers every column, so that the saved probe takes whole embeddings
        assert fitted.scaler.mean_.shape == (72,)
    # The same scores as the probe fit on the chosen block alone.
    alone = fit_predict(x_train[:, ENCODER_COLUMNS], y_train, x_test[:, ENCODER_COLUMNS], standardize)
    np.testing.assert_allclose(fitted.scores(x_test), alone, rtol=1e-5, atol=1e-9)
    by_hand = x_train[:, ENCODER_COLUMNS]
    scaler = StandardScaler().fit(by_hand) if standardize else None
    reference = LogisticRegression(C=10, max_iter=1000, class_weight="balanced")
    reference.fit(scaler.transform(by_hand) if standardize else by_hand, y_train)
    np.testing.assert_allclose(fitted.coef[:, ENCODER_COLUMNS], reference.coef_, rtol=1e-5)


def test_block_and_c_are_chosen_jointly():
    x_train, y_train, *_ = _split("encoder")
    fitted = fit_probe(x_train, y_train, True, [0.01, 10.0], HYBRID_BLOCKS)
    assert fitted.block == "encoder" and fitted.C in (0.01, 10.0)


def test_candidates_put_all_blocks_first_and_check_the_sizes():
    # First: a tie in the inner CV keeps the whole embedding, the probe of earlier versions.
    assert block_candidates(HYBRID_BLOCKS, 72) == {
        "encoder+mean-pool": (0, 72),
        "encoder": (0, 8),
        "mean-pool": (8, 72),
    }
    for blocks, width in (({"encoder": 8, "mean-pool": 60}, 72), ({"encoder": 72}, 72)):
        with pytest.raises(ValueError, match="adding up to the 72 columns"):
            block_candidates(blocks, width)


def test_the_block_is_chosen_on_the_training_slides_only():
    ids, x, labels = hybrid_embeddings(100, "encoder")
    task = AlignedTask("t", ids, x, labels, standardize=True, blocks=HYBRID_BLOCKS)
    train = np.arange(40), np.array([task.class_of[i] for i in ids[:40]])
    test = np.arange(40, 100), np.array([task.class_of[i] for i in ids[40:]])
    first = task.run_split("split", train, test, "here")
    # The noise block made to carry the class perfectly on the test slides: no effect on the choice.
    task.embeddings = x.copy()
    task.embeddings[40:, 8] = 100.0 * test[1]
    again = task.run_split("split", train, test, "here")
    assert first.block == again.block == "encoder"
    np.testing.assert_array_equal(first.scores, again.scores)  # the chosen block's columns did not change


def test_evaluate_embeddings_records_the_block_of_each_split():
    ids, x, labels = hybrid_embeddings(120, "encoder")
    (result,) = evaluate_embeddings((ids, x), labels, folds=3, standardize=True, blocks=HYBRID_BLOCKS)
    assert [s.block for s in result.splits] == ["encoder"] * 3
    assert [s["block"] for s in result.to_dict()["splits"]] == ["encoder"] * 3
    (plain,) = evaluate_embeddings((ids, x), labels, folds=3, standardize=True)
    assert [s.block for s in plain.splits] == [None] * 3 and result.mean > plain.mean
