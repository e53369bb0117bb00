"""Tiles from other tools: TRIDENT / CLAM patch coordinates and GeoJSON tissue polygons, on a real slide."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from giga_ssl_hf.contracts.tile_features import load_tile_dataset
from giga_ssl_hf.features import extract
from giga_ssl_hf.features.encoders import build_tile_encoder
from giga_ssl_hf.wsi import open_slide
from giga_ssl_hf.wsi.tile_sources import polygon_mask, read_patch_coords, read_tissue_geojson

SLIDE = "CMU-1-Small-Region"  # 2220 x 2967 level-0 px, 0.499 µm/px, 20x


def write_trident_coords(path, coords, patch_size=256, patch_size_level0=512):
    """A coordinates file as TRIDENT's coords_to_h5 writes it (patches/<slide>_patches.h5)."""
    with h5py.File(path, "w") as handle:
        dataset = handle.create_dataset("coords", data=np.asarray(coords, dtype=np.int64), chunks=(1, 2))
        dataset.attrs.update(
            {
                "patch_size": patch_size,
                "patch_size_level0": patch_size_level0,
                "level0_magnification": 20,
                "target_magnification": 10,
                "overlap": 0,
                "name": SLIDE,
                "savetodir": str(path.parent),
                "level0_width": 2220,
                "level0_height": 2967,
            }
        )


@pytest.fixture(scope="module")
def slide_path(shared_dir):
    return shared_dir / "fixtures" / "wsi" / f"{SLIDE}.svs"


@pytest.mark.slow
def test_trident_coords_drive_extraction_to_exactly_those_tiles(slide_path, tmp_path):
    # Off the package's grid on purpose (offsets of 37 px, two overlapping tiles, unsorted).
    coords = np.array([[1437, 2037], [37, 37], [549, 37], [700, 300], [37, 1061], [1200, 2400]])
    (tmp_path / "job" / "patches").mkdir(parents=True)
    write_trident_coords(tmp_path / "job" / "patches" / f"{SLIDE}_patches.h5", coords)
    out = tmp_path / "out"
    args = [str(slide_path), "--out", str(out), "--coords-from", str(tmp_path / "job"), "--no-aug"]
    assert (
        extract.main([*args, "--no-pretrained", "--no-progress", "--tile-size", "224", "--dtype", "float32"])
        == 0
    )

    (row,) = load_tile_dataset(out / "exhaustive").with_format("numpy", dtype=None)
    assert sorted(map(tuple, row["coords"])) == sorted(map(tuple, coords))
    assert row["patch_size_level0"] == 512
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["tiles_from"] == "trident coords" and record["n_tiles"] == len(coords)

    # Each feature is the encoder's output on that region: 512 level-0 px resized to 224.
    encoder = build_tile_encoder("resnet18-layer3", pretrained=False).eval()
    with open_slide(slide_path) as slide:
        for index in (0, len(coords) - 1):
            x, y = (int(v) for v in row["coords"][index])
            region = torch.from_numpy(slide.read_region((x, y), 0, (512, 512))).permute(2, 0, 1)[None].float()
            tile = F.interpolate(
                region, size=(224, 224), mode="bilinear", antialias=True, align_corners=False
            )
            with torch.no_grad():
                expected = encoder(tile.round().clamp(0, 255).to(torch.uint8))[0].numpy()
            np.testing.assert_allclose(row["features"][index], expected, rtol=1e-3, atol=1e-3)


def test_clam_coords_need_the_level_downsample(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        handle.create_dataset("coords", data=np.array([[0, 0]])).attrs.update(
            {"patch_size": 256, "patch_level": 1}
        )
    assert read_patch_coords(tmp_path / "s.h5", (1.0, 4.0)).patch_size_level0 == 1024
    with pytest.raises(ValueError, match="patch_level 1 is not a level"):
        read_patch_coords(tmp_path / "s.h5", (1.0,))
    with h5py.File(tmp_path / "bad.h5", "w") as handle:
        handle.create_dataset("coords", data=np.array([[0, 0]]))
    with pytest.raises(ValueError, match="neither 'patch_size_level0'"):
        read_patch_coords(tmp_path / "bad.h5")


# A pentagon over the upper half of the slide with a square hole, level-0 px (x, y), as QuPath exports it.
OUTER = [[200, 300], [2000, 250], [2100, 1300], [1100, 1700], [150, 1250], [200, 300]]
HOLE = [[800, 600], [1300, 600], [1300, 1100], [800, 1100], [800, 600]]


def _inside(point, ring) -> bool:
    x, y = point
    inside = False
    for (x0, y0), (x1, y1) in zip(ring, ring[1:]):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


@pytest.mark.slow
def test_geojson_polygon_restricts_tiles_to_its_inside(slide_path, tmp_path):
    geojson = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [OUTER, HOLE]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tissue"}},
            }
        ],
    }
    (tmp_path / "geojson").mkdir()
    (tmp_path / "geojson" / f"{SLIDE}.geojson").write_text(json.dumps(geojson))
    out = tmp_path / "out"
    args = [str(slide_path), "--out", str(out), "--tissue-geojson", str(tmp_path / "geojson"), "--no-aug"]
    args += ["--no-pretrained", "--no-progress", "--thumbnails", "--min-tissue", "1.0", "--target-mpp", "0.5"]
    assert extract.main(args) == 0

    (row,) = load_tile_dataset(out / "exhaustive").with_format("numpy", dtype=None)
    side = int(row["patch_size_level0"])
    assert len(row["coords"]) >= 20
    for x, y in row["coords"]:  # every corner inside the outer ring and outside the hole (1 mask px slack)
        for corner in (
            (x + 8, y + 8),
            (x + side - 8, y + 8),
            (x + 8, y + side - 8),
            (x + side - 8, y + side - 8),
        ):
            assert _inside(corner, OUTER) and not _inside(corner, HOLE), (x, y)
    # Nothing below the polygon, although the slide has tissue there.
    assert row["coords"][:, 1].max() + side <= 1700
    (record,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["tiles_from"] == "GeoJSON tissue polygons"
    assert (out / "thumbnails" / f"{SLIDE}.png").is_file()


def test_geojson_shapes_and_rasterisation(slide_path, tmp_path):
    feature_list = [{"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[OUTER, HOLE]]}}]
    (tmp_path / "list.json").write_text(json.dumps(feature_list))
    polygons = read_tissue_geojson(tmp_path / "list.json")
    assert len(polygons) == 1 and len(polygons[0]) == 2
    with open_slide(slide_path) as slide:
        mask = polygon_mask(slide, polygons, mask_mpp=8.0)
    d = mask.downsample
    assert mask.mask[int(400 / d), int(1000 / d)] and not mask.mask[int(850 / d), int(1050 / d)]
    assert not mask.mask[int(2500 / d), int(1000 / d)]
    (tmp_path / "point.geojson").write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    with pytest.raises(ValueError, match="no Polygon"):
        read_tissue_geojson(tmp_path / "point.geojson")


def _slides(folder, slide_path, names):
    folder.mkdir()
    for name in names:
        (folder / f"{name}.svs").symlink_to(slide_path)
    return folder


@pytest.mark.slow
def test_impossible_coordinates_fail_their_slide_with_the_reason_and_the_others_go_on(slide_path, tmp_path):
    """Issue 19: such tiles were read as blank glass and encoded as tissue, or written with a tile side of 0."""
    from tests.features.test_extract import FAST, manifest

    slides = _slides(tmp_path / "slides", slide_path, ["negative", "outside", "triples", "zero_side", "good"])
    patches = tmp_path / "patches"
    patches.mkdir()
    write_trident_coords(patches / "negative_patches.h5", [[0, 0], [-512, 512]])
    write_trident_coords(patches / "outside_patches.h5", [[0, 0], [2220, 0], [4000, 4000]])
    write_trident_coords(patches / "triples_patches.h5", np.arange(12).reshape(4, 3) * 100)
    write_trident_coords(patches / "zero_side_patches.h5", [[0, 0]], patch_size_level0=0)
    write_trident_coords(patches / "good_patches.h5", [[0, 0], [2048, 2560]])  # edge tiles overlap: kept
    out = tmp_path / "out"
    argv = [str(slides), "--out", str(out), "--coords-from", str(patches), "--no-aug", "--no-progress", *FAST]
    assert extract.main(argv) == 1
    records = manifest(out)
    assert records["good"]["status"] == "ok" and records["good"]["n_tiles"] == 2
    errors = {slide_id: r["error"] for slide_id, r in records.items() if r["status"] == "failed"}
    assert set(errors) == {"negative", "outside", "triples", "zero_side"}
    assert (
        "1 of 2 tiles lie at negative coordinates (2220 x 2967 level-0 px), e.g. (-512, 512)"
        in errors["negative"]
    )
    assert (
        "2 of 3 tiles lie wholly outside the slide" in errors["outside"] and "(2220, 0)" in errors["outside"]
    )
    assert "coords must be (n, 2)" in errors["triples"] and "(4, 3)" in errors["triples"]
    assert "tile side must be a positive number of level-0 px, got 0" in errors["zero_side"]
    assert load_tile_dataset(out / "exhaustive")["slide_id"] == ["good"]


@pytest.mark.slow
def test_polygons_wholly_outside_the_slide_fail_it_saying_why(slide_path, tmp_path):
    from tests.features.test_extract import FAST, manifest

    slides = _slides(tmp_path / "slides", slide_path, ["far", "near"])
    geojson = tmp_path / "geojson"
    geojson.mkdir()
    far = [[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]]
    (geojson / "far.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": far}))
    (geojson / "near.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [OUTER, HOLE]}))
    out = tmp_path / "out"
    argv = [
        str(slides),
        "--out",
        str(out),
        "--tissue-geojson",
        str(geojson),
        "--no-aug",
        "--no-progress",
        *FAST,
    ]
    assert extract.main(argv) == 1
    records = manifest(out)
    assert records["near"]["status"] == "ok"
    assert records["far"]["status"] == "failed"
    assert (
        "far.geojson: the polygons lie wholly outside the slide (they span x 5000..6000"
        in records["far"]["error"]
    )
