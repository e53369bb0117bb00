"""A hybrid probe whose block was chosen still splits into its halves: the dropped half scores zero."""

import numpy as np
import pytest

from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe
from giga_ssl_hf.inference.hybrid_scores import HybridProbe, is_hybrid
from tests.evaluation.synthetic import HYBRID_BLOCKS, hybrid_embeddings


@pytest.mark.parametrize("informative", ["encoder", "mean-pool"])
def test_a_block_selected_probe_splits_into_a_zero_half_and_the_probe_itself(informative):
    ids, x, labels = hybrid_embeddings(60, informative)
    hidden_dim, mean_pool_dim = HYBRID_BLOCKS.values()
    metadata = {
        "concat_mean_pool": True,
        "mean_pool_mean": [0.0] * mean_pool_dim,
        "mean_pool_std": [1.0] * mean_pool_dim,
    }
    probe = fit_saved_probe(
        ids, x, labels, standardize=True, embeddings_metadata=metadata, blocks=HYBRID_BLOCKS
    )
    assert is_hybrid(probe) and probe.info["block"] == informative
    hybrid = HybridProbe.split(probe, hidden_dim)
    dropped, kept = (
        (hybrid.mean_pool_half, hybrid.encoder_half)
        if informative == "encoder"
        else (hybrid.encoder_half, hybrid.mean_pool_half)
    )
    assert not dropped.coef.any() and kept.coef.all()
    encoder_part = hybrid.encoder_half.decision_function(x[:, :hidden_dim])
    mean_pool_part = hybrid.mean_pool_half.decision_function(x[:, hidden_dim:])
    np.testing.assert_allclose(
        encoder_part + mean_pool_part, probe.decision_function(x), rtol=1e-9, atol=1e-9
    )
    tiles = np.random.default_rng(0).normal(size=(5, mean_pool_dim))
    if informative == "encoder":  # the mean-pool half adds nothing to any tile
        assert not hybrid.mean_pool_scores(tiles, "b").any()
