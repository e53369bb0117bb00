"""Visual check of a tiling: the slide thumbnail with the tissue outline and the kept tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from giga_ssl_hf.files import atomic_file
from giga_ssl_hf.wsi.slide import Slide
from giga_ssl_hf.wsi.tiling import TileGrid
from giga_ssl_hf.wsi.tissue import TissueMask, read_downsampled

TISSUE_OUTLINE = (0, 160, 0)
TILE_OUTLINE = (30, 60, 255)


def render_thumbnail(
    slide: Slide, mask: TissueMask | None, grid: TileGrid, max_size: int = 1024
) -> Image.Image:
    """RGB thumbnail (longer side about ``max_size``): tissue mask outline in green, kept tiles in blue."""
    width0, height0 = slide.dimensions
    downsample = max(width0, height0) / max_size
    image = Image.fromarray(read_downsampled(slide, downsample))
    scale_x, scale_y = image.width / width0, image.height / height0
    if mask is not None and mask.mask.any():
        boolean = (
            np.asarray(
                Image.fromarray(mask.mask.astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST)
            )
            > 0
        )
        edge = boolean.copy()
        interior = (
            boolean[1:-1, 1:-1]
            & boolean[:-2, 1:-1]
            & boolean[2:, 1:-1]
            & boolean[1:-1, :-2]
            & boolean[1:-1, 2:]
        )
        edge[1:-1, 1:-1] &= ~interior
        pixels = np.asarray(image).copy()
        # Thicken the outline by one pixel so that it stays visible once the PNG is scaled down.
        thick = edge.copy()
        thick[1:] |= edge[:-1]
        thick[:, 1:] |= edge[:, :-1]
        pixels[thick] = TISSUE_OUTLINE
        image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    side = grid.patch_size_level0
    for x, y in grid.coords:
        draw.rectangle(
            [x * scale_x, y * scale_y, (x + side) * scale_x - 1, (y + side) * scale_y - 1],
            outline=TILE_OUTLINE,
        )
    return image


def save_thumbnail(
    path: str | Path, slide: Slide, mask: TissueMask | None, grid: TileGrid, max_size: int = 1024
) -> Path:
    """Write :func:`render_thumbnail` as a PNG (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:
        render_thumbnail(slide, mask, grid, max_size).save(handle, format="PNG")
    return path
