"""`giga-ssl demo` / `giga-ssl pipeline` end to end, with stage skipping and a broken slide in the input."""

import json
import logging
import shutil
from pathlib import Path

import pytest
from datasets import load_from_disk
from transformers import AutoModel

import giga_ssl_hf
from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.demo import SAMPLE_SLIDE
from giga_ssl_hf.pipeline import PipelineSettings, _stage_settings
from giga_ssl_hf.training.arguments import DataArguments, ModelArguments
from giga_ssl_hf.wsi.synthetic import write_synthetic_slide

# The tests load the saved models with AutoModel, as a user does after registering the classes.
giga_ssl_hf.register_auto_classes()

pytestmark = pytest.mark.slow

# Small enough for ~20 s on 2 CPU cores: 3 synthetic slides per class + the real CMU crop.
DEMO_ARGS = [
    "--slides-per-class",
    "3",
    "--train.max-steps",
    "10",
    "--train.batch-size",
    "4",
    "--embed.n-views",
    "5",
    "--evaluate.folds",
    "2",
]


def _stage_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "giga_ssl_hf.pipeline"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert cli_main(["demo", "--out", str(out), *DEMO_ARGS]) == 0
    return out


def test_demo_outputs(demo_run):
    out = demo_run
    embeddings = load_from_disk(str(out / "embeddings"))
    slide_ids = set(embeddings["slide_id"])
    assert len(slide_ids) == 7 and SAMPLE_SLIDE.removesuffix(".svs") in slide_ids
    assert len(embeddings[0]["embedding"]) == 64  # DEMO_SETTINGS.hidden_dim
    assert (out / "embeddings" / "embeddings.npy").exists() and (out / "embeddings" / "ids.npy").exists()

    metrics = json.loads((out / "results" / "metrics.json").read_text())
    assert metrics["config"]["folds"] == 2
    assert metrics["config"]["standardize"] is True
    probe = metrics["tasks"]["labels"]["2-fold CV"]  # task = the labels CSV's stem
    assert probe["classes"] == ["lesion", "no_lesion"]
    assert 0.0 <= probe["train_sizes"]["full"]["auc_mean"] <= 1.0
    assert [s["n_test"] for s in probe["train_sizes"]["full"]["splits"]] == [3, 3]  # CMU slide has no label
    for baseline in ("untrained", "mean-pool"):  # same splits, same probe
        splits = metrics["baselines"][baseline]["labels"]["2-fold CV"]["train_sizes"]["full"]["splits"]
        assert [s["n_test"] for s in splits] == [3, 3]
    csv = (out / "results" / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("embedding,task") and [line.split(",")[0] for line in csv[1:]] == [
        "trained",
        "untrained",
        "mean-pool",
    ]
    rocs = list((out / "results").glob("roc_*.png"))
    assert len(rocs) == 1 and rocs[0].stat().st_size > 5000

    model = AutoModel.from_pretrained(out / "model" / "final")
    assert isinstance(model, giga_ssl_hf.GigaSSLModel) and model.config.hidden_dim == 64
    assert (out / "features" / "thumbnails").is_dir()

    # The resolved settings, a mapping per stage, less what the pipeline sets itself (paths, seeds, ...).
    config = json.loads((out / "pipeline_config.json").read_text())
    assert (config["seed"], config["train"]["max_steps"], config["train"]["hidden_dim"]) == (0, 10, 64)
    assert config["extract"]["tile_sampling"] == config["train"]["tile_sampling"] == "window"
    assert (config["embed"]["n_views"], config["evaluate"]["folds"]) == (5, 2)
    assert (
        "output_dir" not in config["train"]
        and "out" not in config["embed"]
        and "seed" not in config["extract"]
    )


def test_demo_rerun_skips_finished_stages(demo_run, caplog, capsys):
    out = demo_run
    watched = [
        out / "model" / "final" / "model.safetensors",
        out / "embeddings" / "state.json",
        out / "embeddings" / "embeddings.npy",
        out / "results" / "metrics.json",
    ]
    before = {path: path.stat().st_mtime_ns for path in watched}
    caplog.set_level(logging.INFO, logger="giga_ssl_hf")
    assert cli_main(["demo", "--out", str(out), *DEMO_ARGS]) == 0
    messages = _stage_messages(caplog)
    for stage in ("train", "embed", "evaluate"):
        assert any(m.startswith(f"stage {stage}: complete already") for m in messages), (stage, messages)
    assert any("already extracted" in r.getMessage() for r in caplog.records)
    assert {path: path.stat().st_mtime_ns for path in watched} == before
    assert "Giga-SSL pipeline finished" in capsys.readouterr().out

    # The saved settings reload as they were: every stage is found complete.
    caplog.clear()
    config = out / "pipeline_config.json"
    assert cli_main(["demo", "--out", str(out), "--slides-per-class", "3", "--config", str(config)]) == 0
    messages = _stage_messages(caplog)
    assert all(
        any(m.startswith(f"stage {s}: complete already") for m in messages) for s in ("train", "embed")
    )

    # A missing stage output is redone, and only that stage.
    shutil.rmtree(out / "results")
    caplog.clear()
    assert cli_main(["demo", "--out", str(out), *DEMO_ARGS]) == 0
    messages = _stage_messages(caplog)
    assert any(m.startswith("stage evaluate: 2-fold linear probe") for m in messages), messages
    assert any(m.startswith("stage embed: complete already") for m in messages)
    assert (out / "results" / "metrics.json").exists()
    assert {path: path.stat().st_mtime_ns for path in watched[:3]} == {p: before[p] for p in watched[:3]}


def test_changed_settings_or_slides_redo_the_stages_they_feed(demo_run, caplog):
    out = demo_run
    model_before = (out / "model" / "final" / "model.safetensors").stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="giga_ssl_hf")
    # More views per slide: the embeddings and the metrics are redone, the trained model is kept.
    assert cli_main(["demo", "--out", str(out), *DEMO_ARGS, "--embed.n-views", "6"]) == 0
    messages = _stage_messages(caplog)
    assert any(m.startswith("stage train: complete already") for m in messages), messages
    assert any(m.startswith("stage embed: inputs or settings changed") for m in messages), messages
    assert any(m.startswith("stage evaluate: inputs or settings changed") for m in messages), messages
    assert json.loads((out / "embeddings" / "giga_ssl_metadata.json").read_text())["n_views"] == 6
    assert (out / "model" / "final" / "model.safetensors").stat().st_mtime_ns == model_before

    # One more slide per class: training, embedding and evaluation all see it.
    caplog.clear()
    assert (
        cli_main(["demo", "--out", str(out), *DEMO_ARGS, "--embed.n-views", "6", "--slides-per-class", "4"])
        == 0
    )
    messages = _stage_messages(caplog)
    assert any(m.startswith("stage train: inputs or settings changed") for m in messages), messages
    assert len(load_from_disk(str(out / "embeddings"))) == 9
    assert (out / "model" / "final" / "model.safetensors").stat().st_mtime_ns != model_before


def test_pipeline_with_a_broken_slide(tmp_path, shared_dir, caplog):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copyfile(shared_dir / "fixtures" / "wsi" / "broken.svs", slides / "broken.svs")
    shutil.copyfile(
        shared_dir / "fixtures" / "wsi" / "CMU-1-Small-Region.svs", slides / "CMU-1-Small-Region.svs"
    )
    for index in range(2):
        write_synthetic_slide(slides / f"synthetic_{index}.tiff", 2000, 2000, mpp=0.5, seed=index)
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="giga_ssl_hf")
    argv = ["pipeline", str(slides), "--out", str(out), "--extract.no-pretrained", "--extract.n-aug", "2",
            "--extract.n-tiles-per-aug", "16", "--train.max-steps", "3", "--train.batch-size", "2",
            "--train.hidden-dim", "32", "--embed.n-views", "5"]  # fmt: skip
    assert cli_main(argv) == 0

    manifest = {
        r["slide_id"]: r
        for r in map(json.loads, (out / "features" / "manifest.jsonl").read_text().splitlines())
    }
    assert set(manifest) == {"broken", "CMU-1-Small-Region", "synthetic_0", "synthetic_1"}
    assert manifest["broken"]["status"] == "failed" and manifest["broken"]["error"]
    assert all(manifest[s]["status"] == "ok" for s in manifest if s != "broken")
    assert any("broken" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)

    ids = set(load_from_disk(str(out / "embeddings"))["slide_id"])
    assert ids == {"CMU-1-Small-Region", "synthetic_0", "synthetic_1"}
    assert AutoModel.from_pretrained(out / "model" / "final").config.hidden_dim == 32
    assert not (out / "results").exists()  # no --labels: evaluation skipped


def test_fingerprints_follow_what_changes_each_stages_output(tmp_path):
    """A stage's fingerprint holds its inputs, the seed and its settings less those marked as not changing its
    output (logging) and those the pipeline sets itself (paths); a change redoes that stage and the later ones."""
    from dataclasses import replace

    from giga_ssl_hf.pipeline import PipelineSettings, PipelineState, _fingerprints

    state, extracted = PipelineState(tmp_path), [("a", 3), ("b", 4)]
    labels = tmp_path / "labels.csv"
    labels.write_text("ID,label\na,x\nb,y\n")
    settings = PipelineSettings()
    fingerprints = _fingerprints(state, settings, extracted, str(labels))
    assert set(fingerprints) == {"features", "train", "embed", "evaluate"}
    assert len(set(fingerprints.values())) == 4

    quiet = replace(settings, training=replace(settings.training, report_to="none", logging_steps=1))
    assert _fingerprints(state, quiet, extracted, str(labels)) == fingerprints
    elsewhere = replace(settings, training=replace(settings.training, output_dir="/elsewhere"))
    assert _fingerprints(state, elsewhere, extracted, str(labels)) == fingerprints
    warmer = replace(settings, model=replace(settings.model, temperature=0.1))
    changed = _fingerprints(state, warmer, extracted, str(labels))
    assert changed["features"] == fingerprints["features"]
    assert changed["train"] != fingerprints["train"] and changed["evaluate"] != fingerprints["evaluate"]
    hybrid = replace(settings, embedding=replace(settings.embedding, concat_mean_pool=True))
    changed = _fingerprints(state, hybrid, extracted, str(labels))
    assert changed["train"] == fingerprints["train"] and changed["embed"] != fingerprints["embed"]
    reseeded = replace(settings, options=replace(settings.options, seed=1))
    changed = _fingerprints(state, reseeded, extracted, str(labels))
    assert all(changed[stage] != fingerprints[stage] for stage in fingerprints)
    more_slides = _fingerprints(state, settings, [*extracted, ("c", 5)], str(labels))
    assert all(more_slides[stage] != fingerprints[stage] for stage in fingerprints)


@pytest.mark.parametrize(
    ("train_sampling", "pooling", "embedding"),
    [("random", None, "random"), ("window", None, "window"), ("window-pair", None, "window"),
     ("window-pair", "max", "all"), ("random", "max", "all"), ("window-pair", "top", "all")],
)  # fmt: skip
def test_the_pipeline_embeds_as_the_model_was_trained(train_sampling, pooling, embedding):
    settings = PipelineSettings(
        data=DataArguments(tile_sampling=train_sampling), model=ModelArguments(slide_pooling=pooling)
    )
    paths = {name: Path(name) for name in ("features", "model", "embeddings")}
    assert _stage_settings(settings, paths).embedding.tile_sampling == embedding
