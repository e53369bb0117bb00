import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from giga_ssl_hf.contracts import read_metadata
from giga_ssl_hf.features.encoders import EncoderRunner, build_tile_encoder
from giga_ssl_hf.features.extract import ExtractionConfig, extract_slides, main
from giga_ssl_hf.wsi import iter_tile_blocks, open_slide, tile_grid, tissue_mask
from giga_ssl_hf.wsi.synthetic import write_synthetic_slide

REPO = Path(__file__).resolve().parents[2]
WSI_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wsi"
CMU = WSI_FIXTURES / "CMU-1-Small-Region.svs"


def write_tiff_without_resolution(path: Path) -> Path:
    """A pyramidal tiled TIFF with neither a pixel size nor an objective power."""
    return write_synthetic_slide(path, 1024, 768, mpp=None, min_level_size=512)


# 64 px tiles at 2 µm/px: 257 level-0 px on CMU-1-Small-Region, 37 tissue tiles (4 at the edges); small views keep tests fast.
FAST = ["--no-pretrained", "--tile-size", "64", "--target-mpp", "2", "--n-aug", "3", "--n-tiles-per-aug", "8"]
FAST_CONFIG = ExtractionConfig(pretrained=False, tile_size=64, target_mpp=2.0, n_aug=3, n_tiles_per_aug=8)


def manifest(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {record["slide_id"]: record for record in map(json.loads, lines)}


def copies_of_cmu(folder: Path, names) -> Path:
    folder.mkdir()
    for name in names:
        (folder / f"{name}.svs").symlink_to(CMU)
    return folder


def rows(path: Path) -> list[dict]:
    return list(datasets.load_from_disk(str(path)).with_format("numpy", dtype=None))


def assert_same_rows(left: Path, right: Path) -> None:
    a, b = rows(left), rows(right)
    assert [(r["slide_id"], r["aug_id"]) for r in a] == [(r["slide_id"], r["aug_id"]) for r in b]
    for x, y in zip(a, b):
        for key in ("features", "coords", "patch_size_level0", "mpp"):
            assert np.array_equal(x[key], y[key]), key


def test_fixture_folder_bad_slides_are_recorded_and_others_finish(tmp_path):
    out = tmp_path / "out"
    assert main([str(WSI_FIXTURES), "--out", str(out), "--thumbnails", "--no-progress", *FAST]) == 1
    records = manifest(out)
    assert {k: r["status"] for k, r in records.items()} == {
        "CMU-1-Small-Region": "ok",
        "boxes": "failed",  # 352.8 µm/px: too coarse to tile, an error (empty means no tissue)
        "small": "empty",
        "broken": "failed",
        "unopenable": "failed",
        "unreadable": "failed",
    }
    assert "Bogus marker length" in records["unreadable"]["error"]  # fails inside read_region
    assert "too coarse" in records["boxes"]["error"] and records["small"]["error"] is None
    assert "Unsupported TIFF compression" in records["unopenable"]["error"]
    cmu = records["CMU-1-Small-Region"]
    assert cmu["n_tiles"] == 37 and cmu["patch_size_level0"] == 257 and cmu["error"] is None
    assert all(
        set(r) >= {"slide_id", "path", "status", "n_tiles", "seconds", "error"} for r in records.values()
    )
    assert (out / "thumbnails" / "CMU-1-Small-Region.png").exists()

    (exhaustive,) = rows(out / "exhaustive")
    assert exhaustive["slide_id"] == "CMU-1-Small-Region" and exhaustive["aug_id"] == -1
    assert exhaustive["features"].shape == (37, 256) and exhaustive["features"].dtype == np.float16
    assert np.all(exhaustive["coords"] % 257 == 0) and exhaustive["mpp"] == pytest.approx(0.499)
    assert exhaustive["magnification"] == 20
    augmented = rows(out / "augmented")
    assert [r["aug_id"] for r in augmented] == [0, 1, 2]
    exhaustive_coords = {tuple(c) for c in exhaustive["coords"]}
    for row in augmented:
        assert row["features"].shape == (8, 256)
        assert {tuple(c) for c in row["coords"]} <= exhaustive_coords
    assert not np.array_equal(augmented[0]["features"], augmented[1]["features"])
    metadata = read_metadata(out / "augmented")
    assert metadata["feature_dim"] == 256 and metadata["augmentation"]["color_jitter"]["p"] == 0.8
    assert metadata["n_aug"] == 3 and metadata["tile_size"] == 64 and metadata["package_version"]
    assert read_metadata(out / "exhaustive")["augmentation"] is None

    # A rerun skips finished slides, retries the failed ones, and rebuilds identical datasets.
    before = {k: r["seconds"] for k, r in records.items()}
    summary = extract_slides([WSI_FIXTURES], out, FAST_CONFIG, progress=False)
    assert sorted(summary.skipped) == ["CMU-1-Small-Region", "small"]
    assert len(summary.failed) == 4
    assert manifest(out)["CMU-1-Small-Region"]["seconds"] == before["CMU-1-Small-Region"]
    (again,) = rows(out / "exhaustive")
    assert np.array_equal(again["features"], exhaustive["features"])


def test_exhaustive_features_are_the_encoder_on_the_tiles(tmp_path):
    config = ExtractionConfig(pretrained=False, tile_size=64, target_mpp=2.0, precision="fp32")
    extract_slides([CMU], tmp_path / "out", config, passes=("exhaustive",), progress=False, batch_size=16)
    (row,) = rows(tmp_path / "out" / "exhaustive")
    assert not (tmp_path / "out" / "augmented").exists()
    runner = EncoderRunner(build_tile_encoder("resnet18-layer3", pretrained=False), "cpu", "fp32")
    with open_slide(CMU) as slide:
        grid = tile_grid(slide, tile_size=64, target_mpp=2.0, mask=tissue_mask(slide))
        tiles = torch.cat([t for _, t in iter_tile_blocks(slide, grid)])
    assert np.array_equal(row["coords"], grid.coords)
    expected = runner(tiles).numpy().astype(np.float16)
    assert np.allclose(row["features"].astype(np.float32), expected.astype(np.float32), atol=2e-3, rtol=1e-2)


def test_slide_without_resolution_needs_mpp(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    write_tiff_without_resolution(slides / "nores.tiff")
    out = tmp_path / "out"
    assert main([str(slides), "--out", str(out), "--no-aug", "--no-progress", *FAST]) == 1
    record = manifest(out)["nores"]
    assert record["status"] == "failed" and "--mpp" in record["error"]
    assert main([str(slides), "--out", str(out), "--no-aug", "--no-progress", "--mpp", "0.5", *FAST]) == 0
    record = manifest(out)["nores"]
    assert record["status"] == "ok" and record["mpp_source"] == "user" and record["n_tiles"] > 0
    # 64 px at 2 µm/px = 256 level-0 px at 0.5 µm/px
    assert record["patch_size_level0"] == 256
    (row,) = rows(out / "exhaustive")
    assert row["mpp"] == 0.5 and np.isnan(row["magnification"])


def test_augmentations_do_not_depend_on_which_slides_run_together(tmp_path):
    folder = copies_of_cmu(tmp_path / "slides", ["a", "b"])
    extract_slides([folder], tmp_path / "both", FAST_CONFIG, passes=("augmented",), progress=False)
    extract_slides([folder / "b.svs"], tmp_path / "alone", FAST_CONFIG, passes=("augmented",), progress=False)
    both = [r for r in rows(tmp_path / "both" / "augmented") if r["slide_id"] == "b"]
    alone = rows(tmp_path / "alone" / "augmented")
    assert len(both) == len(alone) == 3
    for x, y in zip(both, alone):
        assert np.array_equal(x["coords"], y["coords"]) and np.array_equal(x["features"], y["features"])
    a_rows = [r for r in rows(tmp_path / "both" / "augmented") if r["slide_id"] == "a"]
    assert not np.array_equal(a_rows[0]["coords"], both[0]["coords"])  # each slide has its own draws


def test_a_later_pass_keeps_the_pass_a_slide_already_has(tmp_path):
    out = tmp_path / "out"
    extract_slides([CMU], out, FAST_CONFIG, passes=("exhaustive",), progress=False)
    exhaustive = rows(out / "exhaustive")
    extract_slides([CMU], out, FAST_CONFIG, passes=("augmented",), progress=False)
    assert manifest(out)[CMU.stem]["passes"] == ["exhaustive", "augmented"]
    assert len(rows(out / "augmented")) == 3
    # Both passes are there now: an exhaustive-only rerun has nothing left to encode, and the Dataset it
    # rebuilds from the slide's part still holds the first run's features.
    summary = extract_slides([CMU], out, FAST_CONFIG, passes=("exhaustive",), progress=False)
    assert summary.skipped == [CMU.stem]
    (again,) = rows(out / "exhaustive")
    assert np.array_equal(again["features"], exhaustive[0]["features"])


def test_rerun_with_other_settings_is_refused(tmp_path):
    extract_slides([WSI_FIXTURES / "small.svs"], tmp_path / "out", FAST_CONFIG, progress=False)
    other = ExtractionConfig(pretrained=False, tile_size=32, target_mpp=2.0, n_aug=3, n_tiles_per_aug=8)
    with pytest.raises(ValueError, match="tile_size"):
        extract_slides([WSI_FIXTURES / "small.svs"], tmp_path / "out", other, progress=False)


@pytest.mark.slow
def test_sigkill_mid_job_then_rerun_equals_uninterrupted_run(tmp_path):
    names = [f"slide{i}" for i in range(6)]
    folder = copies_of_cmu(tmp_path / "slides", names)
    command = [sys.executable, "-m", "giga_ssl_hf.cli", "extract", str(folder), "--no-progress", *FAST]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([*command, "--out", str(killed)], cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((killed / "parts").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = list((killed / "parts").glob("*.json"))
    assert 1 <= len(committed) < len(names), "the run should have been killed mid-job"
    assert not (killed / "exhaustive").exists()

    rerun = subprocess.run(
        [*command, "--out", str(killed)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(committed)} already done" in rerun.stdout
    assert main([str(folder), "--out", str(tmp_path / "clean"), "--no-progress", *FAST]) == 0

    for which in ("exhaustive", "augmented"):
        assert_same_rows(killed / which, tmp_path / "clean" / which)
    ids = [r["slide_id"] for r in rows(killed / "exhaustive")]
    assert ids == names  # every slide once, in slide_id order
    assert sorted(manifest(killed)) == names
    assert not [p for p in killed.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["window", "all"])
def test_tile_sampling_stores_contiguous_tiles_for_window_views(tmp_path, sampling):
    from giga_ssl_hf.training.views import SlideViews

    out = tmp_path / "out"
    assert main([str(CMU), "--out", str(out), "--no-progress", "--tile-sampling", sampling, *FAST]) == 0
    (exhaustive,) = rows(out / "exhaustive")
    augmented = rows(out / "augmented")
    grid = exhaustive["coords"] // exhaustive["patch_size_level0"]
    assert len(augmented) == 3 and read_metadata(out / "augmented")["tile_sampling"] == sampling
    for row in augmented:
        cells = row["coords"] // row["patch_size_level0"]
        if sampling == "all":  # every tissue tile, in the exhaustive pass's order
            assert np.array_equal(row["coords"], exhaustive["coords"])
        else:  # the 8 distinct tiles nearest the window's first tile
            assert len(np.unique(cells, axis=0)) == 8
            nearest = np.sort(np.linalg.norm(grid - cells[0], axis=1))[7]
            assert np.linalg.norm(cells - cells[0], axis=1).max() <= nearest + 1e-9
        assert not np.array_equal(row["features"], exhaustive["features"][: len(row["features"])])
    views = SlideViews(datasets.load_from_disk(str(out / "augmented")), n_tiles=4, tile_sampling="window")
    batch = views.sample(np.array([0]))
    assert batch["tile_features"].shape == (1, 2, 4, exhaustive["features"].shape[1])
