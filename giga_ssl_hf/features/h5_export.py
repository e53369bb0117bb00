"""`giga-ssl export-h5`: a tile-feature Dataset (exhaustive pass) -> one TRIDENT or CLAM patch-feature h5 per slide.

Both layouts hold a ``features`` dataset ``(n, D)`` float32 and a ``coords`` dataset ``(n, 2)`` int64 of level-0
(x, y) top-left corners, chunked one row at a time and resizable along the first axis as TRIDENT's
``save_h5`` writes them. The attributes on ``coords`` are those each tool reads:

- ``trident``: ``patch_size`` (px at the target magnification), ``patch_size_level0``,
  ``level0_magnification``, ``target_magnification``, ``overlap`` (0), ``name``, ``savetodir``; on
  ``features``: ``name``, ``savetodir``, ``encoder``.
- ``clam``: ``patch_level`` (0), ``patch_size`` (= the level-0 side, since the level is 0), ``downsample``
  ``(1, 1)``, ``name``, ``save_path``.

Both also carry ``level0_mpp`` (µm per level-0 px) and, on the file, ``giga_ssl_tile_encoder`` (the JSON
encoder record), which the other tools ignore and ``giga-ssl import-h5`` reads back, so that exporting then
importing gives the same Dataset. A magnification this package does not know (NaN) is written as
``10 / mpp`` with ``level0_magnification_estimated`` set, since TRIDENT needs a number.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from giga_ssl_hf.files import atomic_path
from giga_ssl_hf.settings import SettingsParser, option, run_main

if TYPE_CHECKING:
    import h5py

# h5py and datasets are imported where used, so that `giga-ssl export-h5 --help` prints at once.

LAYOUTS = ("trident", "clam")
ENCODER_ATTRIBUTE = "giga_ssl_tile_encoder"


def _write_dataset(handle: h5py.File, name: str, values: np.ndarray, attrs: dict) -> None:
    # As TRIDENT's save_h5: one row per chunk, extendable along the first axis.
    dataset = handle.create_dataset(
        name, data=values, chunks=(1, *values.shape[1:]), maxshape=(None, *values.shape[1:])
    )
    dataset.attrs.update(attrs)


def write_slide_h5(
    path: Path,
    layout: str,
    slide_id: str,
    features: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    mpp: float,
    magnification: float,
    tile_size: int | None,
    tile_encoder: dict | None,
) -> None:
    """One slide's features ``(n, D)`` and level-0 coords ``(n, 2)`` as a TRIDENT or CLAM h5 file (atomically)."""
    import h5py

    estimated = math.isnan(magnification)
    level0_magnification = 10.0 / mpp if estimated and mpp > 0 else magnification
    common = {"level0_mpp": np.float32(mpp), "level0_magnification_estimated": bool(estimated)}
    if layout == "trident":
        patch_size = int(tile_size or patch_size_level0)
        coords_attrs = {
            "patch_size": patch_size,
            "patch_size_level0": int(patch_size_level0),
            "level0_magnification": float(level0_magnification),
            "target_magnification": float(level0_magnification) * patch_size / patch_size_level0,
            "overlap": 0,
            "name": slide_id,
            "savetodir": str(path.parent),
            **common,
        }
        encoder = (tile_encoder or {}).get("name")
        features_attrs = {"name": slide_id, "savetodir": str(path.parent), "encoder": str(encoder)}
    elif layout == "clam":
        coords_attrs = {
            "patch_level": 0,
            "patch_size": int(patch_size_level0),
            "downsample": np.array([1.0, 1.0]),
            "level0_magnification": float(level0_magnification),
            "name": slide_id,
            "save_path": str(path.parent),
            **common,
        }
        features_attrs = {}
    else:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        _write_dataset(handle, "features", np.asarray(features, dtype=np.float32), features_attrs)
        _write_dataset(handle, "coords", np.asarray(coords, dtype=np.int64).reshape(-1, 2), coords_attrs)
        if tile_encoder:
            handle.attrs[ENCODER_ATTRIBUTE] = json.dumps(tile_encoder, sort_keys=True)


def export_h5(
    features_dir: str | Path, out_dir: str | Path, layout: str, overwrite: bool = False
) -> list[Path]:
    """Write every slide of an exhaustive tile-feature Dataset as ``out_dir/<slide_id>.h5``; returns the files."""
    from giga_ssl_hf.contracts import NO_AUGMENTATION, read_metadata
    from giga_ssl_hf.contracts.extraction_folder import EXHAUSTIVE
    from giga_ssl_hf.contracts.tile_features import (
        TileArrays,
        load_tile_dataset,
        resolve_tile_dataset_dir,
        without_indices_mapping,
    )

    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {LAYOUTS}, not {layout!r}")
    features_dir = resolve_tile_dataset_dir(features_dir, EXHAUSTIVE)
    dataset = without_indices_mapping(load_tile_dataset(features_dir))
    if (np.asarray(dataset.data.column("aug_id").to_numpy()) != NO_AUGMENTATION).any():
        raise ValueError(
            f"{features_dir} holds augmented rows: export the exhaustive pass (giga-ssl extract's DIR/exhaustive)"
        )
    metadata = read_metadata(features_dir)
    tile_encoder = metadata.get("tile_encoder")
    tile_size = (tile_encoder or {}).get("input_size") or metadata.get("tile_size")
    columns = {
        name: dataset.data.column(name).to_pylist()
        for name in ("slide_id", "patch_size_level0", "mpp", "magnification")
    }
    out_dir = Path(out_dir)
    targets = [out_dir / f"{slide_id}.h5" for slide_id in columns["slide_id"]]
    existing = [path.name for path in targets if path.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{out_dir} already holds {len(existing)} of these files (e.g. {existing[0]}); pass --overwrite"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = TileArrays.from_dataset(dataset)
    for row, path in enumerate(targets):
        features, coords = arrays.row(row)
        mpp, magnification = columns["mpp"][row], columns["magnification"][row]
        write_slide_h5(
            path,
            layout,
            columns["slide_id"][row],
            features,
            coords,
            columns["patch_size_level0"][row],
            float("nan") if mpp is None else mpp,
            float("nan") if magnification is None else magnification,
            tile_size,
            tile_encoder,
        )
    return targets


@dataclass
class H5ExportSettings:
    """`giga-ssl export-h5`'s settings: :func:`export_h5`'s arguments."""

    features_dir: str = option(
        help="exhaustive tile-feature Dataset or extract folder", positional=True, metavar="FEATURES_DIR"
    )
    out_dir: Path = option(help="output folder of <slide_id>.h5 files", flag="--out", metavar="OUT")
    layout: str = option("trident", "h5 layout", choices=LAYOUTS)
    overwrite: bool = option(False, "replace h5 files already in --out")


def build_parser() -> SettingsParser:
    return SettingsParser(
        H5ExportSettings,
        prog="giga-ssl export-h5",
        description="Write the exhaustive tile features of a Dataset (or a giga-ssl extract folder) as one h5 file "
        "per slide in TRIDENT's or CLAM's patch-feature layout (features (n, D) float32, coords (n, 2) int64 "
        "level-0 top-left corners, and the attributes each tool reads), for TRIDENT / CLAM slide encoders and "
        "MIL code. giga-ssl import-h5 reads the files back into the same Dataset.",
        epilog="examples:\n"
        "  giga-ssl export-h5 feats/ --out trident_features/ --layout trident\n"
        "  giga-ssl export-h5 feats/exhaustive --out clam/h5_files --layout clam",
    )


def run(settings: H5ExportSettings) -> int:
    files = export_h5(**dataclasses.asdict(settings))
    print(f"wrote {len(files)} {settings.layout} h5 file(s) to {settings.out_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)
