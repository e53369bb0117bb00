"""Round trip through a real Hub-API server: the dry-run folders, served by olah on localhost, load with
``AutoModel`` (with the package, and as remote code without it) and ``load_embeddings``; then again from the
HF cache alone with ``HF_HUB_OFFLINE=1``.

``huggingface_hub`` reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` at import, so each client runs in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from giga_ssl_hf import GigaSSLForContrastivePretraining, load_embeddings

from .conftest import DATASET_REPO, MODEL_REPO, hub_env

pytestmark = pytest.mark.slow

WITH_PACKAGE = """
import sys
from pathlib import Path
import numpy as np
import torch
from transformers import AutoModel
import giga_ssl_hf
from giga_ssl_hf.cli import main

out = Path(sys.argv[1])
giga_ssl_hf.register_auto_classes()
model = AutoModel.from_pretrained({model!r}).eval()
assert type(model).__module__.startswith("giga_ssl_hf"), type(model).__module__
with torch.no_grad():
    torch.save(model(**torch.load(out.parent / "inputs.pt")).slide_embedding, out / "package.pt")
ids, embeddings = giga_ssl_hf.load_embeddings({dataset!r})
np.save(out / "ids.npy", ids)
np.save(out / "embeddings.npy", embeddings)
dataset = giga_ssl_hf.load_embeddings({dataset!r}, as_dataset=True)
np.save(out / "dataset_embeddings.npy", np.asarray(dataset.with_format("numpy")["embedding"]))
assert main(["download", {dataset!r}, "--out", str(out / "download"), "--npy"]) == 0
"""

WITHOUT_PACKAGE = """
import sys
sys.modules["giga_ssl_hf"] = None  # any import of the package fails
from pathlib import Path
import datasets
import numpy as np
import torch
from transformers import AutoModel

out = Path(sys.argv[1])
model = AutoModel.from_pretrained({model!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    torch.save(model(**torch.load(out.parent / "inputs.pt")).slide_embedding, out / "remote.pt")
rows = datasets.load_dataset({dataset!r}, split="train").with_format("numpy")
np.save(out / "hf_datasets_embeddings.npy", np.asarray(rows["embedding"]))
"""


def _run(script: str, out, env) -> None:
    out.mkdir()
    code = textwrap.dedent(script.format(model=MODEL_REPO, dataset=DATASET_REPO))
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=env, cwd=out, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def expected(tmp_path_factory, model_dir, embeddings_dir):
    """Outputs of the local model on fixed inputs, and the local embeddings."""
    root = tmp_path_factory.mktemp("clients")
    generator = torch.Generator().manual_seed(3)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    inputs = {
        "tile_features": torch.randn(2, 7, 8, generator=generator),
        "tile_coords": torch.randint(0, 12, (2, 7, 2), generator=generator) * 448,
        "tile_mask": mask,
        "patch_size_level0": 448,
    }
    torch.save(inputs, root / "inputs.pt")
    model = GigaSSLForContrastivePretraining.from_pretrained(model_dir).gigassl.eval()
    with torch.no_grad():
        embedding = model(**inputs).slide_embedding
    ids, embeddings = load_embeddings(embeddings_dir)
    return root, embedding, ids, embeddings


def _check(out, expected, remote: bool) -> None:
    _, embedding, ids, embeddings = expected
    if remote:
        assert torch.equal(torch.load(out / "remote.pt"), embedding)
        np.testing.assert_array_equal(np.load(out / "hf_datasets_embeddings.npy"), embeddings)
        return
    assert torch.equal(torch.load(out / "package.pt"), embedding)
    np.testing.assert_array_equal(np.load(out / "ids.npy"), ids)
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), embeddings)
    np.testing.assert_array_equal(np.load(out / "dataset_embeddings.npy"), embeddings)
    np.testing.assert_array_equal(np.load(out / "download" / "embeddings.npy"), embeddings)
    np.testing.assert_array_equal(np.load(out / "download" / "ids.npy", allow_pickle=False), ids)
    assert (out / "download" / "giga_ssl_metadata.json").exists()


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    return tmp_path_factory.mktemp("hf_home")


def test_model_and_embeddings_load_from_the_hub_server(hub_server, hf_home, expected):
    root = expected[0]
    env = hub_env(hf_home, hub_server)
    _run(WITH_PACKAGE, root / "online_package", env)
    _check(root / "online_package", expected, remote=False)
    _run(WITHOUT_PACKAGE, root / "online_remote", env)
    _check(root / "online_remote", expected, remote=True)


def test_the_hf_cache_serves_them_offline(hub_server, hf_home, expected):
    root = expected[0]
    if not (root / "online_remote").exists():
        pytest.skip("needs the cache filled by test_model_and_embeddings_load_from_the_hub_server")
    # A dead endpoint: anything not answered by the cache fails.
    env = hub_env(hf_home, "http://127.0.0.1:9", offline=True)
    _run(WITH_PACKAGE, root / "offline_package", env)
    _check(root / "offline_package", expected, remote=False)
    _run(WITHOUT_PACKAGE, root / "offline_remote", env)
    _check(root / "offline_remote", expected, remote=True)
