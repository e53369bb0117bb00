"""Where a slide's tiles come from: this package's tissue mask, other tools' patch coordinates, or tissue polygons.

- default: the Otsu saturation mask (:func:`~giga_ssl_hf.wsi.tissue.tissue_mask`) and a regular grid;
- ``coords_from``: TRIDENT / CLAM patch-coordinate ``.h5`` files, one per slide: a ``coords`` dataset
  ``(n, 2)`` of level-0 (x, y) top-left corners, and on it either ``patch_size_level0`` (TRIDENT) or
  ``patch_size`` + ``patch_level`` (CLAM; level-0 side = ``patch_size`` x that level's downsample). The tiles
  are exactly those coordinates; each is resized from ``patch_size_level0`` level-0 px to ``tile_size``.
- ``tissue_geojson``: per-slide GeoJSON tissue polygons in level-0 px (QuPath and TRIDENT exports:
  a FeatureCollection, a list of Features, a Feature or a bare geometry; Polygon / MultiPolygon, holes
  respected), rasterised into a :class:`~giga_ssl_hf.wsi.tissue.TissueMask` that replaces the Otsu mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
from PIL import Image, ImageDraw

from giga_ssl_hf.wsi.slide import Slide

if TYPE_CHECKING:
    from giga_ssl_hf.wsi.tiling import TileGrid
    from giga_ssl_hf.wsi.tissue import TissueMask

# The tiling and the tissue mask (torch) are imported where they are used: import-h5 reads coordinates with
# this module and stays light.

COORDS_SUFFIXES = ("_patches.h5", ".h5")  # TRIDENT names its files <slide>_patches.h5, CLAM <slide>.h5
GEOJSON_SUFFIXES = (".geojson", ".json")


@dataclass
class PatchCoords:
    """Patch coordinates read from a TRIDENT / CLAM ``.h5`` file."""

    coords: np.ndarray  # (n, 2) int64 level-0 (x, y) of the top-left corners
    patch_size_level0: int
    layout: str  # "trident" or "clam"


def _scalar(value) -> float:
    return float(np.asarray(value).ravel()[0])


def level0_corners(coords, path: Path) -> np.ndarray:
    """A ``coords`` dataset as ``(n, 2)`` int64 level-0 (x, y) corners; any other shape raises (reshaping a
    ``(n, 3)`` array would make wrong tiles), except the bare empty array of a slide without tiles."""
    coords = np.asarray(coords)
    if coords.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"{path}: coords must be (n, 2) level-0 (x, y) corners, got shape {coords.shape}")
    return coords.astype(np.int64)


def _checked(patches: PatchCoords, path: Path) -> PatchCoords:
    if patches.patch_size_level0 < 1:
        raise ValueError(
            f"{path}: the tile side must be a positive number of level-0 px, got {patches.patch_size_level0}"
        )
    return patches


def check_coords_fit(patches: PatchCoords, slide: Slide, path: Path) -> None:
    """Raise unless every tile starts inside the slide: a tile at negative coordinates or wholly outside
    would be read as blank glass and encoded as tissue (coordinates of another slide, or not level-0 px)."""
    width0, height0 = slide.dimensions
    coords = patches.coords
    negative = (coords < 0).any(axis=1)
    outside = (coords[:, 0] >= width0) | (coords[:, 1] >= height0)
    for wrong, what in ((negative, "at negative coordinates"), (outside, "wholly outside the slide")):
        if wrong.any():
            x, y = coords[np.argmax(wrong)]
            raise ValueError(
                f"{path}: {int(wrong.sum())} of {len(coords)} tiles lie {what} ({width0} x {height0} level-0 "
                f"px), e.g. ({x}, {y}); are they the coordinates of this slide, in level-0 px?"
            )


def read_patch_coords(path: str | Path, level_downsamples: tuple[float, ...] | None = None) -> PatchCoords:
    """Coordinates and level-0 tile side of a TRIDENT / CLAM patch-coordinate (or patch-feature) h5 file."""
    path = Path(path)
    with h5py.File(path, "r") as handle:
        if "coords" not in handle:
            raise ValueError(f"{path}: no 'coords' dataset (found {sorted(handle.keys())})")
        coords = level0_corners(handle["coords"][()], path)
        attrs = {**dict(handle.attrs), **dict(handle["coords"].attrs)}
    if "patch_size_level0" in attrs:
        return _checked(PatchCoords(coords, int(round(_scalar(attrs["patch_size_level0"]))), "trident"), path)
    if "patch_size" in attrs and "patch_level" in attrs:
        level = int(_scalar(attrs["patch_level"]))
        if "downsample" in attrs:
            downsample = _scalar(attrs["downsample"])
        elif level_downsamples is not None and level < len(level_downsamples):
            downsample = level_downsamples[level]
        else:
            raise ValueError(f"{path}: patch_level {level} is not a level of the slide")
        return _checked(
            PatchCoords(coords, int(round(_scalar(attrs["patch_size"]) * downsample)), "clam"), path
        )
    raise ValueError(
        f"{path}: the coords dataset has neither 'patch_size_level0' (TRIDENT) nor 'patch_size' + "
        f"'patch_level' (CLAM) attributes; found {sorted(attrs)}"
    )


def find_slide_file(folder: str | Path, slide_id: str, suffixes: tuple[str, ...], what: str) -> Path:
    """``folder/<slide_id><suffix>`` (or in its ``patches/`` sub-folder), else a FileNotFoundError."""
    folder = Path(folder)
    for directory in (folder, folder / "patches"):
        for suffix in suffixes:
            candidate = directory / f"{slide_id}{suffix}"
            if candidate.is_file():
                return candidate
    names = ", ".join(f"{slide_id}{suffix}" for suffix in suffixes)
    raise FileNotFoundError(f"no {what} for slide {slide_id!r} in {folder} (looked for {names})")


def grid_from_coords(slide: Slide, patches: PatchCoords, tile_size: int) -> TileGrid:
    """A :class:`TileGrid` of exactly the given tiles (row-major order, for block reading)."""
    from giga_ssl_hf.wsi.tiling import TileGrid

    coords = patches.coords[np.lexsort((patches.coords[:, 0], patches.coords[:, 1]))]
    level = slide.best_level(patches.patch_size_level0 / tile_size)
    read_size = max(1, int(round(patches.patch_size_level0 / slide.level_downsamples[level])))
    return TileGrid(
        coords=coords,
        tissue=np.ones(len(coords), dtype=np.float32),
        patch_size_level0=patches.patch_size_level0,
        tile_size=tile_size,
        level=level,
        read_size=read_size,
        n_candidates=len(coords),
        reason=None,  # no coordinates: a slide without tissue ("empty"), as the mask would say
    )


def _polygons(geometry: dict) -> list[list[list[tuple[float, float]]]]:
    """Rings (exterior first, then holes) of every polygon in a GeoJSON geometry."""
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry["coordinates"])
    if kind == "GeometryCollection":
        return [polygon for part in geometry.get("geometries", []) for polygon in _polygons(part)]
    return []  # points and lines have no area


def read_tissue_geojson(path: str | Path) -> list[list[list[tuple[float, float]]]]:
    """Polygons (each a list of rings, exterior first) of a GeoJSON file in level-0 px."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable GeoJSON file ({error})") from error
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, list):
        features = data
    else:
        features = [data]
    polygons = []
    for feature in features:
        geometry = feature.get("geometry", feature) if isinstance(feature, dict) else None
        if isinstance(geometry, dict):
            polygons.extend(_polygons(geometry))
    if not polygons:
        raise ValueError(f"{path}: no Polygon or MultiPolygon geometry")
    return polygons


def check_polygons_overlap(polygons, slide: Slide, path: Path) -> None:
    """Raise when no polygon reaches into the slide: the slide would be called empty with no word of why."""
    width0, height0 = slide.dimensions
    bounds = [
        (*exterior.min(axis=0), *exterior.max(axis=0))  # left, top, right, bottom
        for exterior in (
            np.array([point[:2] for point in rings[0]], np.float64) for rings in polygons if rings
        )
        if len(exterior)
    ]
    if any(
        right > 0 and bottom > 0 and left < width0 and top < height0 for left, top, right, bottom in bounds
    ):
        return
    left, top = (min(b[i] for b in bounds) for i in (0, 1)) if bounds else (0.0, 0.0)
    right, bottom = (max(b[i] for b in bounds) for i in (2, 3)) if bounds else (0.0, 0.0)
    raise ValueError(
        f"{path}: the polygons lie wholly outside the slide (they span x {left:g}..{right:g}, y "
        f"{top:g}..{bottom:g}; the slide is {width0} x {height0} level-0 px): are they this slide's, in level-0 px?"
    )


def polygon_mask(slide: Slide, polygons, mask_mpp: float = 8.0, max_size: int = 8192) -> TissueMask:
    """Rasterise level-0 polygons into a :class:`TissueMask` at about ``mask_mpp`` µm per mask pixel."""
    from giga_ssl_hf.wsi.tissue import TissueMask

    width0, height0 = slide.dimensions
    downsample = max(mask_mpp / slide.mpp, max(width0, height0) / max_size, 1.0)
    size = (max(1, round(width0 / downsample)), max(1, round(height0 / downsample)))
    image = Image.new("1", size, 0)
    draw = ImageDraw.Draw(image)
    for rings in polygons:
        for index, ring in enumerate(rings):
            points = [(x / downsample, y / downsample) for x, y, *_ in ring]
            if len(points) >= 3:
                draw.polygon(points, fill=1 if index == 0 else 0)  # later rings are holes
    return TissueMask(
        mask=np.asarray(image, dtype=bool), downsample=float(downsample), threshold=float("nan")
    )


def select_tiles(
    slide: Slide,
    slide_id: str,
    *,
    tile_size: int,
    target_mpp: float,
    min_tissue: float,
    mask_mpp: float,
    saturation_threshold: float | None,
    min_saturation: float,
    coords_from: str | Path | None = None,
    tissue_geojson: str | Path | None = None,
) -> tuple[TissueMask | None, TileGrid, dict]:
    """The tissue mask (None with ``coords_from``), the tile grid and a record of where tiles came from."""
    from giga_ssl_hf.wsi.tiling import tile_grid
    from giga_ssl_hf.wsi.tissue import tissue_mask

    if coords_from is not None:
        path = find_slide_file(coords_from, slide_id, COORDS_SUFFIXES, "patch-coordinate h5")
        patches = read_patch_coords(path, slide.level_downsamples)
        check_coords_fit(patches, slide, path)
        source = {"tiles_from": f"{patches.layout} coords", "coords_file": path.name}
        return None, grid_from_coords(slide, patches, tile_size), source
    if tissue_geojson is not None:
        path = find_slide_file(tissue_geojson, slide_id, GEOJSON_SUFFIXES, "tissue GeoJSON")
        polygons = read_tissue_geojson(path)
        check_polygons_overlap(polygons, slide, path)
        mask = polygon_mask(slide, polygons, mask_mpp)
        source = {"tiles_from": "GeoJSON tissue polygons", "geojson_file": path.name}
    else:
        mask = tissue_mask(
            slide, mask_mpp=mask_mpp, saturation_threshold=saturation_threshold, min_saturation=min_saturation
        )
        source = {"tiles_from": "tissue mask"}
    grid = tile_grid(slide, tile_size=tile_size, target_mpp=target_mpp, mask=mask, min_tissue=min_tissue)
    return mask, grid, source
