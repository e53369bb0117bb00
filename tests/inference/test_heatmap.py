import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from datasets import load_from_disk
from PIL import Image

from giga_ssl_hf import GigaSSLConfig, GigaSSLModel
from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.contracts import TILE_SCORES_FILENAME
from giga_ssl_hf.contracts.tile_features import TileArrays, load_tile_dataset
from giga_ssl_hf.evaluation.saved_probe import SavedProbe, fit_saved_probe
from giga_ssl_hf.features.synthetic_features import synthetic_region_cohort, synthetic_tile_dataset
from giga_ssl_hf.inference.embed import EmbedSettings, embed_to_folder
from giga_ssl_hf.inference.heatmap import probe_views
from giga_ssl_hf.inference.own_tiles import own_tile_scores
from giga_ssl_hf.inference.tile_scores import occlusion_scores, tile_cells, tile_embeddings

PATCH = 448


def trained_like(config: GigaSSLConfig) -> GigaSSLModel:
    """A model with non-trivial BatchNorm statistics and weights, as after training."""
    torch.manual_seed(0)
    model = GigaSSLModel(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0, generator=generator)
            elif name.endswith("running_mean"):
                buffer.normal_(0, 0.1, generator=generator)
    return model.eval()


def blob_slide(n_cells: int, seed: int, dim: int = 8, side: int = 40):
    """A slide with tissue scattered over a large grid (several chunks), some cells holding two tiles."""
    rng = np.random.default_rng(seed)
    cells = rng.choice(side * side, n_cells, replace=False)
    cells = np.stack([cells // side, cells % side], axis=1)
    cells = np.concatenate([cells, cells[:5]])  # duplicated tiles share a site
    coords = (cells + 7) * PATCH + rng.integers(0, 40, size=(len(cells), 1))  # off-lattice by < 1 cell
    return rng.normal(size=(len(cells), dim)).astype(np.float16), coords.astype(np.int64)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"encoder_type": "mlp"}, {"fixed_grid_cell_size": True, "grid_cell_size": PATCH // 4}],
)
def test_chunked_tile_embeddings_equal_one_pass(overrides):
    model = trained_like(GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8], **overrides))
    features, coords = blob_slide(500, seed=0)
    whole = tile_embeddings(model, features, coords, PATCH)
    with torch.no_grad():
        direct = model(
            torch.from_numpy(features)[None], torch.from_numpy(coords)[None], patch_size_level0=PATCH,
            output_tile_embeddings=True,
        ).tile_embeddings[0]  # fmt: skip
    np.testing.assert_array_equal(whole, direct.numpy())
    chunked = tile_embeddings(
        model, features, coords, PATCH, max_tiles_per_pass=576
    )  # 8-cell blocks + margins
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    if model.config.encoder_type == "sparse_conv":  # a pass must hold a block and its margins
        with pytest.raises(ValueError, match="max_tiles_per_pass must be at least 324"):
            tile_embeddings(model, features, coords, PATCH, max_tiles_per_pass=300)


@pytest.fixture(scope="module")
def cohort():
    _, exhaustive, labels, masks = synthetic_region_cohort(n_slides=6, feature_dim=8, tissue_radius=4, seed=1)
    return exhaustive, labels, masks


@pytest.fixture(scope="module")
def model_and_probe(cohort):
    exhaustive, labels, _ = cohort
    model = trained_like(GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8]))
    arrays = TileArrays.from_dataset(exhaustive)
    ids = np.array(exhaustive["slide_id"])
    # A probe on the slides' whole-slide embeddings (what it is fit on does not matter for these tests).
    embeddings = np.stack(
        [tile_embeddings(model, *arrays.row(i), PATCH).mean(axis=0) for i in range(len(ids))]
    )
    import pandas as pd

    probe = fit_saved_probe(ids, embeddings, pd.Series({k: str(v) for k, v in labels.items()}))
    return model, probe, arrays


def _slide_log_odds(model, probe, features, coords, keep):
    with torch.no_grad():
        embedding = model(
            torch.from_numpy(features[keep].astype(np.float32))[None],
            torch.from_numpy(coords[keep])[None],
            patch_size_level0=PATCH,
        ).slide_embedding
    return probe.log_odds(torch.nn.functional.normalize(embedding, dim=1).numpy(), "1")[0]


def test_occlusion_is_the_drop_of_the_slide_score_without_the_neighbourhood(model_and_probe):
    model, probe, arrays = model_and_probe
    features, coords = arrays.row(2)
    features = features.astype(np.float32)
    n = len(features)
    base = _slide_log_odds(model, probe, features, coords, np.ones(n, dtype=bool))
    cells = tile_cells(model, coords, PATCH)
    for radius, stride in ((1, 1), (0, 1), (1, 3)):
        scores = occlusion_scores(
            model, features, coords, PATCH, probe, "1", radius, stride, max_tiles_per_pass=500
        )
        assert scores.shape == (n,) and np.isfinite(scores).all()
        for tile in (0, n // 2, n - 1):
            block = cells[tile] // stride
            removed = ((cells >= block * stride - radius) & (cells <= (block + 1) * stride - 1 + radius)).all(
                axis=1
            )
            expected = base - _slide_log_odds(model, probe, features, coords, ~removed)
            assert scores[tile] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # Removing the only tile leaves nothing to score (tests/inference/test_occlusion.py: refused).
    with pytest.raises(ValueError, match="no slide is left"):
        occlusion_scores(model, features[:1], coords[:1], PATCH, probe, "1")


def heatmap_argv(root) -> list[str]:
    """``giga-ssl heatmap`` on the fixture's model and features, maps to ``root/m``."""
    return [
        "heatmap",
        "--model",
        str(root / "model"),
        "--features",
        str(root / "features"),
        "--out",
        str(root / "m"),
    ]


@pytest.fixture
def heatmap_inputs(cohort, model_and_probe, tmp_path):
    exhaustive, labels, _ = cohort
    model, _, _ = model_and_probe
    model.save_pretrained(tmp_path / "model")
    exhaustive.save_to_disk(str(tmp_path / "features" / "exhaustive"))
    loaded = GigaSSLModel.from_pretrained(tmp_path / "model").eval()
    embed_to_folder(
        EmbedSettings(features=str(tmp_path / "features"), out=str(tmp_path / "emb"), n_views=10), loaded
    )
    (tmp_path / "labels.csv").write_text("ID,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
    argv = ["evaluate", "--embeddings", str(tmp_path / "emb"), "--labels", str(tmp_path / "labels.csv")]
    assert cli_main([*argv, "--folds", "3", "--save-probe", str(tmp_path / "probe")]) == 0
    return tmp_path


@pytest.mark.slow
def test_heatmap_cli_writes_pngs_and_the_score_table(heatmap_inputs, shared_dir, capsys):
    root = heatmap_inputs
    slides = root / "slides"
    slides.mkdir()
    shutil.copyfile(shared_dir / "fixtures" / "wsi" / "small.svs", slides / "region_0001.svs")
    shutil.copyfile(shared_dir / "fixtures" / "wsi" / "broken.svs", slides / "region_0003.svs")
    base = ["heatmap", "--model", str(root / "model"), "--features", str(root / "features"), "--probe"]
    argv = [*base, str(root / "probe"), "--out", str(root / "maps"), "--slides-dir", str(slides), "--geojson"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "region_0001: " in printed and "over the slide" in printed and "bare tile grid" in printed
    dataset = load_tile_dataset(root / "features" / "exhaustive")
    ids = dataset["slide_id"]
    assert sorted(p.name for p in (root / "maps").iterdir()) == sorted(
        [f"{i}{suffix}" for i in ids for suffix in (".png", ".geojson")] + [TILE_SCORES_FILENAME]
    )
    for slide in ids:
        with Image.open(root / "maps" / f"{slide}.png") as image:
            assert image.format == "PNG" and max(image.size) >= 512
    table = pq.read_table(root / "maps" / TILE_SCORES_FILENAME).to_pandas()
    assert list(table.columns) == ["slide_id", "x", "y", "score"]
    arrays = TileArrays.from_dataset(dataset)
    probe = SavedProbe.load(root / "probe")
    model = GigaSSLModel.from_pretrained(root / "model").eval()
    for row, slide in enumerate(ids):
        features, coords = arrays.row(row)
        part = table[table["slide_id"] == slide]
        np.testing.assert_array_equal(part[["x", "y"]].to_numpy(), coords)
        views = probe_views(probe, slide, coords, PATCH)  # the views `embed` averaged for the probe
        expected = own_tile_scores(model, features, coords, PATCH, probe, probe.default_class, views=views)
        np.testing.assert_allclose(part["score"].to_numpy(), expected, rtol=1e-5, atol=1e-5)
        collection = json.loads((root / "maps" / f"{slide}.geojson").read_text())
        measured = [f["properties"]["measurements"]["score"] for f in collection["features"]]
        np.testing.assert_allclose(measured, part["score"].to_numpy(), rtol=1e-6)
        assert [f["geometry"]["coordinates"][0][0] for f in collection["features"]] == coords.tolist()
    # The additive scores add up to the saved embeddings' log-odds, slide by slide.
    saved = load_from_disk(str(root / "emb"))
    log_odds = probe.log_odds(np.array(saved["embedding"]), probe.default_class)
    mean_scores = table.groupby("slide_id")["score"].mean()
    for slide, expected in zip(saved["slide_id"], log_odds):
        assert probe.intercept[0] + mean_scores[slide] == pytest.approx(expected, rel=1e-4, abs=1e-4)

    # Occlusion on chosen slides, another class; finished work is never replaced silently.
    occlusion = [*base, str(root / "probe"), "--out", str(root / "occ"), "--method", "occlusion"]
    occlusion += ["--slide-ids", "region_0001", "region_0002", "--class", "0"]
    assert cli_main(occlusion) == 0
    table = pq.read_table(root / "occ" / TILE_SCORES_FILENAME).to_pandas()
    assert sorted(table["slide_id"].unique()) == ["region_0001", "region_0002"]
    capsys.readouterr()
    assert cli_main(occlusion) == 2
    assert "--overwrite" in capsys.readouterr().err
    # Redoing one slide replaces its PNG and its rows only: the other slide's rows stay.
    before = table.set_index("slide_id").sort_index()
    png = (root / "occ" / "region_0002.png").read_bytes()
    redo = [*occlusion[: occlusion.index("--slide-ids")], "--slide-ids", "region_0001", "--class", "0"]
    assert cli_main([*redo, "--overwrite"]) == 0
    after = pq.read_table(root / "occ" / TILE_SCORES_FILENAME).to_pandas().set_index("slide_id").sort_index()
    pd.testing.assert_frame_equal(after, before, check_exact=False, rtol=1e-5)
    assert (root / "occ" / "region_0002.png").read_bytes() == png
    assert sorted(p.name for p in (root / "occ").iterdir()) == [
        "region_0001.png",
        "region_0002.png",
        TILE_SCORES_FILENAME,
    ]


def test_heatmap_cli_usage_errors(heatmap_inputs, capsys):
    root = heatmap_inputs
    base = heatmap_argv(root)
    assert cli_main([*base, "--probe", str(root / "probe"), "--slide-ids", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli_main([*base, "--probe", str(root / "probe"), "--class", "tumour"]) == 2
    assert "no class 'tumour'" in capsys.readouterr().err
    assert cli_main([*base, "--probe", str(root / "emb")]) == 2
    assert "not a saved probe" in capsys.readouterr().err
    augmented, _ = synthetic_tile_dataset(n_slides=2, feature_dim=8, n_aug=2, tiles_per_slide=5)
    augmented.save_to_disk(str(root / "augmented"))
    other = ["heatmap", "--model", str(root / "model"), "--features", str(root / "augmented")]
    assert cli_main([*other, "--probe", str(root / "probe"), "--out", str(root / "m")]) == 2
    assert "need the exhaustive tile features" in capsys.readouterr().err
    assert cli_main([*base, "--probe", str(root / "probe"), "--occlusion-stride", "0"]) == 2


def test_additive_maps_refuse_a_max_pooling_model_once(heatmap_inputs, capsys):
    root = heatmap_inputs
    config = json.loads((root / "model" / "config.json").read_text())
    (root / "model" / "config.json").write_text(json.dumps({**config, "slide_pooling": "max"}))
    argv = heatmap_argv(root)
    assert cli_main([*argv, "--probe", str(root / "probe")]) == 2
    err = capsys.readouterr().err
    refusals = [line for line in err.splitlines() if line.startswith("giga-ssl heatmap")]
    assert len(refusals) == 1 and "use --method occlusion or integrated-gradients" in refusals[0]


def test_occlusion_pools_at_the_one_top_site_fraction_of_the_probes_embeddings(heatmap_inputs):
    """A probe of embeddings pooled at their own fraction (embed --top-site-fractions 0.5) maps as a model whose
    configured fraction is 0.5 does, not at the model's 0.03."""
    root = heatmap_inputs
    config_path, probe_path = root / "model" / "config.json", root / "probe" / "probe.json"
    config, probe = json.loads(config_path.read_text()), json.loads(probe_path.read_text())
    argv = [*heatmap_argv(root)[:-2], "--probe", str(root / "probe"), "--method", "occlusion"]
    argv += ["--slide-ids", "region_0001"]

    def scores(top_site_fraction: float, probe_fractions, out: str) -> np.ndarray:
        config_path.write_text(
            json.dumps({**config, "slide_pooling": "top", "top_site_fraction": top_site_fraction})
        )
        probe["embeddings"]["metadata"]["top_site_fractions"] = probe_fractions
        probe_path.write_text(json.dumps(probe))
        assert cli_main([*argv, "--out", str(root / out)]) == 0
        return pq.read_table(root / out / TILE_SCORES_FILENAME).to_pandas()["score"].to_numpy()

    at_probes = scores(0.03, [0.5], "probe-fraction")
    np.testing.assert_allclose(at_probes, scores(0.5, None, "model-fraction"), rtol=1e-6, atol=1e-6)
    assert not np.allclose(at_probes, scores(0.03, None, "other-fraction"), atol=1e-4)


def test_a_probe_of_several_top_site_fractions_is_refused_before_any_work(heatmap_inputs, capsys):
    """The maps pool as the probe's embeddings did: at one fraction, not at the several of its blocks."""
    root = heatmap_inputs
    probe = json.loads((root / "probe" / "probe.json").read_text())
    probe["embeddings"]["metadata"]["top_site_fractions"] = [0.03, 0.1]
    (root / "probe" / "probe.json").write_text(json.dumps(probe))
    assert cli_main([*heatmap_argv(root), "--probe", str(root / "probe")]) == 2
    error = capsys.readouterr().err
    assert "heatmap: the embeddings hold one block per top-site fraction ([0.03, 0.1])" in error
    assert not (root / "m").exists()


def test_the_probe_is_matched_with_the_model_by_the_content_of_its_weights(heatmap_inputs, capsys):
    root = heatmap_inputs
    recorded = SavedProbe.load(root / "probe").embedding_model_sha256
    assert (
        recorded
        == hashlib.sha256(
            b"model.safetensors\0" + (root / "model" / "model.safetensors").read_bytes()
        ).hexdigest()
    )
    # An identical copy elsewhere is the same model.
    shutil.copytree(root / "model", root / "copy")
    argv = ["heatmap", "--features", str(root / "features"), "--probe", str(root / "probe")]
    assert cli_main([*argv, "--model", str(root / "copy"), "--out", str(root / "a")]) == 0
    # A model retrained in place is not the one the probe was fit for: refused before anything is written.
    retrained = GigaSSLModel(GigaSSLModel.config_class.from_pretrained(root / "model"))
    retrained.save_pretrained(root / "model")
    capsys.readouterr()
    assert cli_main([*argv, "--model", str(root / "model"), "--out", str(root / "b")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"sha256 {recorded[:12]}" in error and "--allow-model-mismatch" in error
    assert not (root / "b").exists()
    assert (
        cli_main([*argv, "--model", str(root / "model"), "--out", str(root / "b"), "--allow-model-mismatch"])
        == 0
    )
    # A probe that records no hash (embeddings not made by giga-ssl embed) is refused with what to do.
    config = json.loads((root / "probe" / "probe.json").read_text())
    del config["embeddings"]["metadata"]["model_sha256"]
    (root / "probe" / "probe.json").write_text(json.dumps(config))
    assert cli_main([*argv, "--model", str(root / "copy"), "--out", str(root / "c")]) == 2
    assert "re-save it with giga-ssl evaluate --save-probe" in capsys.readouterr().err
    assert not (root / "c").exists()


def test_scores_that_add_up_to_the_probes_embeddings_need_their_recorded_views(heatmap_inputs, capsys):
    root = heatmap_inputs
    config = json.loads((root / "probe" / "probe.json").read_text())
    del config["embeddings"]["metadata"]["tile_sampling"]
    (root / "probe" / "probe.json").write_text(json.dumps(config))
    argv = ["heatmap", "--model", str(root / "model"), "--features", str(root / "features")]
    argv += ["--probe", str(root / "probe"), "--out", str(root / "u")]
    assert cli_main(argv) == 2
    assert "(tile_sampling): pass --slide-embedding one-pass" in capsys.readouterr().err
    assert not (root / "u").exists()
    assert cli_main([*argv, "--slide-embedding", "one-pass"]) == 0
