"""push-model / push-embeddings: the dry-run folders, and the upload calls (against a stand-in HfApi: the
real Hub is not reachable from the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from giga_ssl_hf import GigaSSLForContrastivePretraining, GigaSSLModel, load_embeddings
from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.hub import push

from .conftest import DATASET_REPO, METADATA, MODEL_REPO, trained_like

MODEL_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "configuration_gigassl.py",
    "modeling_gigassl.py",
    "sparse_ops.py",
    "training_summary.json",
}


def test_model_dry_run_holds_the_encoder_with_remote_code(dry_runs, model_dir):
    folder = dry_runs["model"]
    assert {p.name for p in folder.iterdir()} == MODEL_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GigaSSLModel"]
    assert config["auto_map"]["AutoModel"] == "modeling_gigassl.GigaSSLModel"
    weights = load_file(folder / "model.safetensors")
    expected = GigaSSLForContrastivePretraining.from_pretrained(model_dir).gigassl.state_dict()
    assert weights.keys() == expected.keys()  # no projection head
    assert all(torch.equal(weights[key], value) for key, value in expected.items())


def test_model_dry_run_from_an_encoder_folder(tmp_path, tiny_config):
    trained_like(GigaSSLModel(tiny_config())).save_pretrained(tmp_path / "encoder")
    assert (
        cli_main(
            ["push-model", str(tmp_path / "encoder"), "--repo-id", "o/n", "--dry-run", str(tmp_path / "out")]
        )
        == 0
    )
    assert {p.name for p in (tmp_path / "out").iterdir()} == MODEL_FILES - {"training_summary.json"}
    assert "No training summary" in (tmp_path / "out" / "README.md").read_text()


def test_embeddings_dry_run_is_a_hub_dataset_repo(dry_runs, embeddings_dir):
    folder = dry_runs["dataset"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "README.md",
        "data/train-00000-of-00001.parquet",
        "giga_ssl_metadata.json",
    ]
    assert json.loads((folder / "giga_ssl_metadata.json").read_text()) == METADATA
    rows = datasets.load_dataset("parquet", data_files=str(folder / push.PARQUET_PATH), split="train")
    assert rows.features["embedding"] == datasets.List(datasets.Value("float32"), length=16)
    ids, embeddings = load_embeddings(embeddings_dir)
    pushed_ids, pushed = load_embeddings(folder)
    np.testing.assert_array_equal(pushed_ids, ids)
    np.testing.assert_array_equal(pushed, embeddings)


def test_embeddings_from_an_npy_pair(tmp_path):
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "embeddings.npy", np.eye(3, 4, dtype=np.float32))
    np.save(tmp_path / "npy" / "ids.npy", np.array(["a", "b", "c"]))
    args = ["push-embeddings", str(tmp_path / "npy"), "--repo-id", "o/e", "--cohort", "CPTAC", "--dry-run"]
    assert cli_main([*args, str(tmp_path / "out")]) == 0
    assert "| Cohort | CPTAC |" in (tmp_path / "out" / "README.md").read_text()
    np.testing.assert_array_equal(load_embeddings(tmp_path / "out")[1], np.eye(3, 4, dtype=np.float32))


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what the uploaded folder held."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        self.calls.append(
            ("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)
        )
        return type("Commit", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        self.calls.append(("upload_file", repo_id, path_in_repo, kwargs["repo_type"], path_or_fileobj))
        return type("Commit", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/2"})()


@pytest.fixture
def recording_api(monkeypatch):
    RecordingHfApi.calls = []
    monkeypatch.setattr(push, "HfApi", RecordingHfApi)
    return RecordingHfApi.calls


def test_push_model_creates_the_repo_and_uploads_the_folder(model_dir, recording_api, capsys):
    assert cli_main(["push-model", str(model_dir), "--repo-id", MODEL_REPO, "--private"]) == 0
    (create, upload) = recording_api
    assert create == ("create_repo", MODEL_REPO, {"repo_type": "model", "private": True, "exist_ok": True})
    assert upload[:3] == ("upload_folder", MODEL_REPO, sorted(MODEL_FILES))
    assert "pushed: https://hub.invalid/" in capsys.readouterr().out


def test_push_embeddings_uses_push_to_hub_then_the_card(embeddings_dir, recording_api, monkeypatch):
    pushed = []
    monkeypatch.setattr(
        datasets.Dataset,
        "push_to_hub",
        lambda self, repo_id, **kw: pushed.append((repo_id, self.num_rows, kw)),
    )
    url = push.push_embeddings(embeddings_dir, DATASET_REPO, private=True)
    assert pushed == [
        (DATASET_REPO, 12, {"private": True, "commit_message": "Upload Giga-SSL slide embeddings"})
    ]
    (card, metadata) = recording_api
    assert card[1:4] == (DATASET_REPO, "README.md", "dataset") and b"TCGA-TINY" in card[4]
    assert metadata[2] == "giga_ssl_metadata.json" and json.loads(metadata[4]) == METADATA
    assert url.endswith("/commit/2")


@pytest.mark.parametrize("command", ["push-model", "push-embeddings", "download", "convert"])
def test_help_explains_the_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"giga-ssl {command}" in text
    if command.startswith("push"):
        assert "--dry-run" in text and "not exercised" in text


def test_missing_inputs_are_one_line_errors(tmp_path, capsys):
    assert (
        cli_main(["push-model", str(tmp_path / "nowhere"), "--repo-id", "o/n", "--dry-run", str(tmp_path)])
        == 2
    )
    assert (
        cli_main(
            ["push-embeddings", str(tmp_path / "nowhere"), "--repo-id", "o/n", "--dry-run", str(tmp_path)]
        )
        == 2
    )
    errors = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in errors] == ["giga-ssl push-model", "giga-ssl push-embeddings"]
