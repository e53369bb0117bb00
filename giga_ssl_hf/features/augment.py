"""Shared augmentations of the original Giga-SSL (there: kornia with ``same_on_batch=True``), in torch.

One set of parameters is drawn per view and applied identically to every tile of the view. Every op is
per-image with shared parameters, so applying a view's augmentation to its tiles in several chunks gives
the same images as applying it to the whole view at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF

RECIPE = {
    "random_resized_crop": {"scale": [0.5, 1.0], "ratio": [3 / 4, 4 / 3]},
    "color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.2, "p": 0.8},
    "random_grayscale": {"p": 0.2},
    "gaussian_blur": {"kernel_size": 5, "sigma": [0.1, 1.0], "p": 0.5},
    "same_on_batch": True,
}


@dataclass(frozen=True)
class AugmentationParams:
    """The random draws of one view's augmentation (crop box in px of a ``tile_size`` tile)."""

    crop: tuple[int, int, int, int]  # top, left, height, width
    jitter: bool
    jitter_order: tuple[int, ...]  # order of brightness (0), contrast (1), saturation (2), hue (3)
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale: bool
    blur_sigma: float | None


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _crop_box(size: int, generator: torch.Generator, scale, ratio) -> tuple[int, int, int, int]:
    # torchvision's RandomResizedCrop.get_params, with an explicit generator.
    area = size * size
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        width = int(round(math.sqrt(target_area * aspect)))
        height = int(round(math.sqrt(target_area / aspect)))
        if 0 < width <= size and 0 < height <= size:
            top = int(torch.randint(0, size - height + 1, (), generator=generator))
            left = int(torch.randint(0, size - width + 1, (), generator=generator))
            return top, left, height, width
    return 0, 0, size, size


class SharedAugmentation:
    """Draw (:meth:`sample`) and apply (:meth:`apply`) the Giga-SSL shared augmentation on ``tile_size`` tiles."""

    def __init__(self, tile_size: int, recipe: dict = RECIPE):
        self.tile_size = tile_size
        self.recipe = recipe

    def sample(self, generator: torch.Generator) -> AugmentationParams:
        crop_cfg, jitter_cfg = self.recipe["random_resized_crop"], self.recipe["color_jitter"]
        crop = _crop_box(self.tile_size, generator, crop_cfg["scale"], crop_cfg["ratio"])
        jitter = float(torch.rand((), generator=generator)) < jitter_cfg["p"]
        order = tuple(int(i) for i in torch.randperm(4, generator=generator))
        b, c, s, h = (jitter_cfg[k] for k in ("brightness", "contrast", "saturation", "hue"))
        brightness = _uniform(generator, 1 - b, 1 + b)
        contrast = _uniform(generator, 1 - c, 1 + c)
        saturation = _uniform(generator, 1 - s, 1 + s)
        hue = _uniform(generator, -h, h)
        grayscale = float(torch.rand((), generator=generator)) < self.recipe["random_grayscale"]["p"]
        blur_cfg = self.recipe["gaussian_blur"]
        blur = float(torch.rand((), generator=generator)) < blur_cfg["p"]
        sigma = _uniform(generator, *blur_cfg["sigma"])
        return AugmentationParams(
            crop=crop,
            jitter=jitter,
            jitter_order=order,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            grayscale=grayscale,
            blur_sigma=sigma if blur else None,
        )

    def apply(self, images: torch.Tensor, params: AugmentationParams) -> torch.Tensor:
        """Augment float images ``(B, 3, tile_size, tile_size)`` in [0, 1] (or uint8) with ``params``."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        top, left, height, width = params.crop
        images = TF.resized_crop(
            images, top, left, height, width, [self.tile_size, self.tile_size], antialias=True
        )
        if params.jitter:
            ops = (
                lambda x: TF.adjust_brightness(x, params.brightness),
                lambda x: TF.adjust_contrast(x, params.contrast),
                lambda x: TF.adjust_saturation(x, params.saturation),
                lambda x: TF.adjust_hue(x, params.hue),
            )
            for index in params.jitter_order:
                images = ops[index](images)
        if params.grayscale:
            images = TF.rgb_to_grayscale(images, num_output_channels=3)
        if params.blur_sigma is not None:
            kernel = self.recipe["gaussian_blur"]["kernel_size"]
            images = TF.gaussian_blur(images, [kernel, kernel], [params.blur_sigma, params.blur_sigma])
        return images.clamp(0.0, 1.0)
