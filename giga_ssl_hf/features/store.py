"""Crash-safe storage of per-slide extraction results and their consolidation into tile-feature Datasets.

Each slide's arrays (``parts/<slide_id>.npz``) and then its record (``parts/<slide_id>.json``) are written to a
temporary name and renamed: the record's rename is the commit point, so a run killed at any moment leaves
every slide either fully committed or absent. Datasets are (re)built from the committed parts, in
``slide_id`` order, into a temporary folder that replaces the previous one.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from giga_ssl_hf.contracts import write_metadata
from giga_ssl_hf.files import (
    atomic_file,
    dumps_strict,
    remove_stale_temporaries,
    staged_directory,
    temporary_path,
    write_text_atomic,
)


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
    """Write rows of the tile-feature schema as a ``save_to_disk`` folder plus the metadata sidecar.

    Rows are streamed one at a time (a slide's row can hold tens of thousands of tiles), and the folder
    appears only once complete.
    """
    # Imported here, not at the top: a run's settings check reads the store and must stay light.
    import datasets
    from datasets.arrow_writer import ArrowWriter

    from giga_ssl_hf.contracts.tile_features import tile_features_schema

    dataset_dir = Path(dataset_dir)
    # The rows are streamed to one Arrow file first (save_to_disk then shards it): a scratch file beside the
    # folder, not in it (a Dataset cannot be saved over its own files), named as the folder's temporaries so
    # that a later write removes it if a crash left it.
    staging = temporary_path(dataset_dir.with_name(dataset_dir.name + ".tmp-rows.arrow"))
    try:
        with staged_directory(dataset_dir) as tmp:
            features = tile_features_schema(feature_dim, dtype)
            with ArrowWriter(features=features, path=str(staging), writer_batch_size=1) as writer:
                for row in rows:
                    writer.write(row)
                writer.finalize()
            dataset = datasets.Dataset.from_file(str(staging))
            dataset.save_to_disk(str(tmp))
            del dataset
            write_metadata(tmp, metadata)
    finally:
        staging.unlink(missing_ok=True)
    return dataset_dir
