"""Tile features: encoders (``encoders``), shared augmentations (``augment``), extraction from slides
(``extract``: :func:`~giga_ssl_hf.features.extract.extract_slides`, ``giga-ssl extract``), TRIDENT / CLAM h5
import (``h5_import``), and the Dataset contract (``schema``).

Submodules are not imported here, so that reading the schema does not load timm or OpenSlide.
"""
