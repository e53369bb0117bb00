"""Reading JPEG-tiled pyramids without OpenSlide: raw tile bytes decoded in batches, on the GPU or the CPU.

For SVS and generic tiled TIFFs whose tiles are JPEG, the bytes of the file tiles covering a block are read
with ``tifffile``, completed into standalone JPEG streams and decoded together by
``torchvision.io.decode_jpeg`` (nvjpeg with ``device="cuda"``, libjpeg-turbo on the CPU); the block is
assembled, split into tiles and resized where it was decoded, so a CUDA encoder gets device tensors and the
CPU never touches a pixel. The block layout is the OpenSlide reader's (:func:`~giga_ssl_hf.wsi.tiling.plan_blocks`).

Details that make the pixels match OpenSlide's ``read_region``:

- **JPEGTables**: SVS tiles are abbreviated streams whose quantisation and Huffman tables live once in the
  TIFF's JPEGTables tag; they are spliced in (tables without their EOI, tile without its SOI).
- **Colour space**: Aperio often stores RGB directly in the JPEG (TIFF photometric RGB, component ids 0, 1,
  2, no JFIF / Adobe marker), where a decoder guessing YCbCr would convert colours that need no conversion.
  For photometric RGB an Adobe APP14 marker with transform 0 ("no colour transform") is inserted and the
  frame's component ids become 'R', 'G', 'B' (the two signals decoders use to skip the YCbCr conversion;
  libjpeg-turbo honours both; the GPU suite checks nvjpeg against OpenSlide); YCbCr streams decode as usual.
- **Edges**: file tiles at the right and bottom edges are padded; pixels beyond the level's size, and
  blocks reaching past it, are white, as :meth:`~giga_ssl_hf.wsi.slide.Slide.read_region` composites them.

Tolerance: with the same libjpeg-turbo decoding the same bytes, the CPU path is pixel-identical to OpenSlide
on ``CMU-1-Small-Region.svs``; nvjpeg's IDCT may differ from libjpeg-turbo's by a few grey levels.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import numpy as np
import torch

from giga_ssl_hf.contracts import TILE_DECODERS
from giga_ssl_hf.wsi.slide import Slide
from giga_ssl_hf.wsi.tiling import TileGrid, _Block, split_block

logger = logging.getLogger(__name__)

_JPEG = 7
_PHOTOMETRIC_RGB = 2
# APP14 "Adobe", version 100, flags 0 / 0, transform 0: the three components are RGB, not YCbCr.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


class NotJpegTiledError(ValueError):
    """The slide level is not a tiled TIFF page of 8-bit RGB JPEG tiles."""


def _mark_rgb(data: bytes) -> bytes:
    """``data`` with an Adobe "no transform" marker, and component ids 'R', 'G', 'B' in its frame and scan
    headers (the scan refers to the frame's components by id)."""
    stream = bytearray(data[:2] + _ADOBE_RGB + data[2:])
    renamed: dict[int, int] = {}
    position = 2
    while position + 4 <= len(stream) and stream[position] == 0xFF:
        marker = stream[position + 1]
        length = int.from_bytes(stream[position + 2 : position + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2) and stream[position + 9] == 3:  # SOF0/1/2, 3 components
            for component, identifier in enumerate(b"RGB"):
                offset = position + 10 + 3 * component
                renamed[stream[offset]] = identifier
                stream[offset] = identifier
        elif marker == 0xDA:  # start of scan (the last header): its component selectors
            for component in range(stream[position + 4]):
                offset = position + 5 + 2 * component
                stream[offset] = renamed.get(stream[offset], stream[offset])
            break
        position += 2 + length
    return bytes(stream)


class JpegTileLevel:
    """The JPEG tiles of one pyramid level of a TIFF-based slide (thread-safe reads)."""

    def __init__(self, path: str | Path, size: tuple[int, int]):
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        self._lock = threading.Lock()
        try:
            page = self._find_page(size)
        except BaseException:
            self._tif.close()
            raise
        self.width, self.height = size
        self.tile_width, self.tile_height = int(page.tilewidth), int(page.tilelength)
        self.tiles_across = math.ceil(self.width / self.tile_width)
        self.tables = bytes(page.jpegtables) if page.jpegtables else None
        self.rgb = int(page.photometric) == _PHOTOMETRIC_RGB
        self.offsets, self.byte_counts = page.dataoffsets, page.databytecounts

    def _find_page(self, size: tuple[int, int]):
        for page in self._tif.pages:
            if (int(page.imagewidth), int(page.imagelength)) != tuple(size) or not page.is_tiled:
                continue
            if (
                int(page.compression) == _JPEG
                and page.samplesperpixel == 3
                and page.bitspersample == 8
                and int(page.planarconfig) == 1
            ):
                return page
            raise NotJpegTiledError(
                f"{self.path.name}: level {size[0]}x{size[1]} is tiled with compression "
                f"{int(page.compression)}, not 8-bit RGB JPEG"
            )
        raise NotJpegTiledError(f"{self.path.name}: no tiled TIFF page of {size[0]}x{size[1]} px")

    def close(self) -> None:
        self._tif.close()

    def stream(self, column: int, row: int) -> bytes | None:
        """The standalone JPEG stream of file tile ``(column, row)``; None for a tile with no data."""
        index = row * self.tiles_across + column
        count = int(self.byte_counts[index])
        if count == 0:
            return None
        with self._lock:
            handle = self._tif.filehandle
            handle.seek(int(self.offsets[index]))
            data = handle.read(count)
        if self.tables is not None and len(self.tables) > 4:
            data = self.tables[:-2] + data[2:]  # tables without EOI + tile without SOI
        if self.rgb:
            data = _mark_rgb(data)
        return data

    def read(self, x: int, y: int, width: int, height: int, device: torch.device) -> torch.Tensor:
        """RGB uint8 ``(3, height, width)`` on ``device`` of the level region at level px ``(x, y)``."""
        from torchvision.io import ImageReadMode, decode_jpeg

        tw, th = self.tile_width, self.tile_height
        columns = range(max(x, 0) // tw, min(x + width, self.width) // tw + 1)
        rows = range(max(y, 0) // th, min(y + height, self.height) // th + 1)
        region = torch.full((3, height, width), 255, dtype=torch.uint8, device=device)
        places, streams = [], []
        for row in rows:
            for column in columns:
                if column * tw >= self.width or row * th >= self.height:
                    continue
                data = self.stream(column, row)
                if data is not None:
                    places.append((column, row))
                    streams.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if not streams:
            return region
        decoded = decode_jpeg(streams, mode=ImageReadMode.RGB, device=device)
        for (column, row), tile in zip(places, decoded):
            # The part of this file tile inside both the level and the region, in level px.
            left, top = max(column * tw, x), max(row * th, y)
            right = min((column + 1) * tw, self.width, x + width)
            bottom = min((row + 1) * th, self.height, y + height)
            if right > left and bottom > top:
                region[:, top - y : bottom - y, left - x : right - x] = tile[
                    :, top - row * th : bottom - row * th, left - column * tw : right - column * tw
                ]
        return region


class RawTileReader:
    """A ``read_block`` for :func:`~giga_ssl_hf.wsi.tiling.iter_tile_blocks` decoding raw JPEG tiles on ``device``."""

    def __init__(self, slide: Slide, level: int, device: str | torch.device):
        self.device = torch.device(device)
        self.downsample = slide.level_downsamples[level]
        self.level = JpegTileLevel(slide.path, slide.level_dimensions[level])

    def __call__(self, slide: Slide, grid: TileGrid, block: _Block) -> tuple[np.ndarray, torch.Tensor]:
        x = int(round(block.location[0] / self.downsample))
        y = int(round(block.location[1] / self.downsample))
        region = self.level.read(x, y, block.size[0], block.size[1], self.device)
        return block.indices, split_block(region, grid, block)

    def close(self) -> None:
        self.level.close()


def is_jpeg_tiled(slide: Slide, level: int) -> bool:
    """Whether ``level`` of ``slide`` can be read by :class:`RawTileReader`."""
    try:
        JpegTileLevel(slide.path, slide.level_dimensions[level]).close()
    except (NotJpegTiledError, OSError, ValueError) as error:
        logger.debug("%s: raw JPEG tiles unavailable: %s", slide.path.name, error)
        return False
    return True


def resolve_decoder(decode: str, slide: Slide, level: int, device: torch.device) -> str:
    """``openslide``, ``gpu`` or ``cpu-raw`` for ``decode`` (``auto``: gpu on CUDA for JPEG tiles)."""
    if decode not in TILE_DECODERS:
        raise ValueError(f"decode must be one of {', '.join(TILE_DECODERS)}, not {decode!r}")
    if decode == "auto":
        return "gpu" if device.type == "cuda" and is_jpeg_tiled(slide, level) else "openslide"
    if decode == "gpu" and device.type != "cuda":
        raise ValueError("--decode gpu needs a CUDA device for the encoder (--device cuda)")
    return decode


def reader_threads(decode: str, num_readers: int) -> int:
    """Background reading threads for a resolved ``decode``: at most one calls nvjpeg (not thread-safe)."""
    return min(num_readers, 1) if decode == "gpu" else num_readers


def block_reader(decode: str, slide: Slide, level: int, device: torch.device) -> RawTileReader | None:
    """The raw reader for a resolved ``decode`` (None for OpenSlide's ``read_region``)."""
    if decode == "openslide":
        return None
    return RawTileReader(slide, level, device if decode == "gpu" else "cpu")
