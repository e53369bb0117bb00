import numpy as np
import pandas as pd
import pytest

from giga_ssl_hf.contracts.slide_embeddings import (
    column_blocks,
    embedding_blocks,
    load_embeddings,
    top_block_name,
)
from giga_ssl_hf.evaluation.data import find_split_sets, load_labels, read_split

from .synthetic import planted, write_dataset, write_labels, write_npy, write_split


@pytest.fixture
def slides():
    ids, x, _ = planted(12, dim=5)
    return ids, x


def test_npy_pair_and_dataset_folder_read_the_same(tmp_path, slides):
    ids, x = slides
    for folder in (write_npy(tmp_path / "npy", ids, x), write_dataset(tmp_path / "ds", ids, x)):
        got_ids, got_x = load_embeddings(folder)
        assert got_ids.tolist() == ids.tolist()
        assert got_x.dtype == np.float32 and got_x.shape == (12, 5)
        np.testing.assert_array_equal(got_x, x)


def test_parquet_files_of_a_downloaded_repo(tmp_path, slides, monkeypatch):
    """A Hub id goes through snapshot_download; a repo of parquet shards is then read with datasets."""
    ids, x = slides
    repo = tmp_path / "snapshot"
    (repo / "data").mkdir(parents=True)
    pd.DataFrame({"slide_id": ids[:7], "embedding": list(x[:7])}).to_parquet(
        repo / "data" / "train-0.parquet"
    )
    pd.DataFrame({"slide_id": ids[7:], "embedding": list(x[7:])}).to_parquet(
        repo / "data" / "train-1.parquet"
    )
    calls = []

    def fake_snapshot_download(repo_id, repo_type):
        calls.append((repo_id, repo_type))
        return str(repo)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    got_ids, got_x = load_embeddings("owner/gigassl-embeddings")
    assert calls == [("owner/gigassl-embeddings", "dataset")]
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(got_x, x)


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(repo_id, repo_type):
        raise OSError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match="owner/missing.*could not be fetched.*offline"):
        load_embeddings("owner/missing")


def test_bad_embedding_sources(tmp_path, slides):
    ids, x = slides
    with pytest.raises(ValueError, match="ids.npy"):
        load_embeddings(tmp_path)  # an empty folder
    write_npy(tmp_path / "short", ids[:-1], x)
    with pytest.raises(ValueError, match="11 slide IDs but 12 embeddings"):
        load_embeddings(tmp_path / "short")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a slide-embeddings folder"):
        load_embeddings(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="not a slide-embeddings folder"):
        load_embeddings(tmp_path / "no" / "such" / "dir")
    write_npy(tmp_path / "dup", np.array(["a", "a"]), x[:2])
    with pytest.raises(ValueError, match="more than once"):
        load_embeddings(tmp_path / "dup")


def test_pickled_ids_are_refused(tmp_path, slides):
    ids, x = slides
    folder = write_npy(tmp_path / "obj", ids, x)
    np.save(folder / "ids.npy", np.array(list(ids), dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain string array"):
        load_embeddings(folder)


def test_dataset_without_the_columns(tmp_path, slides):
    import datasets

    ids, x = slides
    datasets.Dataset.from_dict({"name": list(ids), "vec": x}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['embedding', 'slide_id'\]"):
        load_embeddings(tmp_path / "ds")


def test_labels_keep_numeric_labels_as_strings_and_ignore_other_columns(tmp_path):
    path = tmp_path / "mhrd.csv"
    path.write_text("ID,label,case_id\na,0,x\nb,1,y\nc,,z\nb,1,y\n")
    labels = load_labels(path)
    assert labels.to_dict() == {"a": "0", "b": "1"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("slide,target\na,0\nb,1\n", r"needs columns 'ID' and 'label'; missing \['ID', 'label'\]"),
        ("ID,diagnosis\na,0\nb,1\n", r"missing \['label'\]"),
        ("ID,label\na,LUAD\nb,LUAD\n", r"at least two classes; found 1 \(\['LUAD'\]\)"),
        ("ID,label\na,LUAD\na,LUSC\nb,LUSC\n", "several labels"),
        ("", "not a readable CSV"),
    ],
)
def test_bad_label_tables_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_labels(path)


def test_split_columns_of_unequal_length(tmp_path):
    path = write_split(tmp_path / "split_0.csv", ["a", "b", "c"], ["d"])
    assert path.read_text().splitlines()[-1] == "c,"
    assert read_split(path) == (["a", "b", "c"], ["d"])
    (tmp_path / "bad.csv").write_text("tr,te\na,b\n")
    with pytest.raises(ValueError, match="columns 'train' and 'test'"):
        read_split(tmp_path / "bad.csv")


def test_split_sets_one_folder_or_folder_of_folders(tmp_path):
    for k in (0, 2, 10, 1):
        write_split(tmp_path / "lung" / "50" / f"split_{k}.csv", ["a"], ["b"])
    write_split(tmp_path / "lung" / "full" / "split_0.csv", ["a"], ["b"])
    (tmp_path / "lung" / "notes").mkdir()
    nested = find_split_sets(tmp_path / "lung")
    assert list(nested) == ["50", "full"]
    assert [p.name for p in nested["50"]] == ["split_0.csv", "split_1.csv", "split_2.csv", "split_10.csv"]
    assert list(find_split_sets(tmp_path / "lung" / "full")) == ["full"]
    with pytest.raises(ValueError, match="no split_k.csv"):
        find_split_sets(tmp_path / "lung" / "notes")
    with pytest.raises(ValueError, match="must be a folder"):
        find_split_sets(tmp_path / "missing")


def test_labels_round_trip(tmp_path):
    _, _, labels = planted(10)
    assert load_labels(write_labels(tmp_path / "t.csv", labels)).equals(
        labels.rename("label").rename_axis("ID")
    )


def test_as_dataset_follows_the_embeddings_contract(tmp_path, slides):
    ids, x = slides
    dataset = load_embeddings(write_npy(tmp_path / "npy", ids, x), as_dataset=True)
    assert dataset.column_names == ["slide_id", "embedding"]
    assert (
        dataset.features["embedding"].length == 5 and dataset.features["embedding"].feature.dtype == "float32"
    )
    dataset.save_to_disk(str(tmp_path / "saved"))
    got_ids, got_x = load_embeddings(tmp_path / "saved")
    assert got_ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(got_x, x)


def test_column_blocks_come_from_the_embeddings_metadata(caplog):
    hybrid = {"concat_mean_pool": True, "embedding_dim": 96, "mean_pool_mean": [0.0] * 32}
    assert column_blocks(hybrid) == {"encoder": 64, "mean-pool": 32}
    assert (
        column_blocks({"concat_mean_pool": False, "embedding_dim": 64}) is None and column_blocks({}) is None
    )
    # Hybrid embeddings of an earlier version recorded no statistics: the blocks are unknown, said once.
    assert column_blocks({"concat_mean_pool": True, "embedding_dim": 96}) is None
    assert "earlier version" in caplog.text
    # Recorded by embed (several top-site fractions, maybe a mean-pool block), in column order.
    recorded = {
        "column_blocks": [["top-3%", 64], ["top-10%", 64], ["mean-pool", 32]],
        "concat_mean_pool": True,
    }
    assert list(column_blocks(recorded).items()) == [("top-3%", 64), ("top-10%", 64), ("mean-pool", 32)]
    assert embedding_blocks(64, (0.03, 0.1), 32) == dict(recorded["column_blocks"])
    assert embedding_blocks(64, None, 32) == {"encoder": 64, "mean-pool": 32}
    assert embedding_blocks(64, (0.03,), None) is None and top_block_name(0.125) == "top-12.5%"
