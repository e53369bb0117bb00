"""Local occlusion equals one whole-slide pass per block (the formula it replaces)."""

import numpy as np
import pandas as pd
import pytest

from giga_ssl_hf import GigaSSLConfig
from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe
from giga_ssl_hf.inference.tile_scores import occlusion_scores, tile_cells
from tests.inference.test_heatmap import PATCH, _slide_log_odds, blob_slide, trained_like


@pytest.fixture(scope="module")
def probe():
    rng = np.random.default_rng(0)
    ids = np.array(["a", "b", "c", "d"])
    return fit_saved_probe(ids, rng.normal(size=(4, 12)), pd.Series({"a": "0", "b": "1", "c": "0", "d": "1"}))


def whole_slide_drops(model, probe, features, coords, radius, stride):
    """Today's definition: the slide's log-odds minus that of a whole-slide pass without each tile's box."""
    cells = tile_cells(model, coords, PATCH)
    base = _slide_log_odds(model, probe, features, coords, np.ones(len(cells), dtype=bool))
    drops = []
    for cell in cells:
        block = cell // stride
        removed = ((cells >= block * stride - radius) & (cells <= (block + 1) * stride - 1 + radius)).all(
            axis=1
        )
        drops.append(
            base - _slide_log_odds(model, probe, features, coords, ~removed) if (~removed).any() else np.nan
        )
    return np.array(drops)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{}, {"fixed_grid_cell_size": True, "grid_cell_size": PATCH // 2}])
def test_local_occlusion_equals_whole_slide_passes(probe, overrides):
    model = trained_like(GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8], **overrides))
    # Scattered tissue with duplicated cells and off-lattice coordinates, and a dense square (edges, min row).
    scattered = blob_slide(150, seed=3, side=18)
    square = np.stack(np.meshgrid(np.arange(9), np.arange(7), indexing="ij"), axis=-1).reshape(-1, 2) * PATCH
    dense = (
        np.random.default_rng(4).normal(size=(len(square), 8)).astype(np.float16),
        square.astype(np.int64),
    )
    for features, coords in (scattered, dense):
        features = features.astype(np.float32)
        for radius, stride in ((1, 1), (0, 1), (2, 1), (1, 3), (0, 2)):
            scores = occlusion_scores(model, features, coords, PATCH, probe, "1", radius, stride)
            expected = whole_slide_drops(model, probe, features, coords, radius, stride)
            np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_occlusion_of_a_max_pooling_model_equals_whole_slide_passes(probe):
    """The local update holds for the mean over output sites only: a max-pooling model gets whole-slide passes."""
    model = trained_like(
        GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8], slide_pooling="max")
    )
    square = np.stack(np.meshgrid(np.arange(5), np.arange(4), indexing="ij"), axis=-1).reshape(-1, 2) * PATCH
    features = np.random.default_rng(5).normal(size=(len(square), 8)).astype(np.float32)
    scores = occlusion_scores(model, features, square, PATCH, probe, "1", 1, 1)
    np.testing.assert_allclose(
        scores, whole_slide_drops(model, probe, features, square, 1, 1), rtol=1e-5, atol=1e-6
    )


def test_occlusion_of_a_slide_it_would_empty_is_refused(probe):
    model = trained_like(GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8]))
    features = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    coords = np.array([[0, 0], [PATCH, 0]])
    for n_tiles in (1, 2):
        with pytest.raises(ValueError, match="removes all .* no slide is left"):
            occlusion_scores(model, features[:n_tiles], coords[:n_tiles], PATCH, probe, "1", radius=1)
    # At radius 0 each tile's removal leaves the other: defined drops.
    assert np.isfinite(occlusion_scores(model, features, coords, PATCH, probe, "1", radius=0)).all()


@pytest.mark.slow
def test_heatmap_refuses_occlusion_of_a_two_tile_slide_in_one_line_and_maps_the_others(
    probe, tmp_path, capsys
):
    from giga_ssl_hf.cli import main as cli_main
    from giga_ssl_hf.features.store import write_tile_dataset

    rng = np.random.default_rng(0)
    rows = [
        {
            "slide_id": slide_id,
            "aug_id": -1,
            "features": rng.normal(size=(n, 8)).astype(np.float16),
            "coords": np.stack([np.arange(n) * PATCH, np.zeros(n, dtype=np.int64)], axis=1),
            "patch_size_level0": PATCH,
            "mpp": 0.5,
            "magnification": 20.0,
        }  # fmt: skip
        for slide_id, n in (("many", 30), ("two", 2))
    ]
    write_tile_dataset(iter(rows), tmp_path / "features", 8, "float16", {})
    trained_like(GigaSSLConfig(feature_dim=8, hidden_dim=12, projection_dims=[8])).save_pretrained(
        tmp_path / "model"
    )
    probe.save(tmp_path / "probe")
    argv = [
        "heatmap",
        "--model",
        str(tmp_path / "model"),
        "--features",
        str(tmp_path / "features"),
        "--probe",
    ]
    argv += [
        str(tmp_path / "probe"),
        "--out",
        str(tmp_path / "out"),
        "--method",
        "occlusion",
        "--allow-model-mismatch",
    ]
    assert cli_main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "two" in line]
    assert errors == [
        "giga-ssl heatmap: two: failed: occlusion at radius 1 removes all 2 tile(s) of the slide whichever tile is "
        "occluded: no slide is left to compare with (use --method embedding or a smaller --occlusion-radius)"
    ]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["many.png", "tile_scores.parquet"]
