import configparser
import fnmatch
import json
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import giga_ssl_hf
from giga_ssl_hf.evaluation.plots import FPR_GRID, plot_all, plot_few_shot, plot_roc, roc_on_grid
from giga_ssl_hf.evaluation.probe import METRIC_PATH, evaluate_embeddings
from giga_ssl_hf.evaluation.report import format_table, metrics_dict, summary_frame

from .synthetic import planted


@pytest.fixture(scope="module")
def results():
    ids, x, labels = planted(90, n_classes=3, signal=1.5)
    return evaluate_embeddings((ids, x), labels, folds=3, train_sizes="15,full", task="toy")


def test_metric_module_is_package_data():
    """setup.cfg's package_data glob must ship the metric script, or installed copies cannot load it."""
    config = configparser.ConfigParser()
    config.read(Path(giga_ssl_hf.__file__).parents[1] / "setup.cfg")
    patterns = config["options.package_data"]["giga_ssl_hf"].replace(",", " ").split()
    script = (METRIC_PATH / "slide_auc.py").relative_to(Path(giga_ssl_hf.__file__).parent).as_posix()
    assert (METRIC_PATH / "slide_auc.py").is_file()
    assert any(fnmatch.fnmatch(script, pattern) for pattern in patterns)


def test_summary_and_json(results):
    frame = summary_frame(results)
    assert frame[["train_size", "n_splits", "n_train", "n_test"]].values.tolist() == [
        ["15", 3, 15, 30],
        ["full", 3, 60, 30],
    ]
    payload = json.loads(json.dumps(metrics_dict(results, {"seed": 0})))
    entry = payload["tasks"]["toy"]["3-fold CV"]
    full = entry["train_sizes"]["full"]
    assert full["auc_mean"] == pytest.approx(np.mean([s["auc"] for s in full["splits"]]))
    assert full["auc_std"] == pytest.approx(np.std([s["auc"] for s in full["splits"]]))
    assert payload["config"] == {"seed": 0} and entry["ids_dropped"] == {
        "missing_embeddings": [],
        "missing_labels": [],
    }
    assert "± " in format_table(results)


def test_roc_on_grid():
    perfect = roc_on_grid(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect[0] == 0 and np.all(perfect[1:] == 1)
    inverted = roc_on_grid(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert inverted[-2] == 0 and inverted[-1] == 1
    three = roc_on_grid(np.array([0, 1, 2]), np.eye(3))
    assert three.shape == FPR_GRID.shape and np.all(three[1:] == 1)


def test_plots_are_written(results, tmp_path):
    roc = plot_roc(results[0], tmp_path / "roc.png")
    few = plot_few_shot(results, tmp_path / "few.png", "toy")
    for path in (roc, few):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 400


@contextmanager
def file_size_limit(limit: int):
    """Limit (bytes) the size of the files this process writes, as a full disk would: writes past it fail
    (EFBIG). Lifted on leaving the block, before pytest writes its report (a file stdout would fail too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_plot_failing_mid_write_leaves_the_previous_one(results, tmp_path):
    """The ROC plots, few-shot curves and heatmap PNGs all go through the same atomic writer."""
    path = plot_roc(results[0], tmp_path / "roc.png")
    before = path.read_bytes()
    with file_size_limit(len(before) // 4), pytest.raises(OSError):
        plot_roc(results[1], path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["roc.png"]


def test_csv_round_trip(results, tmp_path):
    summary_frame(results).to_csv(tmp_path / "m.csv", index=False)
    assert pd.read_csv(tmp_path / "m.csv")["auc_mean"].tolist() == pytest.approx([r.mean for r in results])


def test_plot_all_names_its_files(results, tmp_path):
    ids, x, labels = planted(60, seed=4)
    other = evaluate_embeddings((ids, x), labels, folds=2, train_sizes="10,full", task="other task")
    names = sorted(p.name for p in plot_all(results + other, tmp_path))
    assert names == [
        "fewshot_all_tasks.png",
        "fewshot_other_task.png",
        "fewshot_toy.png",
        "roc_other_task_2-fold_CV_10.png",
        "roc_other_task_2-fold_CV_full.png",
        "roc_toy_3-fold_CV_15.png",
        "roc_toy_3-fold_CV_full.png",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
