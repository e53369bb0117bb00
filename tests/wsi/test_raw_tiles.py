"""Raw JPEG tiles decoded by torchvision (the GPU path's CPU twin) against OpenSlide's read_region.

Decoder tolerance: libjpeg-turbo in torchvision and in OpenSlide decode the same bytes, so the CPU raw path
is held to max 2 / mean 0.05 grey levels (it measures 0 / 0 on these fixtures); features to 1e-3.
"""

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from giga_ssl_hf.features.extract import ExtractionConfig, extract_slides
from giga_ssl_hf.wsi import iter_tile_blocks, open_slide, tile_grid, tissue_mask
from giga_ssl_hf.wsi.raw_tiles import (
    JpegTileLevel,
    NotJpegTiledError,
    RawTileReader,
    is_jpeg_tiled,
    resolve_decoder,
)
from giga_ssl_hf.wsi.synthetic import write_synthetic_slide

WSI_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wsi"
CMU = WSI_FIXTURES / "CMU-1-Small-Region.svs"
MAX_DIFF, MEAN_DIFF = 2, 0.05
CPU = torch.device("cpu")


def pixel_difference(raw: torch.Tensor, reference: np.ndarray) -> tuple[int, float]:
    """Max and mean absolute difference of a raw region (3, h, w) and an OpenSlide one (h, w, 3)."""
    difference = np.abs(raw.permute(1, 2, 0).numpy().astype(np.int16) - reference.astype(np.int16))
    return int(difference.max()), float(difference.mean())


def test_cmu_level_decodes_like_openslide_including_rgb_jpeg_and_edges():
    with open_slide(CMU) as slide:
        level = JpegTileLevel(CMU, slide.dimensions)
        try:
            assert level.rgb and level.tables is not None  # Aperio: RGB stored in JPEG, shared tables
            width, height = slide.dimensions
            whole = level.read(0, 0, width, height, CPU)
            max_diff, mean_diff = pixel_difference(whole, slide.read_region((0, 0), 0, (width, height)))
            assert max_diff <= MAX_DIFF and mean_diff <= MEAN_DIFF
            # A region across the bottom-right corner: padded file tiles cropped, outside is white.
            corner = level.read(width - 100, height - 50, 300, 200, CPU)
            reference = slide.read_region((width - 100, height - 50), 0, (300, 200))
            assert pixel_difference(corner, reference)[0] <= MAX_DIFF
            assert (corner[:, 60:, :] == 255).all() and (corner[:, :, 110:] == 255).all()

            stream = level.stream(0, 0)
            frame = stream.index(b"\xff\xc0")
            assert stream[frame + 9] == 3 and stream[frame + 10 : frame + 19 : 3] == b"RGB"
            assert stream[2:11] == b"\xff\xee\x00\x0eAdobe"  # APP14 right after SOI
            level.rgb = False  # what a decoder guessing YCbCr would give: far off
            wrong = level.read(0, 0, 480, 480, CPU)
            assert pixel_difference(wrong, slide.read_region((0, 0), 0, (480, 480)))[1] > 10
        finally:
            level.close()


@pytest.mark.parametrize(("tile_size", "target_mpp"), [(224, 0.5), (64, 2.0)])
def test_cmu_tiles_match_openslide_tiles(tile_size, target_mpp):
    with open_slide(CMU) as slide:
        grid = tile_grid(slide, tile_size=tile_size, target_mpp=target_mpp, mask=tissue_mask(slide))
        reader = RawTileReader(slide, grid.level, CPU)
        try:
            raw = list(iter_tile_blocks(slide, grid, read_block=reader))
        finally:
            reader.close()
        reference = list(iter_tile_blocks(slide, grid))
    assert [i.tolist() for i, _ in raw] == [i.tolist() for i, _ in reference]  # same tile grid and blocks
    difference = (torch.cat([t for _, t in raw]).int() - torch.cat([t for _, t in reference]).int()).abs()
    assert difference.max() <= MAX_DIFF and difference.float().mean() <= MEAN_DIFF


def test_ycbcr_pyramid_levels_match_openslide(tmp_path):
    path = write_synthetic_slide(tmp_path / "pyramid.tiff", 1500, 1100, tile=256, min_level_size=300)
    with open_slide(path) as slide:
        assert len(slide.level_dimensions) >= 3
        for index, (width, height) in enumerate(slide.level_dimensions):
            level = JpegTileLevel(path, (width, height))
            try:
                assert not level.rgb and level.tables is None
                region = level.read(0, 0, width, height, CPU)
            finally:
                level.close()
            max_diff, mean_diff = pixel_difference(region, slide.read_region((0, 0), index, (width, height)))
            assert max_diff <= MAX_DIFF and mean_diff <= MEAN_DIFF, index
        # tiles read from level 1 (target 1 µm/px on a 0.25 µm/px slide: downsample 4 -> level 2)
        grid = tile_grid(slide, tile_size=64, target_mpp=0.5, mask=None)
        assert grid.level == 1
        reader = RawTileReader(slide, grid.level, CPU)
        try:
            raw = torch.cat([t for _, t in iter_tile_blocks(slide, grid, read_block=reader)])
        finally:
            reader.close()
        reference = torch.cat([t for _, t in iter_tile_blocks(slide, grid)])
    assert (raw.int() - reference.int()).abs().max() <= MAX_DIFF


def test_extraction_with_raw_cpu_decoding_gives_the_openslide_features(tmp_path):
    config = ExtractionConfig(
        pretrained=False, tile_size=64, target_mpp=2.0, precision="fp32", dtype="float32"
    )
    outs = {}
    for decode in ("openslide", "cpu-raw"):
        outs[decode] = tmp_path / decode
        extract_slides([CMU], outs[decode], config, passes=("exhaustive",), progress=False, decode=decode)
    rows = {
        d: datasets.load_from_disk(str(o / "exhaustive")).with_format("numpy")[0] for d, o in outs.items()
    }
    assert np.array_equal(rows["openslide"]["coords"], rows["cpu-raw"]["coords"])
    np.testing.assert_allclose(rows["cpu-raw"]["features"], rows["openslide"]["features"], atol=1e-3)
    manifest = (outs["cpu-raw"] / "manifest.jsonl").read_text()
    assert '"decoder": "cpu-raw"' in manifest


def test_decoder_choice():
    with open_slide(CMU) as slide:
        assert is_jpeg_tiled(slide, 0)
        assert resolve_decoder("auto", slide, 0, CPU) == "openslide"  # no CUDA: OpenSlide
        assert resolve_decoder("cpu-raw", slide, 0, CPU) == "cpu-raw"
        with pytest.raises(ValueError, match="needs a CUDA device"):
            resolve_decoder("gpu", slide, 0, CPU)
    with open_slide(WSI_FIXTURES / "boxes.tiff") as slide:  # deflate-compressed tiles
        assert not is_jpeg_tiled(slide, 0)
        with pytest.raises(NotJpegTiledError, match="not 8-bit RGB JPEG"):
            RawTileReader(slide, 0, CPU)
