"""Bad inputs to `giga-ssl embed` (issue 10): refused before any work, in one line, nothing replaced."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from giga_ssl_hf import GigaSSLConfig, GigaSSLModel, load_embeddings
from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
from giga_ssl_hf.inference.embed import embed_slide, main

STAGES_DOC = Path(__file__).resolve().parents[2] / "docs" / "reference" / "stages.md"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    GigaSSLModel(GigaSSLConfig(feature_dim=16, hidden_dim=24, projection_dims=(8,))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def features_with_nan(tmp_path_factory):
    dataset, _ = synthetic_tile_dataset(
        n_slides=5, feature_dim=16, tiles_per_slide=9, augmented=False, seed=1
    )

    def corrupt(row, index):
        if index == 2:
            row["features"][4][7] = float("nan")
        return row

    path = tmp_path_factory.mktemp("features") / "exhaustive"
    dataset.map(corrupt, with_indices=True).save_to_disk(str(path))
    return path, dataset["slide_id"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # after any progress bar of the model loading
    assert line.startswith("giga-ssl embed: error: "), err
    return line


def test_nan_features_are_refused_naming_the_slide(model_path, features_with_nan, tmp_path, capsys):
    features, ids = features_with_nan
    argv = ["--model", str(model_path), "--features", str(features), "--out", str(tmp_path / "emb")]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"1 slide(s) cannot be embedded: {ids[2]} (NaN or inf tile features)" in err
    assert "--skip-bad-slides" in err
    assert not (tmp_path / "emb").exists()


def test_skip_bad_slides_leaves_them_out_and_lists_them(
    model_path, features_with_nan, tmp_path, load_strict_json
):
    features, ids = features_with_nan
    out = tmp_path / "emb"
    argv = ["--model", str(model_path), "--features", str(features), "--out", str(out), "--n-views", "4"]
    assert main([*argv, "--skip-bad-slides"]) == 0
    embedded, embeddings = load_embeddings(out)
    assert embedded.tolist() == [i for k, i in enumerate(ids) if k != 2]
    assert np.isfinite(embeddings).all()
    metadata = load_strict_json((out / "giga_ssl_metadata.json").read_text())
    assert metadata["skipped_slides"] == {ids[2]: "NaN or inf tile features"}


def test_a_missing_model_folder_is_named(tmp_path, capsys):
    dataset, _ = synthetic_tile_dataset(n_slides=2, feature_dim=16, tiles_per_slide=6, augmented=False)
    dataset.save_to_disk(str(tmp_path / "f"))
    assert (
        main(["--model", "/no/such/folder", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "e")])
        == 2
    )
    assert one_line_error(capsys).endswith("no model folder at /no/such/folder (and not a Hub repo id)")
    assert not (tmp_path / "e").exists()


def test_the_documented_python_example_gives_the_cli_embedding(model_path, tmp_path):
    """docs (the stages): `embed_slide(model, features, coords, patch_size_level0, slide_id)` equals `giga-ssl embed`."""
    snippet = re.search(
        r"`(giga_ssl_hf\.inference\.embed\.embed_slide\([^`]*\))`", STAGES_DOC.read_text()
    ).group(1)
    assert snippet.endswith("embed_slide(model, features, coords, patch_size_level0, slide_id)")
    dataset, _ = synthetic_tile_dataset(
        n_slides=3, feature_dim=16, tiles_per_slide=12, augmented=False, seed=2
    )
    dataset.save_to_disk(str(tmp_path / "features"))
    assert (
        main(
            [
                "--model",
                str(model_path),
                "--features",
                str(tmp_path / "features"),
                "--out",
                str(tmp_path / "e"),
            ]
        )
        == 0
    )
    ids, cli = load_embeddings(tmp_path / "e")
    model = GigaSSLModel.from_pretrained(model_path).eval()
    row = dataset.with_format("numpy")[1]
    features, coords = row["features"], row["coords"]
    patch_size_level0, slide_id = int(row["patch_size_level0"]), str(row["slide_id"])
    readme = embed_slide(model, features, coords, patch_size_level0, slide_id)
    assert ids[1] == slide_id and np.allclose(readme, cli[1], atol=1e-6)
    with pytest.raises(TypeError, match="slide_id"):
        embed_slide(model, features, coords, patch_size_level0)


def test_metadata_is_strict_json(model_path, tmp_path, load_strict_json):
    dataset, _ = synthetic_tile_dataset(n_slides=2, feature_dim=16, tiles_per_slide=6, augmented=False)
    dataset.save_to_disk(str(tmp_path / "f"))
    assert (
        main(["--model", str(model_path), "--features", str(tmp_path / "f"), "--out", str(tmp_path / "e")])
        == 0
    )
    assert load_strict_json((tmp_path / "e" / "giga_ssl_metadata.json").read_text())["n_slides"] == 2
    json.loads((tmp_path / "e" / "giga_ssl_metadata.json").read_text())


@pytest.mark.parametrize(("pooling", "warned"), [("top", True), ("max", True), ("mean", False)])
def test_a_selective_pooling_model_embedded_with_views_is_warned_about(pooling, warned, tmp_path, caplog):
    """A max / top pooling model is meant to embed each whole slide in one pass: other views work, with a warning."""
    torch.manual_seed(0)
    model = tmp_path / "model"
    config = GigaSSLConfig(feature_dim=16, hidden_dim=24, projection_dims=(8,), slide_pooling=pooling)
    GigaSSLModel(config).save_pretrained(model)
    dataset, _ = synthetic_tile_dataset(
        n_slides=3, feature_dim=16, tiles_per_slide=9, augmented=False, seed=1
    )
    dataset.save_to_disk(str(tmp_path / "features"))
    argv = ["--model", str(model), "--features", str(tmp_path / "features"), "--n-views", "2"]
    with caplog.at_level("WARNING", logger="giga_ssl_hf.inference.embed_folder"):
        assert main([*argv, "--out", str(tmp_path / "random")]) == 0
        assert (f"pools its sites by '{pooling}'" in caplog.text) == warned
        caplog.clear()
        assert main([*argv, "--out", str(tmp_path / "whole"), "--tile-sampling", "all"]) == 0
        assert "pools its sites" not in caplog.text
    assert len(load_embeddings(tmp_path / "whole")[0]) == 3


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        (
            ["0.1"],
            "--top-site-fractions needs a model trained with --slide-pooling top, this one pools by 'mean'",
        ),
        (["0.1", "0"], r"--top-site-fractions takes distinct values in \(0, 1\], got \(0.1, 0.0\)"),
        (["0.1", "0.1"], r"--top-site-fractions takes distinct values in \(0, 1\]"),
        (["0.1", "0.1000000001"], r"--top-site-fractions takes distinct values in \(0, 1\]"),
    ],
)
def test_top_site_fractions_are_refused_for_other_poolings_and_out_of_range(
    fractions, message, model_path, tmp_path, capsys
):
    dataset, _ = synthetic_tile_dataset(n_slides=2, feature_dim=16, tiles_per_slide=6, augmented=False)
    dataset.save_to_disk(str(tmp_path / "f"))
    argv = ["--model", str(model_path), "--features", str(tmp_path / "f"), "--out", str(tmp_path / "e")]
    assert main([*argv, "--tile-sampling", "all", "--top-site-fractions", *fractions]) == 2
    assert re.search(message, one_line_error(capsys))
    assert not (tmp_path / "e").exists()
