"""Synthetic pyramidal whole-slide images, for tests, benchmarks and examples that must run offline.

The slide is written tile by tile (memory stays bounded whatever its size) as a tiled TIFF that OpenSlide
reads with its generic-TIFF driver: one IFD per pyramid level, each level half the size of the previous
one, JPEG tiles encoded with Pillow. ``tifffile`` cannot JPEG-encode without ``imagecodecs``, so the tiles
are written pre-encoded and the compression / photometric tags are patched afterwards.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

_JPEG = 7
_YCBCR = 6  # Pillow's baseline JPEG streams are YCbCr; OpenSlide converts them only when told so


def _inside_tissue(x: np.ndarray, y: np.ndarray, width: int, height: int) -> np.ndarray:
    """Whether level-0 points (broadcastable x, y) fall in the two tissue ellipses."""
    u, v = x / width, y / height
    inside = ((u - 0.35) / 0.28) ** 2 + ((v - 0.45) / 0.35) ** 2 < 1
    return inside | (((u - 0.72) / 0.2) ** 2 + ((v - 0.6) / 0.3) ** 2 < 1)


def _encoded_tiles(
    width: int,
    height: int,
    downsample: int,
    tile: int,
    size0: tuple[int, int],
    seed: int,
    quality: int,
    stain: tuple[int, int, int],
    region: tuple[float, float, float] | None = None,
    region_stain: tuple[int, int, int] = (110, 40, 130),
):
    rng = np.random.default_rng(seed)
    # One textured tissue tile (pink stain with nuclei-like noise) reused everywhere: realistic JPEG
    # decode cost without computing texture per tile.
    noise = rng.normal(0, 1, (tile, tile, 1)).astype(np.float32)

    def texture(colour: tuple[int, int, int]) -> np.ndarray:
        return np.clip(
            np.array(colour, np.float32) + noise * np.array([25, 45, 25], np.float32), 0, 255
        ).astype(np.uint8)

    tissue, planted_texture = texture(stain), texture(region_stain)
    glass = np.full((tile, tile, 3), 243, dtype=np.uint8)
    encoded: dict[str, bytes] = {}

    def encode(rgb: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    for top in range(0, height, tile):
        ys = (np.arange(top, top + tile, dtype=np.float32) * downsample)[:, None]
        for left in range(0, width, tile):
            xs = (np.arange(left, left + tile, dtype=np.float32) * downsample)[None, :]
            inside = _inside_tissue(xs, ys, *size0)
            planted = np.zeros_like(inside)
            if region is not None:
                centre_u, centre_v, radius = region
                distance = np.hypot(xs - centre_u * size0[0], ys - centre_v * size0[1])
                planted = inside & (distance < radius * size0[0])
            if not planted.any() and (inside.all() or not inside.any()):
                key = "tissue" if inside.all() else "glass"
                if key not in encoded:
                    encoded[key] = encode(tissue if inside.all() else glass)
                data = encoded[key]
            else:
                rgb = np.where(inside[..., None], tissue, glass)
                data = encode(np.where(planted[..., None], planted_texture, rgb))
            yield data, len(data)


def write_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    mpp: float | None = 0.25,
    tile: int = 256,
    min_level_size: int = 1024,
    seed: int = 0,
    quality: int = 80,
    stain: tuple[int, int, int] = (200, 110, 175),
    region: tuple[float, float, float] | None = None,
    region_stain: tuple[int, int, int] = (110, 40, 130),
) -> Path:
    """Write a pyramidal JPEG-tiled TIFF of ``width x height`` level-0 px with synthetic tissue.

    ``mpp`` (µm per level-0 px) goes into the TIFF resolution tags (OpenSlide reports it as
    ``openslide.mpp-x``); ``mpp=None`` writes no resolution, like scans that lack it. Levels halve the
    size until the longer side is below ``min_level_size``. ``stain`` is the tissue's mean RGB colour.
    ``region = (u, v, r)`` plants a disc of tissue stained ``region_stain`` (dark purple by default) centred at
    ``(u * width, v * height)`` with radius ``r * width``, where it overlaps the tissue.
    """
    import tifffile

    path = Path(path)
    levels = [(width, height)]
    while max(levels[-1]) // 2 >= min_level_size:
        levels.append((levels[-1][0] // 2, levels[-1][1] // 2))
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        for index, (level_width, level_height) in enumerate(levels):
            downsample = 2**index
            options = {}
            if mpp is not None:
                pixels_per_cm = 1e4 / (mpp * downsample)
                options = {"resolution": (pixels_per_cm, pixels_per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(
                _encoded_tiles(
                    level_width,
                    level_height,
                    downsample,
                    tile,
                    (width, height),
                    seed,
                    quality,
                    stain,
                    region,
                    region_stain,
                ),  # fmt: skip
                shape=(level_height, level_width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                subfiletype=1 if index else 0,
                **options,
            )
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in tif.pages:
            page.tags["Compression"].overwrite(_JPEG)
            page.tags["PhotometricInterpretation"].overwrite(_YCBCR)
    return path
