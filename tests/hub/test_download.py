"""giga-ssl download and load_embeddings(as_dataset=True) on local folders (the Hub path is in
test_hub_server.py)."""

from __future__ import annotations

import json

import datasets
import numpy as np

from giga_ssl_hf import load_embeddings
from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.hub.download import download_embeddings

from .conftest import METADATA


def test_to_a_saved_dataset_with_its_metadata(embeddings_dir, tmp_path):
    assert cli_main(["download", str(embeddings_dir), "--out", str(tmp_path / "out")]) == 0
    saved = datasets.load_from_disk(str(tmp_path / "out"))
    assert saved.column_names == ["slide_id", "embedding"]
    assert json.loads((tmp_path / "out" / "giga_ssl_metadata.json").read_text()) == METADATA
    np.testing.assert_array_equal(load_embeddings(tmp_path / "out")[1], load_embeddings(embeddings_dir)[1])


def test_to_the_npy_pair(embeddings_dir, tmp_path):
    download_embeddings(embeddings_dir, tmp_path / "npy", npy=True)
    ids, embeddings = load_embeddings(embeddings_dir)
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "ids.npy", allow_pickle=False), ids)
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "embeddings.npy"), embeddings)


def test_without_out_only_checks_and_prints_the_folder(embeddings_dir, capsys):
    assert cli_main(["download", str(embeddings_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(embeddings_dir)


def test_bad_requests(tmp_path, capsys):
    assert cli_main(["download", str(tmp_path), "--npy"]) == 2
    assert "--npy needs --out" in capsys.readouterr().err
    assert cli_main(["download", str(tmp_path)]) == 2  # an empty folder
    assert "no slide embeddings found" in capsys.readouterr().err


def test_load_embeddings_as_a_dataset(embeddings_dir, tmp_path):
    ids, embeddings = load_embeddings(embeddings_dir)
    dataset = load_embeddings(embeddings_dir, as_dataset=True)
    assert dataset.features["embedding"] == datasets.List(datasets.Value("float32"), length=16)
    assert dataset["slide_id"] == ids.tolist()
    np.testing.assert_array_equal(np.asarray(dataset.with_format("numpy")["embedding"]), embeddings)


def test_out_is_never_merged_into_and_appears_complete_or_not_at_all(embeddings_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli_main(["download", str(embeddings_dir), "--out", str(out), "--npy"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert cli_main(["download", str(embeddings_dir), "--out", str(out), "--npy", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "giga_ssl_metadata.json", "ids.npy"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # A write that fails half-way (the source's metadata is a folder, which cannot be copied as a file)
    # leaves the previous download whole, and no temporary beside it.
    broken = tmp_path / "broken"
    download_embeddings(embeddings_dir, broken, npy=True)
    (broken / "giga_ssl_metadata.json").unlink()
    (broken / "giga_ssl_metadata.json").mkdir()
    assert cli_main(["download", str(broken), "--out", str(out), "--npy", "--overwrite"]) == 2
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out"]
