"""Reading whole-slide images: OpenSlide access, resolution, tissue mask, tile grids, thumbnails."""

from giga_ssl_hf.wsi.slide import MissingResolutionError, Slide, find_slides, open_slide
from giga_ssl_hf.wsi.thumbnail import render_thumbnail, save_thumbnail
from giga_ssl_hf.wsi.tiling import TileGrid, iter_tile_blocks, tile_grid
from giga_ssl_hf.wsi.tissue import TissueMask, read_downsampled, tissue_mask

__all__ = [
    "MissingResolutionError",
    "Slide",
    "TileGrid",
    "TissueMask",
    "find_slides",
    "iter_tile_blocks",
    "open_slide",
    "read_downsampled",
    "render_thumbnail",
    "save_thumbnail",
    "tile_grid",
    "tissue_mask",
]
