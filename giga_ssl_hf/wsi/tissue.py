"""Tissue detection on a low-resolution rendering of the slide: Otsu on saturation, then morphology."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from giga_ssl_hf.wsi.slide import Slide

_STRIP_PIXELS = 16_000_000  # level pixels read per call when rendering a downsampled image


def read_downsampled(slide: Slide, downsample: float) -> np.ndarray:
    """RGB uint8 image of the whole slide at ``downsample`` (level-0 px per output px).

    Reads the best pyramid level in horizontal strips, resizing each, so that memory stays bounded even
    on single-level slides of 100k px (where ``get_thumbnail`` would decode the whole level at once).
    """
    width0, height0 = slide.dimensions
    out_width = max(1, round(width0 / downsample))
    out_height = max(1, round(height0 / downsample))
    level = slide.best_level(downsample)
    level_width, level_height = slide.level_dimensions[level]
    level_downsample = slide.level_downsamples[level]
    scale = level_downsample / downsample  # output px per level px
    # Strip height in output rows; each strip is read at the level and resized on its own.
    rows_per_strip = max(1, int(_STRIP_PIXELS / max(1, level_width) * scale))
    out = np.empty((out_height, out_width, 3), dtype=np.uint8)
    for top in range(0, out_height, rows_per_strip):
        bottom = min(out_height, top + rows_per_strip)
        level_top = int(round(top / scale))
        level_bottom = min(level_height, max(level_top + 1, int(round(bottom / scale))))
        region = slide.read_region(
            (0, int(round(level_top * level_downsample))), level, (level_width, level_bottom - level_top)
        )
        resized = Image.fromarray(region).resize((out_width, bottom - top), Image.Resampling.BILINEAR)
        out[top:bottom] = np.asarray(resized)
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centers)
    mean_low = sum_low / np.maximum(weight_low, 1e-12)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return -F.max_pool2d(-mask, 2 * radius + 1, stride=1, padding=radius)


@dataclass
class TissueMask:
    """Boolean tissue mask; pixel (i, j) covers level-0 x in [j * downsample, (j + 1) * downsample)."""

    mask: np.ndarray  # (h, w) bool
    downsample: float  # level-0 px per mask px
    threshold: float  # saturation threshold that was applied

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def tissue_mask(
    slide: Slide,
    *,
    mask_mpp: float = 8.0,
    max_size: int = 8192,
    saturation_threshold: float | None = None,
    min_saturation: float = 0.05,
    closing_um: float = 32.0,
    opening_um: float = 32.0,
    image: np.ndarray | None = None,
) -> TissueMask:
    """Tissue mask of ``slide`` at about ``mask_mpp`` µm per mask pixel.

    Saturation (HSV) separates stained tissue from white glass: threshold ``saturation_threshold`` when
    given, else Otsu's, never below ``min_saturation`` (so a blank slide is not split into two classes of
    noise). A closing then an opening of about ``closing_um`` / ``opening_um`` fill small holes and drop
    specks. ``image`` may pass an RGB rendering already read at the mask resolution.
    """
    width0, height0 = slide.dimensions
    downsample = max(mask_mpp / slide.mpp, max(width0, height0) / max_size, 1.0)
    if image is None:
        image = read_downsampled(slide, downsample)
    rgb = image.astype(np.float32) / 255.0
    high = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    threshold = saturation_threshold if saturation_threshold is not None else otsu_threshold(saturation)
    threshold = max(threshold, min_saturation)
    mask = torch.from_numpy(saturation > threshold).float()[None, None]
    mask_um = downsample * slide.mpp
    closing = int(round(closing_um / mask_um / 2))
    opening = int(round(opening_um / mask_um / 2))
    if closing > 0:
        mask = _erode(_dilate(mask, closing), closing)
    if opening > 0:
        mask = _dilate(_erode(mask, opening), opening)
    return TissueMask(mask=mask[0, 0].numpy() > 0.5, downsample=float(downsample), threshold=float(threshold))
