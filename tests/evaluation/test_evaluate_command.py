import json
import os
import subprocess
import sys

import numpy as np
import pytest

from giga_ssl_hf.evaluation.evaluate_command import main

from .synthetic import planted, write_dataset, write_labels, write_split


def test_help_documents_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert text.startswith("usage: giga-ssl evaluate")
    for needle in (
        "(default: 5)",
        "(default: 0)",
        "25%",
        "examples:",
        "C=10",
        "HF_HUB_OFFLINE",
        "--hybrid-blocks",
    ):
        assert needle in text


def test_kfold_with_train_sizes_writes_metrics_and_plots(binary_task, tmp_path, capsys):
    folder, labels_csv, *_ = binary_task
    out = tmp_path / "out"
    code = main(
        [
            "--embeddings",
            str(folder),
            "--labels",
            str(labels_csv),
            "--folds",
            "3",
            "--train-sizes",
            "20,50%,full",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "task",
        "splits",
        "train",
        "size",
        "n_splits",
        "n_train",
        "n_test",
        "dropped",
        "AUC",
    ]
    assert [line.split()[3] for line in table[1:]] == ["20", "50%", "full"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["folds"] == 3 and metrics["config"]["train_sizes"] == "20,50%,full"
    entry = metrics["tasks"]["task"]["3-fold CV"]
    assert list(entry["train_sizes"]) == ["20", "50%", "full"]
    assert [s["n_train"] for s in entry["train_sizes"]["20"]["splits"]] == [20, 20, 20]
    assert entry["n_dropped"] == {"missing_embeddings": 0, "missing_labels": 0}
    assert entry["train_sizes"]["full"]["auc_mean"] > 0.98
    assert (
        (out / "metrics.csv")
        .read_text()
        .startswith("task,split_set,train_size,n_splits,n_train,n_test,auc_mean,auc_std")
    )
    assert sorted(p.name for p in out.glob("*.png")) == [
        "fewshot_task.png",
        "roc_task_3-fold_CV_20.png",
        "roc_task_3-fold_CV_50pct.png",
        "roc_task_3-fold_CV_full.png",
    ]


def test_several_tasks_with_their_split_folders(tmp_path, capsys):
    ids, x, labels2 = planted(90, seed=1)
    _, _, labels3 = planted(90, n_classes=3, seed=2)
    emb = write_dataset(tmp_path / "emb", ids, x[:, :3] + x[:, 3:6])
    for task in ("two", "three"):
        for k in range(2):
            order = np.random.default_rng(k).permutation(ids)
            write_split(
                tmp_path / "splitdirs" / task / "full" / f"split_{k}.csv", list(order[:60]), list(order[60:])
            )
            write_split(
                tmp_path / "splitdirs" / task / "30" / f"split_{k}.csv", list(order[:30]), list(order[60:])
            )
    args = [
        "--embeddings",
        str(emb),
        "--labels",
        str(write_labels(tmp_path / "two.csv", labels2)),
        str(write_labels(tmp_path / "three.csv", labels3)),
    ]
    args += [
        "--splits",
        str(tmp_path / "splitdirs" / "two"),
        str(tmp_path / "splitdirs" / "three"),
        "--out",
        str(tmp_path / "out"),
        "--no-plots",
    ]
    assert main(args) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [
        ["two", "30", "full"],
        ["two", "full", "full"],
        ["three", "30", "full"],
        ["three", "full", "full"],
    ]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["tasks"]
    assert metrics["three"]["full"]["classes"] == ["class_0", "class_1", "class_2"]
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("slide,diagnosis\nTCGA-0000,a\n", "needs columns 'ID' and 'label'"),
        ("ID,label\nTCGA-0000,a\nTCGA-0001,a\n", "at least two classes"),
    ],
)
def test_bad_labels_exit_2_with_a_message(binary_task, tmp_path, capsys, content, message):
    folder, *_ = binary_task
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    assert main(["--embeddings", str(folder), "--labels", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("giga-ssl evaluate: error:") and message in err and "Traceback" not in err


def test_usage_errors(binary_task, tmp_path, capsys):
    folder, labels_csv, *_ = binary_task
    for args, message in (
        (["--splits", "a", "b"], "one folder or one per labels file"),
        (["--folds", "1"], "at least 2"),
    ):
        assert main(["--embeddings", str(folder), "--labels", str(labels_csv), *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["--embeddings", str(tmp_path / "nothing"), "--labels", str(labels_csv)]) == 2
    assert "not a slide-embeddings folder" in capsys.readouterr().err
    assert main(["--embeddings", str(folder), "--labels", str(labels_csv), "--train-sizes", "ten"]) == 2
    assert "training size 'ten'" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_works_offline(binary_task, tmp_path):
    """`giga-ssl evaluate` as users run it, with the Hub unreachable: the AUC module loads from the package."""
    folder, labels_csv, *_ = binary_task
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "giga_ssl_hf.cli",
            "evaluate",
            "--embeddings",
            str(folder),
            "--labels",
            str(labels_csv),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "5-fold CV" in completed.stdout and "±" in completed.stdout


def _hybrid_folder(folder, n=90):
    """Hybrid embeddings as giga-ssl embed --concat-mean-pool writes them (the metadata tells the blocks)."""
    from giga_ssl_hf.inference.embed_folder import save_embeddings

    from .synthetic import HYBRID_BLOCKS, hybrid_embeddings

    ids, x, labels = hybrid_embeddings(n, "encoder")
    mean_pool_dim = HYBRID_BLOCKS["mean-pool"]
    metadata = {
        "concat_mean_pool": True,
        "embedding_dim": x.shape[1],
        "mean_pool_mean": [0.0] * mean_pool_dim,
    }
    save_embeddings(folder, ids, x, metadata | {"mean_pool_std": [1.0] * mean_pool_dim}, npy=False)
    return folder, labels


def test_hybrid_embeddings_choose_their_block_by_default(tmp_path, capsys):
    folder, labels = _hybrid_folder(tmp_path / "hybrid")
    argv = ["--embeddings", str(folder), "--labels", str(write_labels(tmp_path / "t.csv", labels))]
    argv += ["--folds", "3", "--standardize"]
    assert main([*argv, "--out", str(tmp_path / "select"), "--save-probe", str(tmp_path / "probe")]) == 0
    out = capsys.readouterr().out
    assert "embeddings of 2 blocks (encoder (8 dims), mean-pool (64 dims)): block chosen per split" in out
    assert "encoder 3 of 3 splits" in out and "block encoder" in out  # the splits and the saved probe
    metrics = json.loads((tmp_path / "select" / "metrics.json").read_text())
    splits = metrics["tasks"]["t"]["3-fold CV"]["train_sizes"]["full"]["splits"]
    assert [s["block"] for s in splits] == ["encoder"] * 3
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["block"] == "encoder" and probe["column_blocks"] == {"encoder": 8, "mean-pool": 64}
    # --hybrid-blocks both: the probe of earlier versions, on every column.
    assert main([*argv, "--hybrid-blocks", "both", "--out", str(tmp_path / "both")]) == 0
    assert "block chosen" not in capsys.readouterr().out
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    splits = metrics["tasks"]["t"]["3-fold CV"]["train_sizes"]["full"]["splits"]
    assert [s["block"] for s in splits] == [None] * 3


def test_embeddings_of_several_top_site_fractions_choose_their_scale(tmp_path, capsys):
    """The blocks recorded by embed --top-site-fractions are chosen among as a hybrid's are: here the signal is in
    the second fraction's block only."""
    from giga_ssl_hf.inference.embed_folder import save_embeddings

    from .synthetic import hybrid_embeddings

    ids, x, labels = hybrid_embeddings(
        90, "mean-pool"
    )  # an 8-d block of noise, then a 64-d block with signal
    metadata = {"top_site_fractions": [0.03, 0.1], "column_blocks": [["top-3%", 8], ["top-10%", 64]]}
    save_embeddings(tmp_path / "scales", ids, x, metadata, npy=False)
    argv = [
        "--embeddings",
        str(tmp_path / "scales"),
        "--labels",
        str(write_labels(tmp_path / "t.csv", labels)),
    ]
    assert main([*argv, "--folds", "3", "--standardize", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "embeddings of 2 blocks (top-3% (8 dims), top-10% (64 dims)): block chosen per split" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    splits = metrics["tasks"]["t"]["3-fold CV"]["train_sizes"]["full"]["splits"]
    assert all("top-10%" in s["block"] for s in splits)  # alone, or with the noise block
