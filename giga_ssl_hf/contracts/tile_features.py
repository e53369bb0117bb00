"""The tile-feature Dataset contract shared by extraction, training and inference.

One row per slide for the exhaustive pass (``aug_id = -1``), one row per (slide, augmentation) for the
shared-augmentation pass:

- ``slide_id`` (string, the slide's file stem), ``aug_id`` (int32, -1 when not augmented)
- ``features`` ``[n, D]`` float16 (or float32), ``coords`` ``[n, 2]`` int64: level-0 pixel (x, y) of
  each tile's top-left corner
- ``patch_size_level0`` (int32, tile side in level-0 pixels), ``mpp`` (float32, level-0 µm per pixel),
  ``magnification`` (float32, objective power; NaN when unknown)

Dataset-level metadata (encoder, D, tile size, target mpp, augmentation recipe, package version) is a
sidecar JSON file, :data:`METADATA_FILENAME`, in the dataset folder.

Grid index = ``coords // patch_size_level0``: adjacent tiles are one cell apart.

Storage: ``features`` and ``coords`` are ``Array2D(None, k)`` columns, Arrow ``list<list<value>>`` with int32
offsets, so one record batch (chunk) of a column addresses at most ``2**31 - 1`` values. Writers keep each batch
under :data:`MAX_BATCH_VALUES` feature values (``datasets`` would combine up to 1,000 rows into one chunk and
overflow on foundation-model cohorts: ten 150,000-tile slides of 2,560-d features hold 3.8e9 values), so a
slide's row is limited to :data:`MAX_ROW_VALUES` values (838,860 tiles of 2,560-d features, 2.8M of 768-d);
:func:`check_row_size` refuses a larger one in one line. Readers go through :class:`TileArrays`, which reads
every chunk in place, whatever the number of rows per chunk.

The metadata's ``tile_encoder`` record (:func:`tile_encoder_record`) says which encoder made the features; a
trained model's config carries the record of its training features, and :func:`encoder_mismatch` tells
whether two records describe different encoders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

# Values one Arrow chunk of a list<list<value>> column can address (int32 offsets).
MAX_ROW_VALUES = 2**31 - 1
# Feature values per record batch that writers aim for (64 MiB of float16): a batch holds many small slides or
# one big slide alone, so a writer's memory stays flat however many slides it writes.
MAX_BATCH_VALUES = 2**25


def tile_features_schema(feature_dim: int, dtype: str = "float16") -> datasets.Features:
    """The ``datasets.Features`` of a tile-feature Dataset whose tiles have ``feature_dim`` features."""
    if dtype not in ("float16", "float32"):
        raise ValueError(f"tile features are stored as float16 or float32, not {dtype!r}")
    return datasets.Features(
        {
            "slide_id": datasets.Value("string"),
            "aug_id": datasets.Value("int32"),
            "features": datasets.Array2D(shape=(None, feature_dim), dtype=dtype),
            "coords": datasets.Array2D(shape=(None, 2), dtype="int64"),
            "patch_size_level0": datasets.Value("int32"),
            "mpp": datasets.Value("float32"),
            "magnification": datasets.Value("float32"),
        }
    )


def check_row_size(row: dict) -> int:
    """The number of feature values of a tile-feature row; ValueError when one Arrow chunk cannot hold it."""
    shape = np.shape(row["features"])
    values = int(np.prod(shape))
    if values > MAX_ROW_VALUES:
        raise ValueError(
            f"slide {row.get('slide_id')}: {shape[0]} tiles x {shape[-1]} features = {values} values, more than "
            f"the {MAX_ROW_VALUES} one row of a tile-feature Dataset holds (int32 Arrow offsets)"
        )
    return values


# Fields of a tile_encoder record that make two encoders' features incomparable when they differ.
ENCODER_IDENTITY_FIELDS = (
    "name", "source", "revision", "weights_sha256", "weights", "feature_dim", "input_size", "mpp", "normalisation",
)  # fmt: skip


def tile_encoder_record(encoder, input_size: int, mpp: float) -> dict:
    """The provenance of tile features: a :class:`~giga_ssl_hf.features.encoders.TileEncoder` run on
    ``input_size`` px tiles at ``mpp`` µm/px (preset or id, revision or weights sha256, dim, normalisation)."""
    provenance = getattr(encoder, "provenance", {}) or {}
    return {
        "name": encoder.name,
        "source": provenance.get("source"),
        "revision": provenance.get("revision"),
        "weights_sha256": provenance.get("weights_sha256"),
        "weights": provenance.get("weights"),
        "feature_dim": int(encoder.feature_dim),
        "input_size": int(input_size),
        "mpp": float(mpp),
        "normalisation": provenance.get("normalisation"),
        "pooling": provenance.get("pooling"),
    }


def describe_encoder(record: dict) -> str:
    """One line naming an encoder record: ``uni@rev (1024-d, 224 px at 0.5 µm/px)``."""
    name = str(record.get("name"))
    if record.get("revision"):
        name += f"@{str(record['revision'])[:12]}"
    if record.get("weights_sha256"):
        name += f" weights sha256 {str(record['weights_sha256'])[:12]}"
    elif record.get("weights") and record["weights"] != "pretrained":
        name += f" ({record['weights']})"
    return (
        f"{name} ({record.get('feature_dim')}-d, {record.get('input_size')} px at {record.get('mpp')} µm/px)"
    )


def encoder_mismatch(expected: dict | None, found: dict | None) -> list[str]:
    """Identity fields on which two tile_encoder records differ ([] when they agree or one is unknown).

    A field missing (None) on either side is not compared: an older record without a revision still
    matches one that has it.
    """
    if not expected or not found:
        return []
    return [
        field
        for field in ENCODER_IDENTITY_FIELDS
        if expected.get(field) is not None
        and found.get(field) is not None
        and expected[field] != found[field]
    ]


class EncoderMismatchError(ValueError):
    """Tile features of one encoder given to a model trained on another's."""


def require_same_encoder(
    model_record: dict | None, features_record: dict | None, allow: bool, what: str
) -> None:
    """Raise :class:`EncoderMismatchError` (one line naming both encoders) when the records differ.

    ``allow`` turns the refusal into a warning (``--allow-encoder-mismatch``); an unknown side is a warning.
    """
    if not model_record or not features_record:
        logger.warning(
            "%s: cannot check the tile encoder (%s record missing); make sure the features come from the encoder "
            "the model was trained on",
            what,
            "model" if not model_record else "features",
        )
        return
    differing = encoder_mismatch(model_record, features_record)
    if not differing:
        return
    message = (
        f"{what}: the tile features come from {describe_encoder(features_record)} but the model was trained on "
        f"{describe_encoder(model_record)} features (differ in {', '.join(differing)}); re-extract with the "
        "model's encoder, or pass --allow-encoder-mismatch"
    )
    if allow:
        logger.warning("%s (allowed by --allow-encoder-mismatch)", message)
        return
    raise EncoderMismatchError(message)


def _flat_values(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy (values (T, k), row offsets (R+1,)) of one chunk of an ``Array2D(None, k)`` column."""
    storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
    inner = storage.flatten()  # list<item: value> of the tile rows, respecting the chunk's slice
    row_offsets = np.asarray(storage.offsets)
    row_offsets = row_offsets - row_offsets[0]
    width_offsets = np.asarray(inner.offsets)
    values = inner.flatten().to_numpy(zero_copy_only=True)
    width = int(width_offsets[1] - width_offsets[0]) if len(width_offsets) > 1 else 0
    if len(inner) and not np.all(np.diff(width_offsets) == width):
        raise ValueError("tile rows of a features/coords column must all have the same width")
    return values.reshape(-1, width) if width else values.reshape(0, 0), row_offsets


def without_indices_mapping(dataset: datasets.Dataset) -> datasets.Dataset:
    """The Dataset with any ``select`` / ``shuffle`` / ``sort`` mapping applied, so that ``dataset.data`` holds its
    rows in order.

    ``datasets`` has no public "has an indices mapping" flag, and ``flatten_indices`` rewrites the whole table,
    so it runs only when the table's rows are not the Dataset's: fewer of them, or the row keys
    ``(slide_id, aug_id)``, read through the mapping, in another order (or not unique, so order cannot be told).
    """
    if len(dataset) == dataset.data.num_rows:
        keys = ["slide_id", "aug_id"]
        mapped = dataset.select_columns(keys).with_format("arrow")[:]
        table = dataset.data.table.select(keys)
        unique = len(set(zip(*(table.column(key).to_pylist() for key in keys)))) == len(dataset)
        if unique and mapped.equals(table):
            return dataset
    return dataset.flatten_indices(writer_batch_size=_rows_per_batch(dataset))


def _rows_per_batch(dataset: datasets.Dataset) -> int:
    """Rows per record batch that keep a rewrite of ``dataset`` under :data:`MAX_BATCH_VALUES` feature values,
    judged by its largest row (``datasets`` writes 1,000 rows per batch by default)."""
    most_tiles = 1
    for chunk in dataset.data.column("features").chunks:
        offsets = np.asarray((chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk).offsets)
        if len(offsets) > 1:
            most_tiles = max(most_tiles, int(np.diff(offsets).max()))
    width = dataset.features["features"].shape[1]
    return int(np.clip(MAX_BATCH_VALUES // (most_tiles * width), 1, 1000))


@dataclass
class TileArrays:
    """Zero-copy numpy views of a tile-feature Dataset, with each row's tiles addressable by index.

    The Arrow table is memory-mapped; ``features[c]`` / ``coords[c]`` are the flat ``(T_c, D)`` /
    ``(T_c, 2)`` tile arrays of chunk ``c``, and row ``r`` holds the tiles
    ``row_start[r] : row_start[r] + row_length[r]`` of chunk ``row_chunk[r]``.
    """

    features: list[np.ndarray]
    coords: list[np.ndarray]
    row_chunk: np.ndarray  # (R,) int64
    row_start: np.ndarray  # (R,) int64
    row_length: np.ndarray  # (R,) int64

    @classmethod
    def from_dataset(cls, dataset: datasets.Dataset) -> TileArrays:
        empty = np.zeros(0, dtype=np.int64)
        if len(dataset) == 0:
            return cls(features=[], coords=[], row_chunk=empty, row_start=empty, row_length=empty)
        dataset = without_indices_mapping(dataset)
        feature_column = dataset.data.column("features")
        coord_column = dataset.data.column("coords")
        features, coords, chunk_ids, starts, lengths = [], [], [], [], []
        for chunk_id, (fchunk, cchunk) in enumerate(zip(feature_column.chunks, coord_column.chunks)):
            values, offsets = _flat_values(fchunk)
            coord_values, coord_offsets = _flat_values(cchunk)
            if not np.array_equal(offsets, coord_offsets):
                raise ValueError("features and coords disagree on the number of tiles of a row")
            features.append(values)
            coords.append(coord_values.reshape(-1, 2) if coord_values.size else coord_values.reshape(0, 2))
            chunk_ids.append(np.full(len(offsets) - 1, chunk_id, dtype=np.int64))
            starts.append(offsets[:-1].astype(np.int64))
            lengths.append(np.diff(offsets).astype(np.int64))
        return cls(
            features=features,
            coords=coords,
            row_chunk=np.concatenate(chunk_ids),
            row_start=np.concatenate(starts),
            row_length=np.concatenate(lengths),
        )

    def __len__(self) -> int:
        return len(self.row_start)

    @property
    def feature_dim(self) -> int:
        return int(self.features[0].shape[1]) if self.features else 0

    def unusable_rows(self, block_rows: int = 1 << 16) -> dict[int, str]:
        """``{row: reason}`` of the rows no model can use: no tiles, or NaN / inf tile features. Scanned in
        blocks of ``block_rows`` tiles, so memory stays bounded on cohort-sized Datasets."""
        found = {int(row): "no tiles" for row in np.flatnonzero(self.row_length == 0)}
        for chunk_id, features in enumerate(self.features):
            in_chunk = np.flatnonzero(self.row_chunk == chunk_id)
            starts = self.row_start[in_chunk]
            order = np.argsort(starts, kind="stable")
            for block in range(0, len(features), block_rows):
                bad_tiles = np.flatnonzero(~np.isfinite(features[block : block + block_rows]).all(axis=1))
                owners = np.searchsorted(starts[order], bad_tiles + block, side="right") - 1
                for row in in_chunk[order][np.unique(owners)]:
                    found[int(row)] = "NaN or inf tile features"
        return found

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, D), coords (n, 2)) of one row, as views."""
        chunk, start = self.row_chunk[index], self.row_start[index]
        end = start + self.row_length[index]
        return self.features[chunk][start:end], self.coords[chunk][start:end]

    def gather(self, rows: np.ndarray, tile_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tiles ``tile_index[i, j]`` (within-row positions) of rows ``rows[i]``.

        Returns features ``(len(rows), k, D)`` and coords ``(len(rows), k, 2)`` (copies).
        """
        rows = np.asarray(rows, dtype=np.int64)
        flat_index = self.row_start[rows][:, None] + tile_index  # (R, k) position within the chunk
        chunks = self.row_chunk[rows]
        feature_out = np.empty((*tile_index.shape, self.feature_dim), dtype=self.features[0].dtype)
        coord_out = np.empty((*tile_index.shape, 2), dtype=np.int64)
        for chunk in np.unique(chunks):
            selected = chunks == chunk
            feature_out[selected] = self.features[chunk][flat_index[selected]]
            coord_out[selected] = self.coords[chunk][flat_index[selected]]
        return feature_out, coord_out


def resolve_tile_dataset_dir(path: str | Path, which: str) -> Path:
    """``path`` itself when it is a saved Dataset, else its ``which/`` (``exhaustive`` or ``augmented``) folder,
    as ``giga-ssl extract --out`` lays them out."""
    path = Path(path)
    if (path / which).is_dir() and not (path / "state.json").exists():
        path = path / which
    if not path.is_dir():
        raise FileNotFoundError(f"tile-feature Dataset not found: {path}")
    return path


def load_tile_dataset(path: str | Path) -> datasets.Dataset:
    """Open a tile-feature Dataset folder, with clear errors for a missing or empty one."""
    path = Path(path)
    state = path / "state.json"
    if not state.exists():
        raise FileNotFoundError(f"not a saved Dataset folder (no state.json): {path}")
    if not json.loads(state.read_text()).get("_data_files"):
        raise ValueError(f"the tile-feature Dataset at {path} is empty: no slide to use")
    dataset = datasets.load_from_disk(str(path))
    missing = {"slide_id", "aug_id", "features", "coords", "patch_size_level0"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{path} is not a tile-feature Dataset: missing column(s) {sorted(missing)}")
    return dataset
