import json

import numpy as np
import pytest
import torch

from giga_ssl_hf import GigaSSLConfig, GigaSSLModel, load_embeddings
from giga_ssl_hf.contracts.tile_features import TileArrays
from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
from giga_ssl_hf.inference.embed import embed_slide, embed_tile_dataset, main, view_indices


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    model = GigaSSLModel(GigaSSLConfig(feature_dim=16, hidden_dim=24, projection_dims=(8,)))
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return model.eval(), path


@pytest.fixture(scope="module")
def exhaustive():
    dataset, labels = synthetic_tile_dataset(
        n_slides=7, feature_dim=16, tiles_per_slide=23, augmented=False, seed=3
    )
    return dataset


@pytest.mark.parametrize("tile_sampling", ["random", "chunks", "window", "all"])
def test_embeddings_are_deterministic_unit_norm_and_batch_independent(model, exhaustive, tile_sampling):
    model, _ = model
    ids, together = embed_tile_dataset(
        model, exhaustive, tile_sampling=tile_sampling, n_views=12, seed=5, progress=False
    )
    _, again = embed_tile_dataset(
        model, exhaustive, tile_sampling=tile_sampling, n_views=12, seed=5, progress=False
    )
    assert np.array_equal(together, again)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-6)
    arrays = TileArrays.from_dataset(exhaustive)
    for slide in range(len(ids)):
        features, coords = arrays.row(slide)
        alone = embed_slide(
            model, features, coords, 448, ids[slide], tile_sampling=tile_sampling, n_views=12, seed=5
        )
        np.testing.assert_allclose(alone, together[slide], rtol=1e-5, atol=1e-6)
    # Tiny forward batches (one slide per pass) give the same vectors as large shared ones.
    _, small_batches = embed_tile_dataset(
        model,
        exhaustive,
        tile_sampling=tile_sampling,
        n_views=12,
        seed=5,
        max_views_per_batch=12,
        progress=False,
    )
    np.testing.assert_allclose(small_batches, together, rtol=1e-5, atol=1e-6)
    if tile_sampling == "random":
        _, other_seed = embed_tile_dataset(model, exhaustive, n_views=12, seed=6, progress=False)
        assert not np.allclose(other_seed, together)


def test_a_slide_does_not_depend_on_the_others(model, exhaustive):
    model, _ = model
    ids, full = embed_tile_dataset(model, exhaustive, n_views=8, progress=False)
    subset_ids, subset = embed_tile_dataset(model, exhaustive.select([5, 2]), n_views=8, progress=False)
    np.testing.assert_allclose(subset, full[[5, 2]], rtol=1e-5, atol=1e-6)
    assert subset_ids.tolist() == [ids[5], ids[2]]


def test_all_is_one_pass_over_the_whole_slide(model, exhaustive):
    model, _ = model
    ids, embeddings = embed_tile_dataset(model, exhaustive, tile_sampling="all", progress=False)
    arrays = TileArrays.from_dataset(exhaustive)
    for slide in range(len(ids)):
        features, coords = (torch.from_numpy(np.asarray(values))[None] for values in arrays.row(slide))
        with torch.no_grad():
            whole = model(features.float(), coords, patch_size_level0=448).slide_embedding[0]
        np.testing.assert_allclose(
            embeddings[slide], torch.nn.functional.normalize(whole, dim=0), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize(("n", "n_tiles"), [(23, 5), (10, 5), (3, 5), (1, 1)])
def test_chunks_cover_every_tile_exactly_once(n, n_tiles):
    index, mask = view_indices(n, "chunks", n_views=0, n_tiles=n_tiles, rng=np.random.default_rng(0))
    assert index.shape[1] == n_tiles
    assert sorted(index[mask].tolist()) == list(range(n))


def test_cli_writes_dataset_metadata_and_npy(model, exhaustive, tmp_path, capsys):
    _, model_path = model
    exhaustive.save_to_disk(str(tmp_path / "features" / "exhaustive"))
    out = tmp_path / "embeddings"
    argv = ["--model", str(model_path), "--features", str(tmp_path / "features"), "--out", str(out)]
    assert main([*argv, "--n-views", "10", "--npy", "--device", "cpu"]) == 0
    ids, embeddings = load_embeddings(out)
    assert embeddings.shape == (7, 24) and ids.tolist() == exhaustive["slide_id"]
    assert np.array_equal(np.load(out / "embeddings.npy"), embeddings)
    assert np.load(out / "ids.npy").tolist() == ids.tolist()
    metadata = json.loads((out / "giga_ssl_metadata.json").read_text())
    assert metadata["tile_sampling"] == "random" and metadata["n_views"] == 10 and metadata["n_tiles"] == 5
    assert metadata["model"] == str(model_path)
    # A rerun never replaces finished embeddings silently: --overwrite does, atomically.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*argv, "--tile_sampling", "chunks"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*argv, "--tile_sampling", "chunks", "--overwrite"]) == 0
    assert json.loads((out / "giga_ssl_metadata.json").read_text())["tile_sampling"] == "chunks"


def test_augmented_dataset_is_refused(model, tmp_path, capsys):
    _, model_path = model
    augmented, _ = synthetic_tile_dataset(n_slides=3, feature_dim=16, n_aug=2, tiles_per_slide=5)
    augmented.save_to_disk(str(tmp_path / "aug"))
    argv = ["--model", str(model_path), "--features", str(tmp_path / "aug"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "exhaustive" in capsys.readouterr().err


def test_window_views_are_the_tiles_nearest_a_tile():
    grid = np.stack(np.meshgrid(np.arange(30), np.arange(30)), axis=-1).reshape(-1, 2)  # solid 30x30 tissue
    index, mask = view_indices(len(grid), "window", 20, 9, np.random.default_rng(0), grid)
    assert index.shape == (20, 9) and mask.all()
    for window in index:
        assert len(set(window.tolist())) == 9  # distinct tiles, unlike random views
        centre = grid[window[0]]
        if centre.min() > 0 and centre.max() < 29:  # away from the border: the 3x3 block around it
            assert np.abs(grid[window] - centre).max() <= 1
        else:
            assert np.abs(grid[window] - centre).max() <= 2
    assert len({int(w[0]) for w in index}) > 10  # centres drawn over the slide


def test_concat_mean_pool_appends_the_standardised_mean(model, exhaustive, tmp_path):
    _, model_path = model
    exhaustive.save_to_disk(str(tmp_path / "exhaustive"))
    out = tmp_path / "hybrid"
    argv = ["--model", str(model_path), "--features", str(tmp_path / "exhaustive"), "--out", str(out)]
    assert main([*argv, "--n-views", "6", "--concat-mean-pool", "--device", "cpu"]) == 0
    _, hybrid = load_embeddings(out)
    assert hybrid.shape == (7, 24 + 16)
    np.testing.assert_allclose(np.linalg.norm(hybrid[:, :24], axis=1), 1.0, rtol=1e-5)
    means = np.stack([np.asarray(f, dtype=np.float64).mean(0) for f in exhaustive["features"]])
    std = means.std(0)  # features 8-15 are constant in this cohort: kept at 0, not divided by 0
    expected = (means - means.mean(0)) / np.where(std > 0, std, 1.0) / np.sqrt(16)
    np.testing.assert_allclose(hybrid[:, 24:], expected, rtol=1e-3, atol=1e-4)
    assert json.loads((out / "giga_ssl_metadata.json").read_text())["concat_mean_pool"] is True


def test_a_failed_save_leaves_the_previous_embeddings_and_no_temporary(tmp_path, monkeypatch):
    from giga_ssl_hf.inference import embed_folder

    ids, embeddings = np.array(["a", "b"]), np.eye(2, dtype=np.float32)
    out = embed_folder.save_embeddings(tmp_path / "emb", ids, embeddings, {"v": 1}, npy=True)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(embed_folder.np, "save", full_disk)
    with pytest.raises(OSError, match="disk full"):
        embed_folder.save_embeddings(out, ids, 2 * embeddings, {"v": 2}, npy=True)
    assert [p.name for p in tmp_path.iterdir()] == ["emb"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_several_top_site_fractions_write_one_unit_block_each_and_record_them(
    exhaustive, tmp_path, load_strict_json
):
    """embed --top-site-fractions: one whole-slide pass, one L2-normalised block per fraction, each the embedding
    a model of that fraction gives; the blocks (and a hybrid's mean-pool block after them) are in the metadata."""
    from giga_ssl_hf.contracts.slide_embeddings import column_blocks

    torch.manual_seed(0)
    config = GigaSSLConfig(feature_dim=16, hidden_dim=24, projection_dims=(8,), slide_pooling="top")
    path = tmp_path / "model"
    GigaSSLModel(config).save_pretrained(path)
    exhaustive.save_to_disk(str(tmp_path / "features"))
    argv = ["--model", str(path), "--features", str(tmp_path / "features"), "--tile-sampling", "all"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert main([*argv, "--out", str(tmp_path / "two"), "--top-site-fractions", "0.03", "0.25"]) == 0
    _, one = load_embeddings(tmp_path / "one")
    ids, two = load_embeddings(tmp_path / "two")
    assert two.shape == (7, 48)
    np.testing.assert_allclose(np.linalg.norm(two.reshape(7, 2, 24), axis=2), 1.0, rtol=1e-5)
    np.testing.assert_allclose(two[:, :24], one, rtol=1e-5, atol=1e-6)  # the model's own fraction is 0.03
    model = GigaSSLModel.from_pretrained(path).eval()
    model.config.top_site_fraction = 0.25
    np.testing.assert_allclose(
        two[:, 24:], embed_tile_dataset(model, exhaustive, "all", progress=False)[1], atol=1e-6
    )
    assert not np.allclose(two[:, :24], two[:, 24:])
    metadata = load_strict_json((tmp_path / "two" / "giga_ssl_metadata.json").read_text())
    assert metadata["top_site_fractions"] == [0.03, 0.25]
    assert list(column_blocks(metadata).items()) == [("top-3%", 24), ("top-25%", 24)]  # in column order
    assert (
        main([*argv, "--out", str(tmp_path / "hybrid"), "--top-site-fractions", "0.1", "--concat-mean-pool"])
        == 0
    )
    hybrid = load_strict_json((tmp_path / "hybrid" / "giga_ssl_metadata.json").read_text())
    assert list(column_blocks(hybrid).items()) == [("top-10%", 24), ("mean-pool", 16)]
    assert column_blocks(load_strict_json((tmp_path / "one" / "giga_ssl_metadata.json").read_text())) is None
