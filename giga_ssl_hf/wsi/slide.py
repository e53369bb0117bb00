"""Opening whole-slide images with OpenSlide and resolving their resolution (µm per level-0 pixel)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide

logger = logging.getLogger(__name__)

SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
)


class MissingResolutionError(ValueError):
    """The slide metadata has neither a pixel size nor an objective power, and none was given."""


@dataclass
class Slide:
    """An open slide with its resolved level-0 resolution.

    ``mpp`` is µm per level-0 pixel; ``magnification`` the objective power (NaN when the slide does not
    record it); ``mpp_source`` says where ``mpp`` came from (``metadata``, ``objective`` or ``user``).
    """

    path: Path
    handle: openslide.AbstractSlide
    mpp: float
    magnification: float
    mpp_source: str

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.handle.dimensions

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self.handle.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.handle.level_downsamples

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (so reads never upsample)."""
        candidates = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.001]
        return max(candidates, key=lambda i: self.level_downsamples[i]) if candidates else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of a region; ``location`` in level-0 px, ``size`` in ``level`` px.

        Transparent pixels (outside the scanned area, e.g. MIRAX gaps) become white, like glass.
        """
        rgba = np.asarray(self.handle.read_region(location, level, size))
        rgb = rgba[..., :3]
        alpha = rgba[..., 3]
        if alpha.min() < 255:
            # OpenSlide returns un-premultiplied RGBA; composite over white.
            a = alpha[..., None].astype(np.float32) / 255.0
            rgb = (rgb.astype(np.float32) * a + 255.0 * (1.0 - a)).round().astype(np.uint8)
        return np.ascontiguousarray(rgb)

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _float_property(properties, key: str) -> float | None:
    try:
        value = float(properties[key])
    except (KeyError, ValueError, TypeError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def open_slide(path: str | Path, mpp: float | None = None, *, override_mpp: bool = False) -> Slide:
    """Open a slide (svs, ndpi, mrxs, scn, generic tiled TIFF, ...; plain images through Pillow).

    Resolution (µm per level-0 px), in order: ``mpp`` when ``override_mpp``; ``openslide.mpp-x``;
    ``mpp`` (the fallback for slides without a pixel size); ``10 / openslide.objective-power`` (the usual
    10x <-> 1 µm/px convention); otherwise :class:`MissingResolutionError`, which names ``--mpp``.
    Opening errors of OpenSlide / Pillow propagate unchanged.
    """
    path = Path(path)
    if mpp is not None and mpp <= 0:
        raise ValueError(f"--mpp must be positive, got {mpp}")
    if override_mpp and mpp is None:
        raise ValueError("override_mpp needs mpp")
    handle = openslide.open_slide(str(path))
    try:
        properties = handle.properties
        magnification = _float_property(properties, openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        metadata_mpp = _float_property(properties, openslide.PROPERTY_NAME_MPP_X)
        if mpp is not None and (override_mpp or metadata_mpp is None):
            resolved, source = float(mpp), "user"
        elif metadata_mpp is not None:
            resolved, source = metadata_mpp, "metadata"
            mpp_y = _float_property(properties, openslide.PROPERTY_NAME_MPP_Y)
            if mpp_y is not None and abs(mpp_y - metadata_mpp) > 0.01 * metadata_mpp:
                logger.warning(
                    "%s: non-square pixels (%.4g x %.4g µm); using mpp-x", path.name, metadata_mpp, mpp_y
                )
        elif magnification is not None:
            resolved, source = 10.0 / magnification, "objective"
            logger.warning(
                "%s: no pixel size in the metadata; assuming %.4g µm/px from the %gx objective",
                path.name,
                resolved,
                magnification,
            )
        else:
            raise MissingResolutionError(
                f"{path.name}: the slide records neither its pixel size (openslide.mpp-x) nor its objective "
                "power; pass --mpp with the level-0 µm per pixel (e.g. --mpp 0.25 for a 40x scan, 0.5 for 20x)"
            )
    except BaseException:
        handle.close()
        raise
    return Slide(
        path=path,
        handle=handle,
        mpp=resolved,
        magnification=magnification if magnification is not None else float("nan"),
        mpp_source=source,
    )


def find_slides(
    inputs: list[str | Path], skipped: list[Path] | None = None, *, recursive: bool = False
) -> list[Path]:
    """Slide files among ``inputs``: files are kept as given, folders are listed (their whole tree when
    ``recursive``), in sorted order.

    Files of a folder whose extension is not a slide format are left out, and appended to ``skipped`` when
    it is given, so that callers can name them.
    """
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            listing = item.rglob("*") if recursive else item.iterdir()
            for path in sorted(p for p in listing if p.is_file()):
                if path.suffix.lower() in SLIDE_EXTENSIONS:
                    found.append(path)
                elif skipped is not None:
                    skipped.append(path)
        elif item.exists():
            found.append(item)
        else:
            raise FileNotFoundError(f"no such slide or folder: {item}")
    return found
