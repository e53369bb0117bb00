"""Fixtures of the Hub tests: a tiny trained-like model, a slide-embeddings Dataset, and a local Hub-API
server (olah, offline mode) serving git repos made from the ``--dry-run`` folders."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from giga_ssl_hf import GigaSSLForContrastivePretraining
from giga_ssl_hf.contracts import write_metadata
from giga_ssl_hf.contracts.slide_embeddings import embeddings_dataset
from giga_ssl_hf.hub.push import push_embeddings, push_model

MODEL_REPO = "gigassl-org/tiny-gigassl"
DATASET_REPO = "gigassl-org/tiny-embeddings"
METADATA = {
    "cohort": "TCGA-TINY",
    "model_id": MODEL_REPO,
    "model_revision": "0123abc",
    "tile_sampling": "views",
    "n_views": 4,
    "n_tiles": 5,
    "seed": 0,
    "tile_encoder": "resnet18-layer3",
}


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random non-trivial BatchNorm statistics, so that eval-mode outputs depend on every buffer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.normal_(1.0, 0.2, generator=generator)
                module.bias.normal_(generator=generator)
    return model.eval()


def hub_env(hf_home: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    """Environment of a subprocess that talks to ``endpoint`` (or only to its cache) and never to the network."""
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("HF_TOKEN", None)
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_config) -> Path:
    """A pretraining checkpoint folder (encoder + SimCLR head) with a training summary, as training writes it."""
    folder = tmp_path_factory.mktemp("trained")
    trained_like(GigaSSLForContrastivePretraining(tiny_config())).save_pretrained(folder)
    summary = {"epochs": 3, "batch_size": 4, "tile_encoder": "resnet18-layer3", "learning_rate": 0.03}
    (folder / "training_summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="session")
def embeddings_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    rng = np.random.default_rng(0)
    ids = np.array([f"TCGA-{i:02d}-SLIDE" for i in range(12)])
    embeddings_dataset(ids, rng.normal(size=(12, 16)).astype(np.float32)).save_to_disk(str(folder))
    write_metadata(folder, METADATA)
    return folder


@pytest.fixture(scope="session")
def dry_runs(tmp_path_factory, model_dir, embeddings_dir) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dry_runs")
    return {
        "model": push_model(model_dir, MODEL_REPO, dry_run=out / "model"),
        "dataset": push_embeddings(embeddings_dir, DATASET_REPO, dry_run=out / "dataset"),
    }


def _commit_as_git_repo(folder: Path, repo: Path) -> None:
    shutil.copytree(folder, repo)
    git = ["git", "-c", "user.name=giga-ssl tests", "-c", "user.email=tests@example.invalid", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "dry-run folder"], check=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_repos(root: Path, repos: dict[str, Path]):
    """An olah Hub mirror in offline mode on localhost serving ``{"models/ORG/NAME" | "datasets/ORG/NAME": folder}``.

    Mirror layout: ``<mirrors-path>/<models|datasets>/<org>/<name>`` holds a git repo whose ``main`` branch is
    the repo's content. Yields the endpoint URL; the server is stopped on exit.
    """
    for repo, folder in repos.items():
        _commit_as_git_repo(folder, root / "mirrors" / repo)
    probe = next(iter(repos))
    port = _free_port()
    config = root / "olah.toml"
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{root / "cache"}"\n'
        f'mirrors-path = ["{root / "mirrors"}"]\n\n[accessibility]\noffline = true\n'
    )
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(root / "logs")],
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/api/{probe}/revision/main", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"olah did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory, dry_runs):
    """The dry-run model and dataset folders served by a local Hub-API server; yields its endpoint."""
    repos = {f"models/{MODEL_REPO}": dry_runs["model"], f"datasets/{DATASET_REPO}": dry_runs["dataset"]}
    with serve_repos(tmp_path_factory.mktemp("olah"), repos) as endpoint:
        yield endpoint
