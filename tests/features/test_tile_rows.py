"""The tile-feature writer: record batches bounded in values, several shards, rows read back whole."""

import gc
import weakref

import datasets
import numpy as np
import pytest

from giga_ssl_hf.contracts import tile_features
from giga_ssl_hf.contracts.tile_features import (
    MAX_ROW_VALUES,
    TileArrays,
    load_tile_dataset,
    without_indices_mapping,
)
from giga_ssl_hf.features import store
from giga_ssl_hf.features.store import write_tile_dataset

DIM = 16


def rows(tile_counts, seed=0):
    rng = np.random.default_rng(seed)
    for index, n in enumerate(tile_counts):
        yield {
            "slide_id": f"s{index:03d}",
            "aug_id": -1,
            "features": rng.normal(size=(n, DIM)).astype(np.float16),
            "coords": rng.integers(0, 10**6, size=(n, 2)),
            "patch_size_level0": 224,
            "mpp": 0.5,
            "magnification": 20.0,
        }


def test_rows_are_batched_by_values_and_sharded_by_bytes(tmp_path, monkeypatch):
    counts = [3, 500, 1, 0, 40, 1200, 7, 7, 300]
    monkeypatch.setattr(
        tile_features, "MAX_BATCH_VALUES", 600 * DIM
    )  # a batch: several small slides or one big one
    monkeypatch.setattr(store, "SHARD_BYTES", 20_000)
    write_tile_dataset(rows(counts), tmp_path / "ds", DIM, "float16", {"feature_dim": DIM})
    assert len(list((tmp_path / "ds").glob("data-*-of-*.arrow"))) > 1
    dataset = load_tile_dataset(tmp_path / "ds")
    chunks = dataset.data.column("features").chunks
    assert max(len(chunk) for chunk in chunks) > 1  # small slides share a batch
    assert all(
        sum(n for n in chunk.storage.value_lengths().to_numpy()) * DIM <= 1200 * DIM for chunk in chunks
    )
    arrays = TileArrays.from_dataset(dataset)
    for index, row in enumerate(rows(counts)):
        features, coords = arrays.row(index)
        np.testing.assert_array_equal(features, row["features"])
        np.testing.assert_array_equal(coords, row["coords"])
    assert datasets.load_from_disk(str(tmp_path / "ds"))["slide_id"] == [r["slide_id"] for r in rows(counts)]
    # A selection is rewritten in bounded batches too and reads back the selected rows.
    picked = without_indices_mapping(dataset.select([5, 1, 8]))
    np.testing.assert_array_equal(
        TileArrays.from_dataset(picked).row(0)[0], list(rows(counts))[5]["features"]
    )


def test_a_full_batch_is_written_before_the_next_row_is_read(tmp_path, monkeypatch):
    """Memory holds one batch: a slide that fills it is written out before the next slide is loaded."""
    monkeypatch.setattr(tile_features, "MAX_BATCH_VALUES", 100 * DIM)
    features_of_rows_given, previous_alive = [], []

    def row(index: int) -> dict:
        features = np.full((150, DIM), index, dtype=np.float16)  # 150 tiles: a full batch alone
        features_of_rows_given.append(weakref.ref(features))
        return {**next(rows([0], seed=index)), "features": features, "coords": np.zeros((150, 2), np.int64)}

    def slides():
        for index in range(3):
            if features_of_rows_given:
                gc.collect()
                previous_alive.append(features_of_rows_given[-1]() is not None)
            yield row(index)

    write_tile_dataset(slides(), tmp_path / "ds", DIM, "float16", {})
    assert previous_alive == [False, False]
    arrays = TileArrays.from_dataset(load_tile_dataset(tmp_path / "ds"))
    assert [float(arrays.row(index)[0][0, 0]) for index in range(3)] == [0.0, 1.0, 2.0]


def test_a_row_beyond_the_arrow_offsets_is_refused_before_anything_is_written(tmp_path):
    huge = next(rows([1]))
    # A broadcast view: the shape of 2**31 values without their memory.
    huge["features"] = np.broadcast_to(huge["features"], (MAX_ROW_VALUES // DIM + 1, DIM))
    with pytest.raises(
        ValueError,
        match=r"slide s000: 134217728 tiles x 16 features = 2147483648 values.*int32 Arrow offsets",
    ):
        write_tile_dataset(iter([huge]), tmp_path / "ds", DIM, "float16", {})
    assert not (tmp_path / "ds").exists() and list(tmp_path.iterdir()) == []


def test_no_rows_make_an_empty_dataset_folder(tmp_path):
    write_tile_dataset(iter([]), tmp_path / "ds", DIM, "float16", {})
    with pytest.raises(ValueError, match="empty"):
        load_tile_dataset(tmp_path / "ds")
