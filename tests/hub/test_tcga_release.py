"""The TCGA release kit end to end: planted embeddings for the real TCGA IDs of the paper's tables ->
``scripts/publish_tcga.py --dry-run`` -> a local Hub-API server -> ``giga-ssl evaluate --task`` and the
reproduction script from the repo id alone (in subprocesses: ``huggingface_hub`` reads ``HF_ENDPOINT`` at import).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from giga_ssl_hf.evaluation.evaluate_command import main as evaluate_main

from .conftest import hub_env, serve_repos

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "reference" / "gigassl-tcga"
RELEASE_REPO = "gigassl-org/tcga-release"
TASKS = ("lung", "kidney", "brca", "mhrd", "thrd", "tnbc")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"paper reference tables not found at {REFERENCE}"),
]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    # The planted embeddings of the reproduction test: each task's classes in its own two dimensions.
    planting = _load(REPO / "tests" / "scripts" / "test_reproduce_tcga_linear_probe.py", "planting")
    planting.synthetic_embeddings(root / "emb")
    publish = _load(REPO / "scripts" / "publish_tcga.py", "publish_tcga")
    args = ["--embeddings", str(root / "emb"), "--repo-id", RELEASE_REPO, "--dry-run", str(root / "dry_run")]
    assert publish.main([*args, "--model", "planted-test-embeddings"]) == 0
    return root


def test_the_dry_run_folder_holds_embeddings_tables_splits_and_card(release):
    folder = release / "dry_run"
    np.testing.assert_array_equal(
        np.load(folder / "embeddings.npy"), np.load(release / "emb" / "embeddings.npy")
    )
    np.testing.assert_array_equal(np.load(folder / "ids.npy"), np.load(release / "emb" / "ids.npy"))
    assert sorted(p.stem for p in (folder / "tables").glob("*.csv")) == sorted(TASKS)
    split_files = sorted(p.relative_to(folder) for p in (folder / "splitdirs").rglob("split_*.csv"))
    assert split_files == sorted(
        p.relative_to(REFERENCE) for p in (REFERENCE / "splitdirs").rglob("split_*.csv")
    )

    header = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    configs = {c["config_name"]: c for c in header["configs"]}
    n_split_folders = sum(1 for p in (REFERENCE / "splitdirs").glob("*/*") if p.is_dir())
    assert len(configs) == 1 + len(TASKS) + n_split_folders == 32
    assert configs["labels-lung"]["data_files"] == [{"split": "train", "path": "data/labels-lung.parquet"}]
    split_3 = {"split": "split_3", "path": "data/splits-tnbc-250/split_3.parquet"}
    assert configs["splits-tnbc-250"]["data_files"][3] == split_3
    for config in configs.values():
        assert all((folder / f["path"]).is_file() for f in config["data_files"]), config["config_name"]
    (model,) = header["model-index"]
    aucs = {r["dataset"]["name"]: r["metrics"][0]["value"] for r in model["results"]}
    assert aucs == {"TCGA lung": 0.96, "TCGA kidney": 0.983, "TCGA brca": 0.924, "TCGA tnbc": 0.933}
    card = (folder / "README.md").read_text()
    assert f"giga-ssl evaluate --embeddings {RELEASE_REPO} --task lung" in card
    metadata = json.loads((folder / "giga_ssl_metadata.json").read_text())
    assert metadata["cohort"] == "TCGA" and metadata["tasks"] == list(TASKS)


def test_tasks_the_embeddings_do_not_cover_are_refused_or_left_out(release, tmp_path, capsys):
    publish = _load(REPO / "scripts" / "publish_tcga.py", "publish_tcga")
    ids, embeddings = np.load(release / "emb" / "ids.npy"), np.load(release / "emb" / "embeddings.npy")
    lung = set(pd.read_csv(REFERENCE / "tables" / "lung.csv", dtype=str)["ID"])

    def run(name: str, keep: np.ndarray, *flags: str) -> tuple[int, str]:
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "ids.npy", ids[keep])
        np.save(tmp_path / name / "embeddings.npy", embeddings[keep])
        argv = ["--embeddings", str(tmp_path / name), "--repo-id", RELEASE_REPO, "--dry-run"]
        capsys.readouterr()
        code = publish.main([*argv, str(tmp_path / f"{name}_out"), *flags])
        return code, capsys.readouterr().err

    # 50 of the labelled slides: every task is refused, nothing is written.
    code, error = run("fifty", np.arange(len(ids)) < 50, "--covered-tasks-only")
    assert code == 2 and error.count("\n") == 1 and "lung (" in error and "tnbc (" in error
    assert not (tmp_path / "fifty_out").exists()
    # Every lung slide: the other five tasks are refused, or left out of the release and its card when asked.
    only_lung = np.isin(ids, list(lung))
    code, error = run("lung", only_lung)
    assert code == 2 and "--covered-tasks-only to release only lung" in error and "kidney (0 of" in error
    assert not (tmp_path / "lung_out").exists()
    assert run("lung_again", only_lung, "--covered-tasks-only")[0] == 0
    folder = tmp_path / "lung_again_out"
    assert [p.stem for p in (folder / "tables").glob("*.csv")] == ["lung"]
    header = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    (model,) = header["model-index"]
    assert [r["dataset"]["name"] for r in model["results"]] == ["TCGA lung"]
    card = (folder / "README.md").read_text()
    assert "| `lung` |" in card and "| `kidney` |" not in card


CLIENT = """
import json, sys
import datasets
labels = datasets.load_dataset({repo!r}, "labels-lung", split="train")
split = datasets.load_dataset({repo!r}, "splits-lung-full", split="split_0")
print(json.dumps({{"labels": len(labels), "columns": labels.column_names, "train": len(split)}}))
"""


def test_evaluate_and_reproduce_from_the_repo_id_alone(release, tmp_path):
    with serve_repos(tmp_path / "olah", {f"datasets/{RELEASE_REPO}": release / "dry_run"}) as endpoint:
        env = hub_env(tmp_path / "hf_home", endpoint)
        evaluate = [sys.executable, "-m", "giga_ssl_hf.cli", "evaluate", "--embeddings", RELEASE_REPO]
        run = subprocess.run(
            [*evaluate, "--task", "lung", "--out", str(tmp_path / "hub_lung"), "--no-plots"],
            env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        script = [sys.executable, str(REPO / "scripts" / "reproduce_tcga_linear_probe.py")]
        run = subprocess.run(
            [*script, "--embeddings", RELEASE_REPO, "--out", str(tmp_path / "hub_all"), "--no-plots"],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        printed = run.stdout
        client = subprocess.run(
            [sys.executable, "-c", CLIENT.format(repo=RELEASE_REPO)], env=env, capture_output=True, text=True
        )
        assert client.returncode == 0, client.stderr[-2000:]
    # And again from the HF cache alone, with the server gone.
    offline = subprocess.run(
        [*evaluate, "--task", "lung", "--no-plots"],
        env=hub_env(tmp_path / "hf_home", endpoint, offline=True), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert offline.returncode == 0, offline.stderr[-2000:]

    # The same numbers as the local planted embeddings with the reference folder's labels and splits.
    local = ["--embeddings", str(release / "emb"), "--labels", str(REFERENCE / "tables" / "lung.csv")]
    local += [
        "--splits",
        str(REFERENCE / "splitdirs" / "lung"),
        "--out",
        str(tmp_path / "local"),
        "--no-plots",
    ]
    assert evaluate_main(local) == 0
    expected = json.loads((tmp_path / "local" / "metrics.json").read_text())["tasks"]["lung"]
    hub_lung = json.loads((tmp_path / "hub_lung" / "metrics.json").read_text())["tasks"]["lung"]
    hub_all = json.loads((tmp_path / "hub_all" / "metrics.json").read_text())["tasks"]
    assert hub_lung == expected == hub_all["lung"]
    assert sorted(expected) == ["100", "25p", "50", "full"]
    assert list(hub_all) == list(TASKS)
    for task, sizes in hub_all.items():
        for size, entry in sizes.items():
            (result,) = entry["train_sizes"].values()
            assert result["auc_mean"] > 0.9, (task, size, result["auc_mean"])
    assert [line.split()[0] for line in printed.strip().splitlines()[1:]] == list(TASKS)
    assert "lung" in offline.stdout

    counts = json.loads(client.stdout)
    assert counts["labels"] == 1033 and counts["columns"][:2] == ["ID", "label"] and counts["train"] > 900
