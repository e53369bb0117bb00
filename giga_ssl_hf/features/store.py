"""Crash-safe storage of per-slide extraction results and their consolidation into tile-feature Datasets.

Each slide's arrays (``parts/<slide_id>.npz``) and then its record (``parts/<slide_id>.json``) are written to a
temporary name and renamed: the record's rename is the commit point, so a run killed at any moment leaves
every slide either fully committed or absent. Datasets are (re)built from the committed parts, in
``slide_id`` order, into a temporary folder that replaces the previous one: rows streamed into its Arrow shards
in record batches bounded in tile values, so neither memory nor the Arrow list offsets grow with the cohort.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from giga_ssl_hf.contracts import write_metadata
from giga_ssl_hf.files import (
    atomic_file,
    dumps_strict,
    remove_stale_temporaries,
    staged_directory,
    write_text_atomic,
)

if TYPE_CHECKING:
    import datasets

# Bytes of tile arrays per Arrow shard file, and rows per record batch at most (``datasets``' own defaults).
SHARD_BYTES = 500 * 2**20
BATCH_ROWS = 1000


class DiskFullError(OSError):
    """The output's file system ran out of space; what was being written has been removed."""


class PartStore:
    """The committed per-slide results of an output folder (``DIR/parts``)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)  # created by the first commit: reading a store writes nothing

    def remove_temporaries(self) -> None:
        """Delete what a killed run left half-written (never a committed part, nor a live writer's file)."""
        remove_stale_temporaries(self.directory)

    @contextmanager
    def disk_full_names(self, what: str) -> Iterator[None]:
        """Turn a full disk while writing ``what`` into a :class:`DiskFullError`, temporaries removed."""
        try:
            yield
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.remove_temporaries()
            raise DiskFullError(error.errno, f"no space left on device while writing {what}") from error

    def clear(self) -> None:
        for path in self.directory.glob("*"):
            path.unlink()

    def _arrays_path(self, slide_id: str) -> Path:
        return self.directory / f"{slide_id}.npz"

    def _record_path(self, slide_id: str) -> Path:
        return self.directory / f"{slide_id}.json"

    def committed_ids(self) -> set[str]:
        """The ids of every committed slide, from one listing of the folder (no record is read)."""
        if not self.directory.is_dir():
            return set()
        with os.scandir(self.directory) as entries:
            return {entry.name[: -len(".json")] for entry in entries if entry.name.endswith(".json")}

    def record(self, slide_id: str) -> dict | None:
        path = self._record_path(slide_id)
        return json.loads(path.read_text()) if path.exists() else None

    def records(self) -> list[dict]:
        """All committed records, sorted by ``slide_id``."""
        records = []
        for path in self.directory.glob("*.json"):
            try:
                records.append(json.loads(path.read_text()))
            except FileNotFoundError:  # another process is re-committing this slide
                continue
        return sorted(records, key=lambda record: record["slide_id"])

    def commit(self, record: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        slide_id = record["slide_id"]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._record_path(slide_id).unlink(missing_ok=True)
        if arrays:
            with atomic_file(self._arrays_path(slide_id), "wb") as handle:
                np.savez(handle, **arrays)
        else:
            self._arrays_path(slide_id).unlink(missing_ok=True)
        write_text_atomic(self._record_path(slide_id), dumps_strict(record, sort_keys=True, indent=1))

    def arrays(self, slide_id: str) -> dict[str, np.ndarray]:
        with np.load(self._arrays_path(slide_id)) as npz:
            return {key: npz[key] for key in npz.files}


def write_tile_dataset(
    rows: Iterable[dict], dataset_dir: str | Path, feature_dim: int, dtype: str, metadata: dict
) -> Path:
    """Write rows of the tile-feature schema as a ``load_from_disk`` folder plus the metadata sidecar.

    Rows are streamed into the folder's Arrow shards directly (no second copy, memory bounded by a record
    batch), in record batches sized by their tile values (:data:`MAX_BATCH_VALUES`); the folder appears only once
    complete.
    """
    # Imported here, not at the top: a run's settings check reads the store and must stay light.
    import datasets

    from giga_ssl_hf.contracts.tile_features import tile_features_schema

    with staged_directory(dataset_dir) as tmp:
        schema = tile_features_schema(feature_dim, dtype)
        shards = _write_shards(rows, tmp, schema)
        write_text_atomic(
            tmp / datasets.config.DATASET_STATE_JSON_FILENAME, dumps_strict(_state(shards), indent=2)
        )
        datasets.DatasetInfo(features=schema).write_to_directory(str(tmp))
        write_metadata(tmp, metadata)
    return Path(dataset_dir)


def _write_shards(rows: Iterable[dict], folder: Path, schema: datasets.Features) -> list[str]:
    """Stream ``rows`` into ``data-NNNNN.arrow`` shards of about :data:`SHARD_BYTES`; their final names.

    Through ``datasets``' own writer (what ``save_to_disk`` uses; not exported at the top level): the public
    route, ``Dataset.from_generator`` into a cache folder then ``save_to_disk``, holds the same memory but
    writes every byte twice (twice the disk; +10-65% time on 150,000 x 2,560 slides) and lets ``save_to_disk``
    size record batches by the average row, so a large slide shares its chunk with small ones beyond
    :data:`MAX_BATCH_VALUES` (near the row limit, past the int32 offsets): ``benchmarks/bench_tile_writer.py``.
    """
    from datasets.arrow_writer import ArrowWriter

    from giga_ssl_hf.contracts.tile_features import MAX_BATCH_VALUES, check_row_size

    shards: list[Path] = []
    writer, shard_bytes, batch, batch_values = None, 0, [], 0

    def flush() -> None:
        nonlocal batch, batch_values
        if batch:
            writer.write_batch({key: [row[key] for row in batch] for key in schema})
        batch, batch_values = [], 0

    try:
        for row in rows:
            values = check_row_size(row)
            if writer is None or shard_bytes >= SHARD_BYTES:
                flush()
                if writer is not None:
                    writer.finalize()
                    writer.close()
                shards.append(folder / f"data-{len(shards):05d}.arrow")
                writer, shard_bytes = ArrowWriter(features=schema, path=str(shards[-1])), 0
            if batch_values + values > MAX_BATCH_VALUES:
                flush()
            batch.append(row)
            batch_values += values
            shard_bytes += np.asarray(row["features"]).nbytes + np.asarray(row["coords"]).nbytes
            if batch_values >= MAX_BATCH_VALUES or len(batch) == BATCH_ROWS:
                flush()  # now, before the next row is read: memory holds one full batch, not two
            del row  # nor does this name hold a written row while the next one is read
        flush()
    finally:
        if writer is not None:
            writer.finalize()
            writer.close()
    names = [f"data-{index:05d}-of-{len(shards):05d}.arrow" for index in range(len(shards))]
    for shard, name in zip(shards, names):
        shard.rename(folder / name)
    return names


def _state(shard_names: list[str]) -> dict:
    """The ``state.json`` that ``Dataset.save_to_disk`` writes, for a plain Dataset of these shards."""
    return {
        "_data_files": [{"filename": name} for name in shard_names],
        "_fingerprint": secrets.token_hex(8),  # a random 64-bit fingerprint, as datasets makes one
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
