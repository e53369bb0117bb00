"""Reading whole-slide images: OpenSlide access, resolution, tissue mask, tile grids, thumbnails.

The names are imported on first use: listing and opening slides (:mod:`.slide`) must not import torch (which
the tissue mask and tile reading need), so that a command refusing its inputs answers in about a second.
"""

import importlib

_HOMES = {
    "MissingResolutionError": "slide",
    "Slide": "slide",
    "find_slides": "slide",
    "open_slide": "slide",
    "render_thumbnail": "thumbnail",
    "save_thumbnail": "thumbnail",
    "TileGrid": "tiling",
    "iter_tile_blocks": "tiling",
    "tile_grid": "tiling",
    "TissueMask": "tissue",
    "read_downsampled": "tissue",
    "tissue_mask": "tissue",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
