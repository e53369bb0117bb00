"""Tile features: encoders (``encoders``, ``encoder_presets``, ``runner``), shared augmentations (``augment``),
extraction from slides (settings ``extraction_settings``; one slide ``slide_encoding``; the resumable run
:func:`~giga_ssl_hf.features.extraction.extract_slides`; the Datasets ``assemble``; ``giga-ssl extract`` in
``extract``) and TRIDENT / CLAM h5 import and export (``h5_import``, ``h5_export``). The Dataset they produce is specified in
:mod:`giga_ssl_hf.contracts.tile_features`.

Submodules are not imported here, so that reading one does not load timm or OpenSlide.
"""
