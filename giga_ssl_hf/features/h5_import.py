"""`giga-ssl import-h5`: TRIDENT / CLAM patch-feature h5 files -> a tile-feature Dataset (exhaustive pass).

Both tools write one h5 per slide with a ``features`` dataset ``(n, D)`` (sometimes ``(1, n, D)``) and a
``coords`` dataset ``(n, 2)`` of level-0 (x, y) top-left corners. The tile side in level-0 px comes from,
in order: ``--patch-size-level0``; the attribute ``patch_size_level0`` (TRIDENT); ``patch_size`` x the
downsample of ``patch_level`` (CLAM), the downsample taken from the ``downsample`` attribute, from
``patch_level == 0``, or from the slide in ``--slides-dir``. Attributes are looked up on ``coords``, then on
the file, then on ``features``; CLAM's feature files carry none, so ``--patches-dir`` points to CLAM's
``patches/`` folder whose h5 of the same name holds them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

import giga_ssl_hf
from giga_ssl_hf.contracts import METADATA_FILENAME
from giga_ssl_hf.settings import SettingsParser, option, run_main

if TYPE_CHECKING:
    import h5py

logger = logging.getLogger(__name__)

SOURCE = "giga-ssl import-h5"  # the metadata's "source": how an earlier output of this command is recognised


@dataclass
class H5Slide:
    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    patch_size_level0: int
    mpp: float
    magnification: float
    layout: str
    tile_encoder: dict | None = None  # the encoder record giga-ssl export-h5 stores on the file


def _attributes(handle: h5py.File) -> dict:
    found: dict = {}
    # Later sources do not override earlier ones: coords attrs are the most specific.
    for source in (handle.get("features"), handle, handle.get("coords")):
        if source is not None:
            found.update({key: source.attrs[key] for key in source.attrs})
    return found


def _scalar(value) -> float:
    array = np.asarray(value).ravel()
    return float(array[0])


def _find_slide(slides_dir: Path | None, slide_id: str) -> Path | None:
    if slides_dir is None:
        return None
    # Imported only when needed: the slide module imports torch, which doubles a refusal's time and memory.
    from giga_ssl_hf.wsi.slide import SLIDE_EXTENSIONS

    for path in sorted(slides_dir.glob(f"{slide_id}.*")):
        if path.suffix.lower() in SLIDE_EXTENSIONS:
            return path
    return None


def _read_arrays(
    path: Path, patches_dir: str | Path | None
) -> tuple[np.ndarray, np.ndarray, dict, dict | None]:
    """(features (n, D), coords (n, 2), attributes, encoder record) of one h5 file (attributes completed from
    CLAM's patch h5 of the same name in ``patches_dir``)."""
    import h5py

    from giga_ssl_hf.wsi.tile_sources import level0_corners

    with h5py.File(path, "r") as handle:
        if "features" not in handle or "coords" not in handle:
            raise ValueError(
                f"{path}: expected 'features' and 'coords' datasets, found {sorted(handle.keys())}"
            )
        features = np.asarray(handle["features"][()])
        coords = np.asarray(handle["coords"][()])
        attrs = _attributes(handle)
        encoder_json = handle.attrs.get("giga_ssl_tile_encoder")
    tile_encoder = json.loads(encoder_json) if encoder_json is not None else None
    if patches_dir is not None and (Path(patches_dir) / path.name).exists():
        with h5py.File(Path(patches_dir) / path.name, "r") as handle:
            attrs = {**_attributes(handle), **attrs}
    features = features.reshape(-1, features.shape[-1]) if features.ndim == 3 else features
    coords = level0_corners(coords, path)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(f"{path}: features {features.shape} and coords {coords.shape} disagree")
    return features, coords, attrs, tile_encoder


def _patch_size_level0(path: Path, attrs: dict, slide) -> int:
    """The tile side in level-0 px from TRIDENT's ``patch_size_level0`` or CLAM's ``patch_size`` x the
    downsample of ``patch_level``."""
    if "patch_size_level0" in attrs:
        return int(round(_scalar(attrs["patch_size_level0"])))
    if "patch_size" not in attrs or "patch_level" not in attrs:
        raise ValueError(
            f"{path}: no patch_size_level0 nor patch_size + patch_level attributes; pass --patch-size-level0 "
            "(or --patches-dir with CLAM's patch h5 files)"
        )
    level = int(_scalar(attrs["patch_level"]))
    if "downsample" in attrs:
        downsample = _scalar(attrs["downsample"])
    elif level == 0:
        downsample = 1.0
    elif slide is not None:
        downsample = slide.level_downsamples[level]
    else:
        raise ValueError(
            f"{path}: patch_level {level} without its downsample; pass --slides-dir (the slides) "
            "or --patch-size-level0"
        )
    return int(round(_scalar(attrs["patch_size"]) * downsample))


def _resolution(path: Path, attrs: dict, slide, mpp: float | None) -> tuple[float, float]:
    """(level-0 µm/px, magnification): ``mpp``, else the slide's, else the attributes' (NaN when unknown)."""
    magnification = float("nan")
    for key in ("level0_magnification", "magnification"):
        if key in attrs and not bool(attrs.get("level0_magnification_estimated", False)):
            magnification = _scalar(attrs[key])
            break
    resolved_mpp = mpp
    if resolved_mpp is None and slide is not None:
        resolved_mpp = slide.mpp
        if math.isnan(magnification):
            magnification = slide.magnification
    for key in ("mpp", "level0_mpp"):
        if resolved_mpp is None and key in attrs:
            resolved_mpp = _scalar(attrs[key])
    if resolved_mpp is None and not math.isnan(magnification):
        resolved_mpp = 10.0 / magnification
    if resolved_mpp is None:
        logger.warning("%s: unknown mpp (pass --mpp or --slides-dir); stored as NaN", path.name)
        resolved_mpp = float("nan")
    return float(resolved_mpp), float(magnification)


def read_h5(
    path: str | Path,
    *,
    patch_size_level0: int | None = None,
    patches_dir: str | Path | None = None,
    slides_dir: str | Path | None = None,
    mpp: float | None = None,
) -> H5Slide:
    """One slide's features, coords and tile geometry from a TRIDENT or CLAM h5 file."""
    path = Path(path)
    features, coords, attrs, tile_encoder = _read_arrays(path, patches_dir)
    slide_path = _find_slide(Path(slides_dir) if slides_dir else None, path.stem)
    slide = None
    if slide_path is not None:
        from giga_ssl_hf.wsi.slide import open_slide

        slide = open_slide(slide_path, mpp)
    try:
        layout = (
            "trident" if "patch_size_level0" in attrs else "clam" if "patch_level" in attrs else "unknown"
        )
        if patch_size_level0 is None:
            patch_size_level0 = _patch_size_level0(path, attrs, slide)
        if patch_size_level0 < 1:
            raise ValueError(
                f"{path}: the tile side must be a positive number of level-0 px, got {patch_size_level0}"
            )
        resolved_mpp, magnification = _resolution(path, attrs, slide, mpp)
    finally:
        if slide is not None:
            slide.close()
    return H5Slide(
        path.stem, features, coords, patch_size_level0, resolved_mpp, magnification, layout, tile_encoder
    )


def _h5_files(paths: Sequence[str | Path]) -> list[Path]:
    """The h5 files of ``paths`` (files, or folders of ``*.h5``) in slide-id order; slide ids must be unique."""
    files: list[Path] = []
    for item in map(Path, paths):
        files.extend(sorted(item.glob("*.h5")) if item.is_dir() else [item])
    files = sorted(files, key=lambda p: p.stem)
    if not files:
        raise ValueError("no h5 file given")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        raise ValueError("several h5 files share a slide id (file stem)")
    return files


def _name_encoder(metadata: dict, encoder: str | None, encoders: list[dict | None], feature_dim: int) -> None:
    """Record the tile encoder: files written by giga-ssl export-h5 carry its record; else --encoder names it."""
    recorded = {json.dumps(record, sort_keys=True) for record in encoders}
    if len(recorded) == 1 and encoders[0] is not None and encoder in (None, encoders[0].get("name")):
        metadata["tile_encoder"] = encoders[0]
        metadata["encoder"] = encoder or encoders[0].get("name")
    elif encoder is not None:
        metadata["tile_encoder"] = {"name": encoder, "feature_dim": int(feature_dim)}


def _rows(files: list[Path], first: H5Slide, options: dict, dtype: str, layouts: set, encoders: list):
    """The Dataset rows of ``files`` (``first`` already read), noting each file's layout and encoder record."""
    from giga_ssl_hf.contracts import NO_AUGMENTATION

    feature_dim = first.features.shape[1]
    for path in files:
        slide = first if path == files[0] else read_h5(path, **options)
        if slide.features.shape[1] != feature_dim:
            raise ValueError(
                f"{path}: {slide.features.shape[1]} features per tile, {files[0]} has {feature_dim}"
            )
        layouts.add(slide.layout)
        encoders.append(slide.tile_encoder)
        yield {
            "slide_id": slide.slide_id,
            "aug_id": NO_AUGMENTATION,
            "features": _storable(path, slide.features, dtype),
            "coords": slide.coords,
            "patch_size_level0": slide.patch_size_level0,
            "mpp": slide.mpp,
            "magnification": slide.magnification,
        }


def _storable(path: Path, features: np.ndarray, dtype: str) -> np.ndarray:
    """``features`` as ``dtype``; raises when a value is not finite, or would not be once stored."""
    if not np.isfinite(features).all():
        raise ValueError(f"{path}: slide {path.stem} holds NaN or infinite features; re-extract that slide")
    if dtype == "float16" and features.size:
        peak = float(np.abs(features).max())
        if peak > float(np.finfo(np.float16).max):
            raise ValueError(
                f"{path}: slide {path.stem} has feature values up to {peak:.4g}, beyond float16's 65504 (they "
                "would be stored as inf); pass --dtype float32"
            )
    return features.astype(dtype)


# The files of a ``save_to_disk`` folder with its metadata sidecar: all that import_h5 writes into --out.
_OWN_FILES = ("data-*.arrow", "dataset_info.json", "state.json", METADATA_FILENAME)


def _written_by_import(folder: Path) -> bool:
    from giga_ssl_hf.contracts import read_metadata

    try:
        source = read_metadata(folder).get("source")
    except (OSError, ValueError):
        return False
    own = {path for pattern in _OWN_FILES for path in folder.glob(pattern)}
    return source == SOURCE and all(path in own for path in folder.iterdir())


def check_output_folder(out_dir: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse an ``out_dir`` whose replacement would delete what import_h5 did not write: an input (or a
    folder holding one), a non-empty folder of anything else, or an earlier import without ``overwrite``."""
    out = out_dir.resolve()
    for item in inputs:
        item = item.resolve()
        if out == item or out in item.parents:
            raise ValueError(f"--out {out_dir} is or holds the input {item}; choose a new folder")
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not _written_by_import(out_dir):
        raise ValueError(
            f"--out {out_dir} exists and is not an earlier giga-ssl import-h5 output (it would be deleted); "
            "choose a new or empty folder"
        )
    if not overwrite:
        raise ValueError(
            f"--out {out_dir} holds an earlier giga-ssl import-h5 output; pass --overwrite to replace it, or "
            "choose another folder"
        )


def import_h5(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    patch_size_level0: int | None = None,
    patches_dir: str | Path | None = None,
    slides_dir: str | Path | None = None,
    mpp: float | None = None,
    encoder: str | None = None,
    dtype: str = "float16",
    overwrite: bool = False,
) -> Path:
    """Write the h5 files (or folders of ``*.h5``) as one tile-feature Dataset folder ``out_dir``.

    An existing ``out_dir`` is replaced only when it is an earlier output of this function and ``overwrite``
    is set (see :func:`check_output_folder`); a slide whose features are not finite in ``dtype`` raises, and
    ``out_dir`` is then left as it was.
    """
    from giga_ssl_hf.contracts import write_metadata
    from giga_ssl_hf.contracts.extraction_folder import EXHAUSTIVE
    from giga_ssl_hf.features.store import write_tile_dataset

    files = _h5_files(paths)
    sources = [Path(p) for p in (*paths, patches_dir, slides_dir) if p is not None]
    check_output_folder(Path(out_dir), [*sources, *files], overwrite)
    options = {
        "patch_size_level0": patch_size_level0,
        "patches_dir": patches_dir,
        "slides_dir": slides_dir,
        "mpp": mpp,
    }
    first = read_h5(files[0], **options)
    feature_dim = first.features.shape[1]
    layouts: set[str] = set()
    encoders: list[dict | None] = []
    rows = _rows(files, first, options, dtype, layouts, encoders)
    metadata = {
        "source": SOURCE,
        "pass": EXHAUSTIVE,
        "encoder": encoder,
        "feature_dim": feature_dim,
        "dtype": dtype,
        "augmentation": None,
        "h5_files": [p.name for p in files],
        "coords": "level-0 (x, y) of the top-left corner; grid index = coords // patch_size_level0",
        "package_version": giga_ssl_hf.__version__,
    }
    out = write_tile_dataset(rows, out_dir, feature_dim, dtype, metadata)
    metadata["h5_layouts"] = sorted(layouts)
    _name_encoder(metadata, encoder, encoders, feature_dim)
    write_metadata(out, metadata)
    return out


EPILOG = """\
examples:
  giga-ssl import-h5 trident_out/20x_256px_0px_overlap/features_conch_v15/ --out feats/exhaustive --encoder conch_v15
  giga-ssl import-h5 clam_out/h5_files/ --out feats/exhaustive --patches-dir clam_out/patches --slides-dir slides/

The output folder opens with datasets.load_from_disk; one row per slide (aug_id -1), in slide_id order.
--out must be new or empty; an earlier import-h5 output is replaced only with --overwrite, anything else is
never touched. Values beyond float16's range are refused (use --dtype float32).
"""


@dataclass
class H5ImportSettings:
    """`giga-ssl import-h5`'s settings: :func:`import_h5`'s arguments."""

    paths: tuple[str, ...] = option(
        help="h5 files, or folders of *.h5", positional=True, nargs="+", metavar="H5_OR_DIR"
    )
    out_dir: Path = option(
        help="output Dataset folder: new or empty (an earlier import-h5 output with --overwrite)",
        flag="--out",
        metavar="OUT",
    )
    patch_size_level0: int | None = option(None, "tile side in level-0 px (overrides the attributes)")
    patches_dir: Path | None = option(None, "CLAM patches/ folder whose h5 files hold the patch attributes")
    slides_dir: Path | None = option(
        None, "folder of the slides (<slide_id>.svs, ...) for level downsamples and mpp"
    )
    mpp: float | None = option(
        None, "level-0 µm per px of every slide (default: from the slides or attributes)"
    )
    encoder: str | None = option(
        None, "name of the encoder that produced the features (recorded in the metadata)"
    )
    dtype: Literal["float16", "float32"] = option("float16", "stored feature dtype")
    overwrite: bool = option(False, "replace --out when it is an earlier import-h5 output")


def build_parser() -> SettingsParser:
    return SettingsParser(
        H5ImportSettings,
        prog="giga-ssl import-h5",
        description="Convert TRIDENT / CLAM patch-feature h5 files (features, coords + attributes) into a "
        "tile-feature Dataset (the exhaustive pass of `giga-ssl extract`).",
        epilog=EPILOG,
    )


def run(settings: H5ImportSettings) -> int:
    print(f"wrote {import_h5(**dataclasses.asdict(settings))}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)
