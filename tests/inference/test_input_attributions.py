"""Maps that localise: each tile's own embedding (exactly additive), integrated gradients (complete up to the
path's quadrature) and hybrid probes, on a real small model and, through the command, on features and a probe
on disk."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from test_heatmap import PATCH, blob_slide, cohort, heatmap_inputs, model_and_probe, trained_like  # noqa: F401
from test_tile_contributions import probe_score, probes

from giga_ssl_hf import GigaSSLConfig, GigaSSLModel
from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.contracts import TILE_SCORES_FILENAME
from giga_ssl_hf.contracts.tile_features import TileArrays, load_tile_dataset
from giga_ssl_hf.evaluation.saved_probe import SavedProbe
from giga_ssl_hf.inference.heatmap import probe_views
from giga_ssl_hf.inference.input_attributions import integrated_gradient_scores
from giga_ssl_hf.inference.own_tiles import own_tile_scores, single_tile_views
from giga_ssl_hf.inference.tile_scores import additive_direction, tile_contributions
from giga_ssl_hf.inference.views import embed_slide, slide_views


@pytest.fixture(scope="module", params=["sparse", "mlp"])
def model(request):
    overrides = {"encoder_type": "mlp"} if request.param == "mlp" else {}
    return trained_like(GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8], **overrides))


@pytest.fixture(scope="module")
def slide():
    features, coords = blob_slide(120, seed=4, side=16)
    return features.astype(np.float32), coords


def embedding(model, features, coords) -> np.ndarray:
    """`(1, E)` L2-normalised slide embedding of one pass of ``features``, computed directly by the model."""
    with torch.no_grad():
        out = model(torch.from_numpy(features)[None], torch.from_numpy(coords)[None], patch_size_level0=PATCH)
    return torch.nn.functional.normalize(out.slide_embedding, dim=1).numpy()


def tiles_alone_embedding(model, features, coords, normalise: bool = True) -> np.ndarray:
    """The mean of every tile's own one-tile embedding, L2-normalised `(1, E)`, or (``normalise=False``) the
    tiles' own embeddings `(n, E)`; one forward pass per tile."""
    with torch.no_grad():
        each = np.stack([
            model(torch.from_numpy(features[i : i + 1])[None], torch.from_numpy(coords[i : i + 1])[None],
                  patch_size_level0=PATCH).slide_embedding[0].numpy()
            for i in range(len(features))
        ])  # fmt: skip
    if not normalise:
        return each
    mean = each.mean(axis=0)
    return (mean / np.linalg.norm(mean))[None]


def test_own_tile_scores_add_up_to_the_probes_score_and_rank_tiles_by_their_own_embeddings(model, slide):
    features, coords = slide
    views = slide_views(len(features), coords // PATCH, "slide_a", "random", 20, 5, seed=0)
    view_embedding = embed_slide(model, features, coords, PATCH, "slide_a", "random", 20, 5, seed=0)[None]
    own = tiles_alone_embedding(model, features, coords, normalise=False)  # (n, E), one pass per tile
    for probe in probes(2) + probes(3):  # the paper's and the standardised probe, two and three classes
        for class_name in probe.classes:
            weight, intercept, _ = additive_direction(probe, class_name)
            for chosen, target in ((views, view_embedding), (None, embedding(model, features, coords))):
                scores = own_tile_scores(model, features, coords, PATCH, probe, class_name, views=chosen)
                assert intercept + scores.mean() == pytest.approx(
                    probe_score(probe, target, class_name), rel=1e-5, abs=1e-5
                )
                # one shared term moves every tile alike: tiles differ by their own embeddings only
                norm = np.linalg.norm(
                    tile_contributions(model, features, coords, PATCH, views=chosen).mean(0)
                )
                np.testing.assert_allclose(
                    scores - scores[0], (own - own[0]) @ weight / norm, rtol=1e-4, atol=1e-5
                )


@pytest.mark.parametrize("slide_embedding", ["one-pass", "single tiles"])
def test_integrated_gradients_are_complete_from_the_slides_mean_tile(model, slide, slide_embedding):
    features, coords = slide
    views = single_tile_views(len(features)) if slide_embedding == "single tiles" else None
    direct = tiles_alone_embedding if slide_embedding == "single tiles" else embedding
    baseline_features = np.repeat(features.mean(axis=0, keepdims=True), len(features), axis=0)
    for probe in probes(2):
        expected = probe_score(probe, direct(model, features, coords), "c1")
        scores, baseline = integrated_gradient_scores(
            model, features, coords, PATCH, probe, "c1", views=views, steps=64
        )
        assert baseline == pytest.approx(
            probe_score(probe, direct(model, baseline_features, coords), "c1"), rel=1e-4, abs=1e-4
        )
        gap = abs(baseline + scores.mean() - expected)
        assert gap < 0.02 * max(1.0, abs(expected - baseline))  # ReLUs: ~1% at 64 points here
        coarse, _ = integrated_gradient_scores(
            model, features, coords, PATCH, probe, "c1", views=views, steps=2
        )
        assert gap <= abs(baseline + coarse.mean() - expected) + 1e-9  # finer paths are closer
        assert np.corrcoef(scores, coarse)[0, 1] > 0.5  # and both rank the tiles alike


def test_integrated_gradients_of_a_linear_encoder_are_the_probes_gradient_on_each_tiles_deviation():
    """An MLP encoder reduced to one Linear layer makes the slide embedding ``W mean(x) + b``: the baseline (every
    tile the slide's mean) has the slide's own embedding, so every path point has the same gradient, and tile
    ``i`` scores exactly ``(x_i - mean) . W^T dF/de`` (``F`` the probe's score of the L2-normalised ``e``)."""
    model = trained_like(GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8], encoder_type="mlp"))
    linear = torch.nn.Linear(8, 12)
    model.encoder.tile_encoder = linear
    features, coords = blob_slide(60, seed=5, side=12)
    features = features.astype(np.float32)
    weight, bias = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    for probe in probes(2):
        direction, _, _ = additive_direction(probe, "c1")
        e = weight @ features.mean(axis=0, dtype=np.float64) + bias
        unit = e / np.linalg.norm(e)
        gradient = (direction - (direction @ unit) * unit) / np.linalg.norm(e)  # dF/de through the L2 norm
        scores, baseline = integrated_gradient_scores(model, features, coords, PATCH, probe, "c1", steps=4)
        expected = (features - features.mean(axis=0)) @ (weight.T @ gradient)
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
        assert baseline == pytest.approx(
            probe_score(probe, embedding(model, features, coords), "c1"), rel=1e-5
        )


@pytest.mark.slow
def test_heatmap_command_scores_own_tiles_and_integrated_gradients(heatmap_inputs, capsys):  # noqa: F811
    root = heatmap_inputs
    argv = ["heatmap", "--model", str(root / "model"), "--features", str(root / "features")]
    argv += ["--probe", str(root / "probe"), "--slide-ids", "region_0001"]
    assert cli_main([*argv, "--out", str(root / "bad"), "--ig-steps", "0"]) == 2
    assert "--ig-steps must be positive" in capsys.readouterr().err
    dataset = load_tile_dataset(root / "features" / "exhaustive")
    row = [str(s) for s in dataset["slide_id"]].index("region_0001")
    features, coords = TileArrays.from_dataset(dataset).row(row)
    probe = SavedProbe.load(root / "probe")
    model = GigaSSLModel.from_pretrained(root / "model").eval()
    views = probe_views(probe, "region_0001", coords, PATCH)
    for method in ("tiles", "integrated-gradients"):
        assert cli_main([*argv, "--out", str(root / method), "--method", method]) == 0
        table = pq.read_table(root / method / TILE_SCORES_FILENAME).to_pandas()
        assert (root / method / "region_0001.png").is_file() and len(table) == len(coords)
        if method == "tiles":
            expected = own_tile_scores(model, features, coords, PATCH, probe, "1", views=views)
        else:
            expected = integrated_gradient_scores(
                model, np.asarray(features), coords, PATCH, probe, "1", views=views
            )[0]
        np.testing.assert_allclose(table["score"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    assert pd.Series(table["slide_id"]).eq("region_0001").all()


@pytest.mark.slow
def test_a_hybrid_probes_tile_scores_add_up_to_its_prediction(heatmap_inputs, capsys):  # noqa: F811
    from giga_ssl_hf import load_embeddings
    from giga_ssl_hf.inference.embed import EmbedSettings, embed_to_folder
    from giga_ssl_hf.inference.hybrid_scores import HybridProbe

    root = heatmap_inputs
    model = GigaSSLModel.from_pretrained(root / "model").eval()
    hybrid = EmbedSettings(
        features=str(root / "features"), out=str(root / "hybrid"), n_views=10, concat_mean_pool=True
    )
    embed_to_folder(hybrid, model)
    argv = [
        "evaluate",
        "--embeddings",
        str(root / "hybrid"),
        "--labels",
        str(root / "labels.csv"),
        "--folds",
        "3",
    ]
    assert cli_main([*argv, "--standardize", "--save-probe", str(root / "hybrid-probe")]) == 0
    argv = ["heatmap", "--model", str(root / "model"), "--features", str(root / "features")]
    argv += ["--probe", str(root / "hybrid-probe"), "--slide-ids", "region_0001", "region_0002"]
    assert cli_main([*argv, "--out", str(root / "occlusion"), "--method", "occlusion"]) == 2
    assert "decomposed by --method tiles or embedding only" in capsys.readouterr().err
    assert cli_main([*argv, "--out", str(root / "h")]) == 0  # --method tiles
    assert cli_main([*argv, "--out", str(root / "h-sites"), "--method", "embedding"]) == 0
    probe = SavedProbe.load(root / "hybrid-probe")
    ids, embeddings = load_embeddings(str(root / "hybrid"))
    table = pq.read_table(root / "h" / TILE_SCORES_FILENAME).to_pandas()
    dataset = load_tile_dataset(root / "features" / "exhaustive")
    arrays = TileArrays.from_dataset(dataset)
    hybrid = HybridProbe.split(probe, model.config.hidden_dim)
    for slide in ("region_0001", "region_0002"):
        scores = table.loc[table["slide_id"] == slide, "score"].to_numpy()
        embedding = embeddings[list(ids).index(slide)][None]
        assert probe.intercept[0] + scores.mean() == pytest.approx(
            probe.log_odds(embedding, "1")[0], abs=1e-5
        )
        features, _ = arrays.row([str(s) for s in dataset["slide_id"]].index(slide))
        mean_pool_share = hybrid.mean_pool_scores(np.asarray(features), "1")
        half = hybrid.mean_pool_half.decision_function(embedding[:, model.config.hidden_dim :])[0, 0]
        assert mean_pool_share.mean() == pytest.approx(half, abs=1e-5)
    sites = pq.read_table(root / "h-sites" / TILE_SCORES_FILENAME).to_pandas()
    means = sites.groupby("slide_id")["score"].mean() - table.groupby("slide_id")["score"].mean()
    np.testing.assert_allclose(means.to_numpy(), 0, atol=1e-5)  # both add up to the same prediction
