from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from giga_ssl_hf.wsi import (
    MissingResolutionError,
    iter_tile_blocks,
    open_slide,
    save_thumbnail,
    tile_grid,
    tissue_mask,
)
from giga_ssl_hf.wsi.synthetic import write_synthetic_slide
from giga_ssl_hf.wsi.tiling import plan_blocks

WSI_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wsi"
CMU = WSI_FIXTURES / "CMU-1-Small-Region.svs"


def write_tiff_without_resolution(path: Path) -> Path:
    """A pyramidal tiled TIFF with neither a pixel size nor an objective power."""
    return write_synthetic_slide(path, 1024, 768, mpp=None, min_level_size=512)


def test_cmu_resolution_from_metadata():
    with open_slide(CMU) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.magnification == 20
        assert slide.mpp_source == "metadata"


def test_missing_resolution_names_mpp_option(tmp_path):
    path = write_tiff_without_resolution(tmp_path / "nores.tiff")
    with pytest.raises(MissingResolutionError, match="--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.mpp_source == "user"
        assert np.isnan(slide.magnification)


def test_mpp_is_a_fallback_unless_overridden():
    with open_slide(CMU, mpp=0.25) as slide:
        assert slide.mpp == pytest.approx(0.499)
    with open_slide(CMU, mpp=0.25, override_mpp=True) as slide:
        assert slide.mpp == 0.25


@pytest.mark.parametrize(
    ("name", "error"),
    [("broken.svs", Exception), ("unopenable.tiff", openslide.OpenSlideError)],
)
def test_unopenable_slides_raise(name, error):
    with pytest.raises(error):
        open_slide(WSI_FIXTURES / name)


def test_cmu_grid_at_paper_resolution():
    with open_slide(CMU) as slide:
        mask = tissue_mask(slide)
        grid = tile_grid(slide, mask=mask)  # 224 px at 1.0 µm/px
        full = tile_grid(slide)
    # 224 px at 1 µm/px = 448.9 level-0 px at 0.499 µm/px -> 449. The grid covers the whole slide:
    # ceil(2220 / 449) = 5 columns, ceil(2967 / 449) = 7 rows, the last ones extending past the edge.
    assert grid.patch_size_level0 == 449
    assert full.n_candidates == len(full) == 35  # without a mask: every tile at least half inside
    assert grid.level == 0 and grid.read_size == 449
    assert 0.2 < mask.tissue_fraction < 0.6
    assert 6 <= len(grid) < 35
    assert np.all(grid.coords % 449 == 0)
    assert np.all(grid.coords < np.array([2220, 2967]))
    assert np.all(grid.tissue >= 0.5)
    # Row-major order, no duplicates: what block reading and the datasets rely on.
    cells = grid.coords // 449
    keys = cells[:, 1] * 100 + cells[:, 0]
    assert np.all(np.diff(keys) > 0)


def test_edge_tiles_with_tissue_are_kept_and_padded_white():
    """Tissue where the slide ends inside a tile is tiled too; the part past the edge reads as glass."""
    with open_slide(CMU) as slide:
        mask = tissue_mask(slide)
        # 256 px tiles at the slide's own resolution: read without resizing, compared pixel for pixel.
        grid = tile_grid(slide, tile_size=256, target_mpp=slide.mpp, mask=mask)
        assert (grid.patch_size_level0, grid.read_size) == (256, 256)
        size = np.array([2220, 2967])
        edge = np.flatnonzero((grid.coords + 256 > size).any(axis=1))
        assert len(edge) >= 2 and np.all(grid.tissue[edge] >= 0.5)
        tiles = torch.cat([t for _, t in iter_tile_blocks(slide, grid)])
        for index in edge:
            x, y = (int(v) for v in grid.coords[index])
            inside_w, inside_h = min(256, 2220 - x), min(256, 2967 - y)
            tile = tiles[index].permute(1, 2, 0).numpy()
            assert np.all(tile[inside_h:] == 255) and np.all(tile[:, inside_w:] == 255)
            expected = slide.read_region((x, y), 0, (inside_w, inside_h))
            assert np.array_equal(tile[:inside_h, :inside_w], expected)
        # Fractions are over the whole tile: the part past the edge counts as no tissue.
        everything = tile_grid(slide, tile_size=256, target_mpp=slide.mpp, mask=mask, min_tissue=0.0)
        assert len(everything) == 9 * 12
        inside = (np.minimum(everything.coords + 256, size) - everything.coords).prod(axis=1) / 256**2
        assert np.all(everything.tissue <= inside + 1e-6)


def test_tiny_and_blank_slides_have_no_tile(tmp_path):
    with open_slide(WSI_FIXTURES / "small.svs") as slide:  # 16 x 16 px: smaller than one tile
        assert len(tile_grid(slide, mask=tissue_mask(slide))) == 0
    with open_slide(WSI_FIXTURES / "boxes.tiff") as slide:  # 72 dpi: 353 µm/px, far coarser than tiles
        grid = tile_grid(slide, mask=tissue_mask(slide))
        assert len(grid) == 0 and "--mpp" in grid.reason
    blank = tmp_path / "blank.png"
    Image.new("RGB", (600, 600), (242, 242, 242)).save(blank)
    with open_slide(blank, mpp=0.5) as slide:
        mask = tissue_mask(slide)
        assert not mask.mask.any()
        assert len(tile_grid(slide, tile_size=64, target_mpp=1.0, mask=mask)) == 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_block_reading_equals_per_tile_reading(num_workers):
    with open_slide(CMU) as slide:
        grid = tile_grid(slide, tile_size=64, target_mpp=2.0, mask=tissue_mask(slide))
        assert grid.read_size == 257  # read at level 0, resized to 64
        blocks = plan_blocks(slide, grid, max_block_px=600)
        assert any(len(b.indices) == 2 for b in blocks) and all(len(b.indices) <= 2 for b in blocks)
        seen = []
        for indices, tiles in iter_tile_blocks(slide, grid, max_block_px=600, num_workers=num_workers):
            assert tiles.shape == (len(indices), 3, 64, 64) and tiles.dtype == torch.uint8
            for index, tile in zip(indices, tiles):
                x, y = grid.coords[index]
                region = torch.from_numpy(slide.read_region((int(x), int(y)), 0, (257, 257))).permute(2, 0, 1)
                expected = F.interpolate(region[None].float(), size=(64, 64), mode="bilinear", antialias=True)
                assert torch.equal(tile, expected[0].round().clamp(0, 255).to(torch.uint8))
            seen.extend(indices.tolist())
    assert seen == list(range(len(grid)))


def test_pyramid_level_is_chosen_to_avoid_resizing(tmp_path):
    path = write_synthetic_slide(tmp_path / "pyramid.tiff", 2048, 1536, mpp=0.25, min_level_size=512)
    with open_slide(path) as slide:
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        grid = tile_grid(slide, tile_size=64, target_mpp=1.0, mask=tissue_mask(slide))
        assert (grid.patch_size_level0, grid.level, grid.read_size) == (256, 2, 64)
        assert 0 < len(grid) < grid.n_candidates == 8 * 6
        indices, tiles = next(iter_tile_blocks(slide, grid))
        x, y = grid.coords[indices[0]]
        direct = slide.read_region((int(x), int(y)), 2, (64, 64))
        assert np.array_equal(tiles[0].permute(1, 2, 0).numpy(), direct)


def test_thumbnail_shows_tissue_outline_and_tiles(tmp_path):
    with open_slide(CMU) as slide:
        mask = tissue_mask(slide)
        grid = tile_grid(slide, mask=mask)
        path = save_thumbnail(tmp_path / "cmu.png", slide, mask, grid, max_size=512)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert max(pixels.shape[:2]) == 512
    assert np.all(pixels == (0, 160, 0), axis=-1).sum() > 100  # tissue outline
    assert np.all(pixels == (30, 60, 255), axis=-1).sum() > 100  # tile rectangles


def test_a_failed_thumbnail_leaves_the_previous_one_and_no_temporary(tmp_path, monkeypatch):
    from giga_ssl_hf.wsi import thumbnail

    class HalfImage:
        def save(self, handle, format):
            handle.write(b"half")
            raise OSError("disk full")

    (tmp_path / "cmu.png").write_bytes(b"previous")
    monkeypatch.setattr(thumbnail, "render_thumbnail", lambda *args: HalfImage())
    with pytest.raises(OSError, match="disk full"):
        thumbnail.save_thumbnail(tmp_path / "cmu.png", None, None, None)
    assert [p.name for p in tmp_path.iterdir()] == ["cmu.png"] and (
        tmp_path / "cmu.png"
    ).read_bytes() == b"previous"
