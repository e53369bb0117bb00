"""The layout of an extraction folder (``giga-ssl extract --out OUT``), which train, embed, heatmap, export-h5
and the pipeline read. Names only, so that any reader stays light::

    OUT/extract_config.json   the settings the features were made with (a rerun must match them)
    OUT/tile_encoder.json     the tile encoder's provenance record
    OUT/manifest.jsonl        one record per slide (status, counts, errors)
    OUT/exhaustive/           tile-feature Dataset of the exhaustive pass (one row per slide)
    OUT/augmented/            tile-feature Dataset of the shared-augmentation pass (one row per slide and view)
    OUT/thumbnails/           <slide_id>.png with --thumbnails
    OUT/parts/, OUT/locks/, OUT/shares/   work in progress: committed slides, locks, finished shares
"""

# The two passes; each one's tile-feature Dataset is the folder of its name.
EXHAUSTIVE, AUGMENTED = "exhaustive", "augmented"
CONFIG_FILENAME = "extract_config.json"
# Saved by every process that builds the encoder, so that whichever process assembles the Datasets (the last
# share, --assemble) records it even without building it.
ENCODER_FILENAME = "tile_encoder.json"
MANIFEST_FILENAME = "manifest.jsonl"
THUMBNAILS_DIRNAME = "thumbnails"
PARTS_DIRNAME = "parts"
LOCKS_DIRNAME = "locks"
SHARES_DIRNAME = "shares"
