"""Additive tile scores: the probe's intercept plus the mean of a slide's tile scores is the slide's score."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_heatmap import PATCH, blob_slide, trained_like

from giga_ssl_hf import GigaSSLConfig
from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe
from giga_ssl_hf.files import dumps_strict
from giga_ssl_hf.inference.heatmap_geojson import tile_scores_geojson
from giga_ssl_hf.inference.tile_scores import (
    CONTRIBUTION_MARGIN,
    _passes,
    additive_direction,
    additive_scores,
    embedding_scores,
    tile_contributions,
)
from giga_ssl_hf.inference.views import embed_slide, slide_views

ENCODERS = {
    "sparse": {},
    "mlp": {"encoder_type": "mlp"},
    "fixed-cell": {"fixed_grid_cell_size": True, "grid_cell_size": PATCH // 4},
}


@pytest.fixture(scope="module", params=list(ENCODERS))
def model(request):
    return trained_like(
        GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8], **ENCODERS[request.param])
    )


@pytest.fixture(scope="module")
def slide():
    return blob_slide(500, seed=0)


def one_pass_embedding(model, features, coords) -> np.ndarray:
    with torch.no_grad():
        embedding = model(
            torch.from_numpy(features)[None], torch.from_numpy(coords)[None], patch_size_level0=PATCH
        ).slide_embedding
    return torch.nn.functional.normalize(embedding, dim=1).numpy()


def probes(n_classes: int):
    """The paper's probe and the standardised one, fit on random 12-d embeddings of ``n_classes`` classes."""
    rng = np.random.default_rng(n_classes)
    ids = np.array([f"s{i}" for i in range(30)])
    embeddings = rng.normal(size=(30, 12))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = pd.Series({slide: f"c{i % n_classes}" for i, slide in enumerate(ids)})
    return [fit_saved_probe(ids, embeddings, labels, standardize=s) for s in (False, True)]


def probe_score(probe, embedding: np.ndarray, class_name: str) -> float:
    """Two classes: the log-odds; more: the class's logit minus the mean logit."""
    if len(probe.classes) == 2:
        return float(probe.log_odds(embedding, class_name)[0])
    logits = probe.class_logits(embedding)[0]
    return float(logits[probe.class_index(class_name)] - logits.mean())


@pytest.mark.slow
def test_contributions_average_to_the_one_pass_embedding_in_one_pass_or_chunks(model):
    features, coords = blob_slide(700, seed=2, side=30)  # dense: a few chunks of 6 x 6 cells
    one_pass = tile_contributions(model, features, coords, PATCH)
    with torch.no_grad():
        raw = model(torch.from_numpy(features)[None], torch.from_numpy(coords)[None], patch_size_level0=PATCH)
    np.testing.assert_allclose(one_pass.mean(axis=0), raw.slide_embedding[0].numpy(), rtol=1e-5, atol=1e-6)
    if model.config.fixed_grid_cell_size:  # cells 4 apart: chunked passes are covered by the plain grid
        return
    if model.config.encoder_type == "sparse_conv":
        per_pass = (6 + 2 * CONTRIBUTION_MARGIN) ** 2
        assert len(_passes(model, coords, PATCH, per_pass, CONTRIBUTION_MARGIN)) > 4
        chunked = tile_contributions(model, features, coords, PATCH, max_tiles_per_pass=per_pass)
        np.testing.assert_allclose(chunked, one_pass, rtol=1e-5, atol=1e-6)
        smallest = (2 + 2 * CONTRIBUTION_MARGIN) ** 2  # a pass must hold a 2-cell block and its margins
        with pytest.raises(ValueError, match=f"at least {smallest}"):
            tile_contributions(model, features, coords, PATCH, max_tiles_per_pass=smallest - 1)
    else:
        chunked = tile_contributions(model, features, coords, PATCH, max_tiles_per_pass=100)
        np.testing.assert_allclose(chunked, one_pass, rtol=1e-5, atol=1e-6)


def test_a_max_pooling_model_has_no_additive_tile_shares(slide):
    features, coords = slide
    model = trained_like(
        GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8], slide_pooling="max")
    )
    with pytest.raises(ValueError, match="occlusion or integrated-gradients"):
        tile_contributions(model, features, coords, PATCH)


@pytest.mark.parametrize("tile_sampling", ["random", "chunks", "window"])
def test_contributions_of_views_average_to_embed_slides_embedding(model, slide, tile_sampling):
    features, coords = slide
    views = slide_views(len(features), coords // PATCH, "slide_a", tile_sampling, 30, 16, seed=3)
    shares = tile_contributions(model, features, coords, PATCH, views=views, max_views_per_batch=7)
    mean = shares.mean(axis=0)
    expected = embed_slide(model, features, coords, PATCH, "slide_a", tile_sampling, 30, 16, seed=3)
    np.testing.assert_allclose(mean / np.linalg.norm(mean), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("n_classes", [2, 3])
def test_intercept_plus_mean_tile_score_is_the_slides_score(model, slide, n_classes):
    features, coords = slide
    embedding = one_pass_embedding(model, features, coords)
    views = slide_views(len(features), coords // PATCH, "slide_a", "random", 20, 8, seed=0)
    view_embedding = embed_slide(model, features, coords, PATCH, "slide_a", "random", 20, 8, seed=0)[None]
    for probe in probes(n_classes):
        for class_name in probe.classes:
            for chosen_views, target in ((None, embedding), (views, view_embedding)):
                shares = tile_contributions(model, features, coords, PATCH, views=chosen_views)
                scores, intercept = additive_scores(shares, probe, class_name)
                expected = probe_score(probe, target, class_name)
                assert intercept + scores.mean() == pytest.approx(expected, rel=1e-5, abs=1e-5)
                np.testing.assert_array_equal(
                    embedding_scores(model, features, coords, PATCH, probe, class_name, views=chosen_views),
                    scores,
                )
    # For two classes the scores of one class are the other's, negated; the intercept is the probe's.
    probe = probes(2)[1]
    assert additive_direction(probe, "c1")[1] == pytest.approx(probe.intercept[0])
    np.testing.assert_allclose(
        embedding_scores(model, features, coords, PATCH, probe, "c0"),
        -embedding_scores(model, features, coords, PATCH, probe, "c1"),
    )


def _signed_area(ring) -> float:
    """Shoelace area with x right and y up, as RFC 7946 reads a ring: positive when counter-clockwise."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:])) / 2


def test_geojson_is_a_feature_collection_of_closed_counter_clockwise_tile_squares():
    coords = np.array([[0, 0], [448, 0], [896, 448]], dtype=np.int64)
    scores = np.array([1.5, -0.25, np.nan])
    collection = json.loads(dumps_strict(tile_scores_geojson(coords, scores, PATCH, "lesion", "embedding")))
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 3
    assert collection["colour_map"] == {"name": "RdBu_r", "vmin": -1.5, "vmax": 1.5}
    for feature, (x, y), score in zip(collection["features"], coords, scores):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        (ring,) = feature["geometry"]["coordinates"]
        assert len(ring) == 5 and ring[0] == ring[-1] and _signed_area(ring) == PATCH**2
        assert all(isinstance(v, int) for point in ring for v in point)
        assert {tuple(p) for p in ring} == {(x, y), (x + PATCH, y), (x, y + PATCH), (x + PATCH, y + PATCH)}
        properties = feature["properties"]
        assert properties["objectType"] == "detection"
        measured = properties["measurements"]["score"]
        assert measured == score if np.isfinite(score) else measured is None
        classification = properties["classification"]
        assert classification["name"] == {1.5: "for lesion", -0.25: "against lesion"}.get(score, "unscored")
        assert len(classification["color"]) == 3 and all(0 <= c <= 255 for c in properties["color"])
    assert collection["features"][0]["properties"]["color"] == [103, 0, 31]  # the red end of RdBu_r
