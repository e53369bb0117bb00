"""Tile scores as a GeoJSON FeatureCollection that QuPath imports as detection objects (``heatmap --geojson``).

One Feature per tile: a square Polygon in level-0 pixel coordinates (the tile's corners, closed ring,
counter-clockwise as RFC 7946 asks, with x right and y down as in the slide), and the properties QuPath reads
(0.4 and later): ``objectType: "detection"``, ``measurements: {"score": value}``, a ``classification``
(``name`` "for CLASS" / "against CLASS" by the score's sign, "unscored" for NaN; ``color`` ``[r, g, b]``), and the tile's own colour
on the heatmap's diverging colour map (``color``, symmetric around 0 like the PNG). The FeatureCollection's
extra members (RFC 7946 allows them) name the class, method, colour map and its limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from giga_ssl_hf.files import write_json
from giga_ssl_hf.inference.heatmap_plot import COLOUR_MAP

SCORE_MEASUREMENT = "score"
FOR_COLOUR, AGAINST_COLOUR = [178, 24, 43], [33, 102, 172]  # the two ends of RdBu_r


def tile_square(x: int, y: int, side: int) -> list[list[int]]:
    """The closed, counter-clockwise ring of a tile's square from its level-0 top-left corner."""
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def _colours(scores: np.ndarray, limit: float) -> np.ndarray:
    """`(n, 3)` int RGB of each score on the diverging colour map, ``[-limit, limit]`` (grey for NaN)."""
    from matplotlib import colormaps

    rgba = colormaps[COLOUR_MAP](np.clip(np.nan_to_num(scores) / limit, -1, 1) / 2 + 0.5)
    rgb = np.round(rgba[:, :3] * 255).astype(int)
    rgb[~np.isfinite(scores)] = 128
    return rgb


def tile_scores_geojson(
    coords: np.ndarray, scores: np.ndarray, patch_size_level0: int, class_name: str, method: str
) -> dict:
    """The FeatureCollection of one slide's tiles (``coords`` `(n, 2)` level-0 top-left corners)."""
    finite = np.abs(scores[np.isfinite(scores)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    colours = _colours(np.asarray(scores, dtype=np.float64), limit)
    features = []
    for (x, y), score, colour in zip(
        np.asarray(coords).tolist(), np.asarray(scores).tolist(), colours.tolist()
    ):
        side = "for" if score >= 0 else "against" if score < 0 else "unscored"
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [tile_square(x, y, int(patch_size_level0))]},
                "properties": {
                    "objectType": "detection",
                    "classification": {
                        "name": side if side == "unscored" else f"{side} {class_name}",
                        "color": {"for": FOR_COLOUR, "against": AGAINST_COLOUR}.get(side, [128, 128, 128]),
                    },
                    "color": colour,
                    "measurements": {SCORE_MEASUREMENT: score},  # NaN (occlusion of a lone tile) -> null
                },
            }
        )
    return {
        "type": "FeatureCollection",
        "features": features,
        "class": class_name,
        "method": method,
        "colour_map": {"name": COLOUR_MAP, "vmin": -limit, "vmax": limit},
    }


def write_tile_scores_geojson(path: Path, *args, **kwargs) -> Path:
    """Write :func:`tile_scores_geojson` to ``path`` atomically, as strict JSON."""
    write_json(path, tile_scores_geojson(*args, **kwargs), indent=None, sort_keys=False)
    return path
