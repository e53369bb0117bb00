"""End to end: the reproduction script on synthetic embeddings for the real IDs of the paper's tables."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO.parent / "shared" / "reference" / "gigassl-tcga"
TASKS = ("lung", "kidney", "brca", "mhrd", "thrd", "tnbc")

pytestmark = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"paper reference tables not found at {REFERENCE}"
)


def load_script():
    spec = importlib.util.spec_from_file_location(
        "reproduce_tcga_linear_probe", REPO / "scripts" / "reproduce_tcga_linear_probe.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_embeddings(
    folder: Path, dim: int = 16, radius: float = 2.0, seed: int = 0
) -> dict[str, pd.Series]:
    """Embeddings for every slide of the six tables; each task's labels planted in its own 2 dimensions.

    The breast tasks share slides, so each task gets separate dimensions: class k of a task sits at
    ``radius`` along angle 2 pi k / C in that task's plane, plus unit Gaussian noise everywhere.
    """
    tables = {
        task: pd.read_csv(REFERENCE / "tables" / f"{task}.csv", dtype=str).set_index("ID")["label"]
        for task in TASKS
    }
    ids = sorted(set().union(*(t.index for t in tables.values())))
    row = {slide: i for i, slide in enumerate(ids)}
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(ids), dim)).astype(np.float32)
    for t, labels in enumerate(tables.values()):
        classes = sorted(labels.unique())
        angle = 2 * np.pi * labels.map({c: k / len(classes) for k, c in enumerate(classes)}).to_numpy(float)
        rows = labels.index.map(row).to_numpy()
        x[rows, 2 * t] += radius * np.cos(angle)
        x[rows, 2 * t + 1] += radius * np.sin(angle)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", x)
    np.save(folder / "ids.npy", np.asarray(ids, dtype=str))
    return tables


@pytest.mark.slow
def test_reproduction_on_planted_embeddings(tmp_path, capsys):
    tables = synthetic_embeddings(tmp_path / "emb")
    out = tmp_path / "out"
    # Plots are left to the evaluation tests: 32 PNGs would double this test's time.
    assert load_script().main(["--embeddings", str(tmp_path / "emb"), "--out", str(out), "--no-plots"]) == 0

    printed = capsys.readouterr().out
    header, *rows = printed.strip().splitlines()
    assert header.split() == ["task", "50", "100", "250", "25p", "full", "reported"]
    assert [r.split()[0] for r in rows] == list(TASKS)

    metrics = json.loads((out / "metrics.json").read_text())["tasks"]
    assert list(metrics) == list(TASKS)
    for task in TASKS:
        split_dirs = sorted(p for p in (REFERENCE / "splitdirs" / task).iterdir() if p.is_dir())
        assert sorted(metrics[task]) == sorted(p.name for p in split_dirs)
        for split_dir in split_dirs:
            entry = metrics[task][split_dir.name]
            (result,) = entry["train_sizes"].values()
            files = sorted(split_dir.glob("split_*.csv"), key=lambda p: int(p.stem.split("_")[1]))
            assert [s["name"] for s in result["splits"]] == [p.stem for p in files]
            for split, path in zip(result["splits"], files):
                csv = pd.read_csv(path, dtype=str)
                known = [csv[c].dropna().isin(tables[task].index).sum() for c in ("train", "test")]
                assert [split["n_train"], split["n_test"]] == known
            assert entry["classes"] == sorted(tables[task].unique())
            assert result["auc_mean"] > 0.9, (task, split_dir.name, result["auc_mean"])
    # The kidney "full" splits list 7 slides (70 times over 10 splits) that its table does not label.
    assert metrics["kidney"]["full"]["n_dropped"] == {"missing_embeddings": 0, "missing_labels": 7}

    summary = pd.read_csv(out / "metrics.csv")
    assert len(summary) == 25 and (summary["n_splits"] == 10).all()
    assert not list(out.glob("*.png"))


def test_missing_reference_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "emb").mkdir()
    np.save(tmp_path / "emb" / "embeddings.npy", np.zeros((2, 4), np.float32))
    np.save(tmp_path / "emb" / "ids.npy", np.array(["a", "b"]))
    args = [
        "--embeddings",
        str(tmp_path / "emb"),
        "--reference-dir",
        str(tmp_path / "nowhere"),
        "--tasks",
        "lung",
    ]
    assert load_script().main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("reproduce_tcga_linear_probe: error:") and "nowhere" in err
