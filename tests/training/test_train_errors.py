"""Bad inputs to `giga-ssl train`: refused before anything is written or replaced (issue 10)."""

import os

import pytest
import torch

from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
from giga_ssl_hf.training.arguments import parse_arguments
from giga_ssl_hf.training.run_settings import run_settings
from giga_ssl_hf.training.train import main

TINY = ["--hidden_dim", "32", "--projection_dims", "32", "16", "--report_to", "none", "--batch_size", "4"]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    dataset, _ = synthetic_tile_dataset(n_slides=6, feature_dim=16, n_aug=2, tiles_per_slide=5)
    path = tmp_path_factory.mktemp("features") / "augmented"
    dataset.save_to_disk(str(path))
    return path


def train_into(features, output_dir, *extra) -> int:
    return main(["--features", str(features), "--output_dir", str(output_dir), *TINY, *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("giga-ssl train: error: "), err
    return err


def test_a_finished_run_is_never_replaced_silently(features, tmp_path, capsys, snapshot, load_strict_json):
    run = tmp_path / "run"
    assert train_into(features, run, "--max_steps", "2", "--save_steps", "1") == 0
    summary = load_strict_json((run / "final" / "training_summary.json").read_text())
    assert summary["steps"] == 2
    capsys.readouterr()
    before = snapshot(run)
    assert train_into(features, run, "--max_steps", "3") == 2
    err = one_line_error(capsys)
    assert "already holds a training run (final/, checkpoints/)" in err
    assert "--resume-from-checkpoint latest" in err and "--overwrite-output-dir" in err
    assert snapshot(run) == before
    assert train_into(features, run, "--max_steps", "3", "--overwrite_output_dir", "--save_steps", "0") == 0
    assert load_strict_json((run / "final" / "training_summary.json").read_text())["steps"] == 3
    assert not (run / "checkpoints").exists()  # the earlier run's checkpoints went with it


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_max_steps_below_one_is_refused(steps, features, tmp_path, capsys):
    assert train_into(features, tmp_path / "run", "--max_steps", steps) == 2
    assert f"--max-steps must be at least 1, got {steps}" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_an_unsafe_layer4_file_is_refused_in_one_line(features, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "code-ran"),))

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "evil.pth")
    code = train_into(
        features, tmp_path / "run", "--max_steps", "1", "--init_layer4", str(tmp_path / "evil.pth")
    )
    assert code == 2
    assert "evil.pth: refused to load" in one_line_error(capsys)
    assert not (tmp_path / "code-ran").exists() and not (tmp_path / "run" / "final").exists()


def test_a_resume_keeps_the_recipe_of_its_run(features, tmp_path, capsys, snapshot, load_strict_json):
    run = tmp_path / "run"
    assert train_into(features, run, "--max_steps", "2", "--save_steps", "2") == 0
    recorded = load_strict_json((run / "training_settings.json").read_text())
    assert recorded["hidden_dim"] == 32 and recorded["num_processes"] == 1
    resume = ["--resume_from_checkpoint", "latest", "--save_steps", "2"]
    capsys.readouterr()
    before = snapshot(run)
    assert train_into(features, run, *resume, "--max_steps", "4", "--hidden_dim", "16", "--seed", "3") == 2
    err = one_line_error(capsys)
    assert "hidden_dim 32 -> 16, seed 0 -> 3" in err and "--allow-changed-settings" in err
    assert snapshot(run) == before
    # How long, logging and checkpoint spacing may change: the run goes on.
    assert train_into(features, run, *resume, "--max_steps", "4", "--logging_steps", "1") == 0
    assert load_strict_json((run / "final" / "training_summary.json").read_text())["steps"] == 4
    # A change of recipe when asked for; the run's settings are then the new ones.
    capsys.readouterr()
    assert train_into(features, run, *resume, "--max_steps", "6", "--temperature", "0.1") == 2
    one_line_error(capsys)
    changed = [*resume, "--max_steps", "6", "--temperature", "0.1", "--allow-changed-settings"]
    assert train_into(features, run, *changed) == 0
    assert load_strict_json((run / "training_settings.json").read_text())["temperature"] == 0.1
    # The recorded settings reload as a --config file, as they were.
    reloaded = parse_arguments(["--config", str(run / "training_settings.json")])
    assert run_settings(*reloaded) == load_strict_json((run / "training_settings.json").read_text())
