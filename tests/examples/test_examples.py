"""Run each example of examples/ end to end and check what it produced."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModel

import giga_ssl_hf
from giga_ssl_hf.cli import main as cli_main

# The tests load the saved models with AutoModel, as a user does after registering the classes.
giga_ssl_hf.register_auto_classes()

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str):
    """Import examples/NAME.py as a module (the file names start with digits)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_have_docstrings_and_main():
    for name in ("01_embed_slides", "02_linear_probe", "03_train_giga_ssl", "04_heatmap"):
        module = load_example(name)
        assert module.__doc__ and "Run" in module.__doc__, name
        assert callable(module.main)
        assert module.DEFAULT_OUT.parts[0] == "examples_output"


@pytest.mark.slow
def test_01_embed_slides(tmp_path, capsys):
    example = load_example("01_embed_slides")
    out = tmp_path / "ex01"
    result = example.main(["--out", str(out), "--n-views", "20"])
    printed = capsys.readouterr().out
    assert "slide embedding: shape (128,)" in printed
    assert result["slide_id"] == "CMU-1-Small-Region" and result["n_tiles"] > 0
    embedding = np.load(out / "embedding.npy")
    assert embedding.shape == (128,) and np.isfinite(embedding).all()
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    assert (out / "features" / "exhaustive" / "state.json").exists()
    manifest = [json.loads(line) for line in (out / "features" / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in manifest] == ["ok"]
    model = AutoModel.from_pretrained(out / "model")
    assert isinstance(model, giga_ssl_hf.GigaSSLModel) and model.config.feature_dim == 256

    # Rerun with the saved model passed as --model: extraction is resumed (skipped), the embedding is the same.
    again = example.main(["--out", str(out), "--n-views", "20", "--model", str(out / "model")])
    assert again["model"] == str(out / "model")
    np.testing.assert_allclose(np.load(out / "embedding.npy"), embedding, atol=1e-6)


@pytest.mark.slow
def test_02_linear_probe(tmp_path, capsys):
    example = load_example("02_linear_probe")
    out = tmp_path / "ex02"
    run = example.main(["--out", str(out), "--n-slides", "40", "--n-views", "20", "--folds", "4"])
    printed = capsys.readouterr().out
    assert "4-fold CV" in printed and "AUC" in printed
    results = {r.train_size: r for r in run["results"]}
    assert set(results) == {"10", "20", "full"}
    assert all(len(r.splits) == 4 for r in results.values())
    assert 0.7 <= results["full"].mean <= 1.0  # planted classes survive a random-init encoder
    metrics = json.loads((out / "results" / "metrics.json").read_text())
    assert metrics["config"]["folds"] == 4
    assert (out / "results" / "metrics.csv").exists()
    plots = sorted(p.name for p in (out / "results").glob("*.png"))
    assert "fewshot_planted_classes.png" in plots and len(plots) == 4
    assert all((out / "results" / p).stat().st_size > 5000 for p in plots)
    ids, embeddings = giga_ssl_hf.load_embeddings(out / "embeddings")
    assert embeddings.shape == (40, 64) and len(ids) == 40

    # The same embeddings given explicitly (the paper's npy pair folder) give the same numbers.
    npy_only = tmp_path / "npy"
    npy_only.mkdir()
    for name in ("embeddings.npy", "ids.npy"):
        (npy_only / name).write_bytes((out / "embeddings" / name).read_bytes())
    rerun = example.main(
        [
            "--embeddings",
            str(npy_only),
            "--labels",
            run["labels"],
            "--out",
            str(tmp_path / "again"),
            "--folds",
            "4",
        ]
    )
    assert rerun["results"][-1].mean == pytest.approx(results["full"].mean)

    with pytest.raises(SystemExit) as exit_info:
        example.main(["--embeddings", str(npy_only), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_03_train_in_process_and_yaml_with_cli(tmp_path, monkeypatch, capsys):
    example = load_example("03_train_giga_ssl")
    out = tmp_path / "examples_output" / "03_train_giga_ssl"  # the paths train_tiny.yaml names, under tmp
    result = example.main(["--out", str(out), "--max_steps", "8", "--save_steps", "4"])
    assert "8 steps on 1 process(es)" in capsys.readouterr().out
    final = out / "run" / "final"
    model = AutoModel.from_pretrained(final)
    assert isinstance(model, giga_ssl_hf.GigaSSLModel)
    assert (model.config.feature_dim, model.config.hidden_dim) == (16, 64)  # train_tiny.yaml's model
    summary = json.loads((final / "training_summary.json").read_text())
    assert summary["steps"] == 8 and np.isfinite(summary["final_loss"])
    assert summary["arguments"]["temperature"] == 0.1 and summary["arguments"]["batch_size"] == 16
    assert result["embedding_shape"] == [64]
    assert (out / "run" / "checkpoints" / "checkpoint_8").is_dir()

    # examples/train_tiny.yaml as `giga-ssl train --config` reads it, from the folder holding examples_output/.
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", str(EXAMPLES / "train_tiny.yaml"), "--max_steps", "2", "--save_steps", "0"]
    assert cli_main(argv) == 2  # the example's run is there: never replaced silently
    assert cli_main([*argv, "--overwrite_output_dir"]) == 0
    assert json.loads((final / "training_summary.json").read_text())["steps"] == 2


def _launch(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_03_accelerate_launch_with_example_config(tmp_path):
    out = tmp_path / "ex03"
    repo = EXAMPLES.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--config_file", "examples/accelerate_config.yaml", "examples/03_train_giga_ssl.py"]
    result = _launch([*args, "--out", str(out), "--max_steps", "5", "--save_steps", "0"], env, repo)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 steps on 1 process(es)" in result.stdout
    assert AutoModel.from_pretrained(out / "run" / "final").config.hidden_dim == 64


@pytest.mark.slow
def test_03_two_cpu_processes(tmp_path):
    """The 2-process CPU launch documented in accelerate_config.yaml really runs two ranks."""
    out = tmp_path / "ex03"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    args = [
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "29531", "examples/03_train_giga_ssl.py",
        "--out", str(out), "--max_steps", "2", "--save_steps", "0",
    ]  # fmt: skip
    result = _launch(args, env, EXAMPLES.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 steps on 2 process(es), total batch 32" in result.stdout
    ranks = [json.loads((out / "run" / "logs" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["parameter_checksum"] == ranks[1]["parameter_checksum"]
    seen = [set(r["slides_seen"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 32 and not seen[0] & seen[1]  # one epoch of 64 slides, split
    assert AutoModel.from_pretrained(out / "run" / "final").config.hidden_dim == 64


@pytest.mark.slow
def test_04_heatmap(tmp_path, capsys):
    import pyarrow.parquet as pq
    from PIL import Image

    example = load_example("04_heatmap")
    out = tmp_path / "ex04"
    result = example.main(["--out", str(out)])  # the defaults: 24 slides, 60 SimCLR steps
    printed = capsys.readouterr().out
    assert "saved the labels probe (24 slides" in printed and "saved the labels probe (8 slides" in printed
    planted = result["planted_region"]
    # Tile scores single out the planted region (0.5 is chance); the benchmark measures it on a larger cohort.
    assert planted["tiles"]["n_slides"] == 12 and planted["tiles"]["mean_auc"] > 0.9
    # Occlusion, the model-agnostic check, is coarser: 0.78 with one OpenMP thread, 0.81 with two, on these 4 slides.
    assert planted["occlusion"]["n_slides"] == 4 and planted["occlusion"]["mean_auc"] > 0.7
    assert json.loads((out / "result.json").read_text()) == result
    assert "over the slide" in printed and "bare tile grid" in printed
    table = pq.read_table(out / "real_pixels" / "heatmaps" / "tile_scores.parquet").to_pandas()
    assert sorted(table["slide_id"].unique()) == ["CMU-1-Small-Region", "synthetic_region_0"]
    assert np.isfinite(table["score"]).all()
    for png in [planted["png"], *result["real_pixels"]["pngs"]]:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width == 1024
