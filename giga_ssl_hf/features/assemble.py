"""An extraction folder's outputs from its committed slides: ``manifest.jsonl`` and the tile-feature Datasets
(``exhaustive/``, ``augmented/``) with their metadata (settings, tile-encoder record, augmentation recipe)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import giga_ssl_hf
from giga_ssl_hf.contracts.extraction_folder import (
    AUGMENTED,
    CONFIG_FILENAME,
    ENCODER_FILENAME,
    EXHAUSTIVE,
    LOCKS_DIRNAME,
    MANIFEST_FILENAME,
    PARTS_DIRNAME,
)
from giga_ssl_hf.features import sharding
from giga_ssl_hf.features.extraction_settings import BOTH_PASSES, ExtractionConfig
from giga_ssl_hf.files import write_jsonl

if TYPE_CHECKING:
    from giga_ssl_hf.features.encoders import EncoderRunner
    from giga_ssl_hf.features.store import PartStore


def assemble_datasets(
    out_dir: str | Path,
    config: ExtractionConfig | None = None,
    passes: Sequence[str] | None = None,
    runner: EncoderRunner | None = None,
) -> dict[str, Path]:
    """(Re)build the manifest and the Datasets of ``out_dir`` from every committed slide.

    ``config`` defaults to the folder's settings file, ``passes`` to every pass some slide has. One process
    assembles at a time (a lock in ``out_dir/locks``).
    """
    from giga_ssl_hf.features.store import PartStore

    out_dir = Path(out_dir)
    if config is None:
        config_path = out_dir / CONFIG_FILENAME
        if not config_path.is_file():
            raise ValueError(f"{out_dir} is not an extraction folder (no {CONFIG_FILENAME})")
        config = ExtractionConfig(**json.loads(config_path.read_text()))
    store = PartStore(out_dir / PARTS_DIRNAME)
    with sharding.SlideLocks(out_dir / LOCKS_DIRNAME) as locks, locks.hold(".assemble"):
        records = store.records()  # read once: the manifest and the Datasets are built from the same records
        if passes is None:
            present = {p for r in records if r["status"] == "ok" for p in r.get("passes", [])}
            passes = [p for p in BOTH_PASSES if p in present]
        with store.disk_full_names("the manifest and Datasets of " + str(out_dir)):
            write_manifest(records, out_dir)
            return _write_datasets(store, records, out_dir, config, passes, runner)


def write_manifest(records: list[dict], out_dir: Path) -> None:
    """``out_dir/manifest.jsonl``: one line per committed slide (``records``, in order), its main fields first."""
    keys = ("slide_id", "path", "status", "n_tiles", "seconds", "error")
    lines = (
        {**{k: r.get(k) for k in keys}, **{k: v for k, v in r.items() if k not in keys}} for r in records
    )
    write_jsonl(out_dir / MANIFEST_FILENAME, lines)


def _write_datasets(
    store: PartStore,
    records: list[dict],
    out_dir: Path,
    config: ExtractionConfig,
    passes,
    runner: EncoderRunner | None,
) -> dict[str, Path]:
    from giga_ssl_hf.contracts import read_metadata
    from giga_ssl_hf.features.store import write_tile_dataset

    ok_records = [r for r in records if r["status"] == "ok"]
    feature_dim = runner.feature_dim if runner is not None else _feature_dim(store, ok_records)
    if feature_dim is None:
        return {}
    encoder_record = extraction_encoder_record(config, runner, out_dir)
    written = {}
    for which in passes:
        usable = [r for r in ok_records if which in r.get("passes", [])]
        # Nothing encoded by any process: the encoder record of the datasets written before stands.
        record = encoder_record or read_metadata(out_dir / which).get("tile_encoder")
        metadata = _metadata(config, which, feature_dim, record)
        written[which] = write_tile_dataset(
            _dataset_rows(store, usable, which), out_dir / which, feature_dim, config.dtype, metadata
        )
    return written


def _dataset_rows(store: PartStore, records: list[dict], which: str) -> Iterator[dict]:
    for record in records:
        # A generator per slide: it ends, releasing the slide's arrays, before the next slide is read.
        yield from _slide_rows(store, record, which)


def _slide_rows(store: PartStore, record: dict, which: str) -> Iterator[dict]:
    from giga_ssl_hf.contracts import NO_AUGMENTATION

    arrays = store.arrays(record["slide_id"])
    common = {
        "slide_id": record["slide_id"],
        "patch_size_level0": record["patch_size_level0"],
        "mpp": record["mpp"],
        "magnification": float("nan") if record["magnification"] is None else record["magnification"],
    }
    if which == EXHAUSTIVE:
        yield {
            **common,
            "aug_id": NO_AUGMENTATION,
            "features": arrays["exhaustive_features"],
            "coords": arrays["exhaustive_coords"],
        }
    else:
        for aug_id, (features, coords) in enumerate(
            zip(arrays["augmented_features"], arrays["augmented_coords"])
        ):
            yield {**common, "aug_id": aug_id, "features": features, "coords": coords}


def extraction_encoder_record(
    config: ExtractionConfig, runner: EncoderRunner | None, out_dir: Path
) -> dict | None:
    """The provenance record of an extraction's tile encoder: of ``runner``, else as saved in ``out_dir`` by a
    process that built it."""
    from giga_ssl_hf.contracts.tile_features import tile_encoder_record

    if runner is not None:
        return tile_encoder_record(runner.encoder, config.tile_size, config.target_mpp)
    path = out_dir / ENCODER_FILENAME
    return json.loads(path.read_text()) if path.is_file() else None


def _feature_dim(store: PartStore, ok_records: list[dict]) -> int | None:
    """D from a committed slide when this run encoded nothing (every slide was skipped)."""
    for record in ok_records:
        arrays = store.arrays(record["slide_id"])
        for key in ("exhaustive_features", "augmented_features"):
            if key in arrays:
                return int(arrays[key].shape[-1])
    return None


def _metadata(config: ExtractionConfig, which: str, feature_dim: int, encoder_record: dict | None) -> dict:
    from giga_ssl_hf.features.augment import RECIPE

    metadata = {
        "source": "giga-ssl extract",
        "pass": which,
        "encoder": config.encoder,
        "tile_encoder": encoder_record,
        "coords_from": config.coords_from,
        "tissue_geojson": config.tissue_geojson,
        "pretrained": config.pretrained,
        "weights": config.weights,
        "feature_dim": feature_dim,
        "dtype": config.dtype,
        "precision": config.precision,
        "tile_size": config.tile_size,
        "target_mpp": config.target_mpp,
        "min_tissue": config.min_tissue,
        "tissue_mask": {
            "mask_mpp": config.mask_mpp,
            "saturation_threshold": config.saturation_threshold,
            "min_saturation": config.min_saturation,
        },
        "coords": "level-0 (x, y) of the top-left corner; grid index = coords // patch_size_level0",
        "package_version": giga_ssl_hf.__version__,
    }
    if which == AUGMENTED:
        metadata.update(
            augmentation=RECIPE,
            n_aug=config.n_aug,
            n_tiles_per_aug=config.n_tiles_per_aug,
            seed=config.seed,
            tile_sampling=config.tile_sampling,
        )
    else:
        metadata["augmentation"] = None
    return metadata
