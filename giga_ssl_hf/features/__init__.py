"""Tile features: encoders (``encoders``), shared augmentations (``augment``), extraction from slides
(``extract``: :func:`~giga_ssl_hf.features.extract.extract_slides`, ``giga-ssl extract``) and TRIDENT / CLAM h5
import and export (``h5_import``, ``h5_export``). The Dataset they produce is specified in
:mod:`giga_ssl_hf.contracts.tile_features`.

Submodules are not imported here, so that reading one does not load timm or OpenSlide.
"""
