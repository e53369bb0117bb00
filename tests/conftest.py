import json
from pathlib import Path

import pytest

from giga_ssl_hf.runtime import prefer_passive_openmp_wait

# As the commands do, before torch loads OpenMP: idle threads sleep. Spinning ones, beside any other process on
# the 2 cores, made the suite's many tiny ops wait whole time slices (an occlusion test: 3 s -> 160 s).
prefer_passive_openmp_wait()

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED} (CI lays it out beside the repository)")
    return SHARED


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): compared before and after a refused command."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def snapshot():
    return _snapshot


def strict_json(text: str):
    """``json.loads`` that refuses NaN / Infinity, as strict JSON readers do."""

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def load_strict_json():
    return strict_json


def _tiny_config(**overrides):
    from giga_ssl_hf import GigaSSLConfig

    return GigaSSLConfig(**{"feature_dim": 8, "hidden_dim": 16, "projection_dims": (16, 16, 8), **overrides})


@pytest.fixture(scope="session")
def tiny_config():
    """A factory of tiny GigaSSLConfigs (8 features -> 16 -> projection 16, 16, 8); keywords override."""
    return _tiny_config
