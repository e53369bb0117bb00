import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from giga_ssl_hf import GigaSSLModel
from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
from giga_ssl_hf.training.arguments import parse_arguments
from giga_ssl_hf.training.train import main, train
from giga_ssl_hf.training.views import SlideViews

TINY = ["--hidden_dim", "32", "--projection_dims", "32", "32", "16", "--report_to", "none"]


def run_train(features, output_dir, *extra):
    argv = ["--features", str(features), "--output_dir", str(output_dir), *TINY, *extra]
    return train(*parse_arguments(argv))


def probe_auc(model, features_dir, labels, n_views=4):
    """Cross-validated linear-probe AUC of the classes on mean-of-views embeddings."""
    views = SlideViews(datasets.load_from_disk(str(features_dir)), n_tiles=5, n_views=n_views, seed=123)
    batch = views.sample(np.arange(len(views)))
    with torch.no_grad():
        embeddings = model(
            batch["tile_features"].flatten(0, 1), batch["tile_coords"].flatten(0, 1), patch_size_level0=448
        ).slide_embedding
    embeddings = torch.nn.functional.normalize(embeddings.unflatten(0, (len(views), n_views)).mean(1), dim=1)
    y = np.array([labels[s] for s in views.slide_ids])
    model = LogisticRegression(C=10, max_iter=1000, class_weight="balanced")
    return cross_val_score(model, embeddings.numpy(), y, cv=4, scoring="roc_auc").mean()


@pytest.mark.slow
def test_training_lowers_the_loss_and_helps_a_linear_probe(tmp_path):
    dataset, labels = synthetic_tile_dataset(
        n_slides=128, feature_dim=16, n_aug=4, tiles_per_slide=30, class_signal=1.5
    )
    dataset.save_to_disk(str(tmp_path / "features" / "augmented"))
    summary = run_train(
        tmp_path / "features",  # an extraction folder: its augmented/ Dataset is used
        tmp_path / "run",
        *("--max_steps", "60", "--batch_size", "32", "--learning_rate", "0.02", "--temperature", "0.2"),
        *("--save_steps", "0", "--logging_steps", "10"),
    )
    losses = [loss for _, loss in summary["loss_history"]]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    print(f"\nNT-Xent loss, mean of the first 10 steps {first:.3f} -> last 10 steps {last:.3f}")
    assert last < 0.75 * first

    trained = GigaSSLModel.from_pretrained(tmp_path / "run" / "final").eval()
    torch.manual_seed(0)
    untrained = GigaSSLModel(trained.config).eval()
    trained_auc = probe_auc(trained, tmp_path / "features" / "augmented", labels)
    untrained_auc = probe_auc(untrained, tmp_path / "features" / "augmented", labels)
    print(f"linear-probe AUC of the classes: untrained {untrained_auc:.3f} -> trained {trained_auc:.3f}")
    assert trained_auc > untrained_auc + 0.03
    assert json.loads((tmp_path / "run" / "final" / "training_summary.json").read_text())["steps"] == 60


@pytest.mark.slow
@pytest.mark.parametrize(
    "accumulation",
    [
        ("--batch_size", "16"),
        # 64 slides / 12 = 5 batches per epoch, 2 per step: epochs end on a half group, which Accelerate closes.
        ("--batch_size", "12", "--gradient_accumulation_steps", "2"),
    ],
    ids=["plain", "accumulation"],
)
def test_resume_reproduces_an_uninterrupted_run(synthetic_features, tmp_path, accumulation):
    features, _ = synthetic_features
    common = ("--max_steps", "8", *accumulation, "--save_steps", "4", "--learning_rate", "0.01")
    run_train(features, tmp_path / "straight", *common)
    checkpoint = tmp_path / "straight" / "checkpoints" / "checkpoint_4"
    run_train(features, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(checkpoint))

    straight = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    optimizer_a = torch.load(
        tmp_path / "straight" / "checkpoints" / "checkpoint_8" / "optimizer.bin", weights_only=True
    )
    optimizer_b = torch.load(
        tmp_path / "resumed" / "checkpoints" / "checkpoint_8" / "optimizer.bin", weights_only=True
    )
    for index, state in optimizer_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, optimizer_b["state"][index][name]), (index, name)
    # And the weights did change over those steps: the comparison is not between two untouched models.
    at_step_4 = load_file(checkpoint / "model.safetensors")  # the pretraining model: encoder under "gigassl."
    assert any(not torch.equal(at_step_4[f"gigassl.{key}"], straight[key]) for key in straight)


def test_resume_latest_needs_a_checkpoint(synthetic_features, tmp_path, capsys):
    features, _ = synthetic_features
    argv = [
        "--features",
        str(features),
        "--output_dir",
        str(tmp_path),
        *TINY,
        "--resume_from_checkpoint",
        "latest",
    ]
    assert main([*argv, "--batch_size", "8", "--max_steps", "1"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def _write(dataset, path):
    dataset.save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "empty"),
        ("feature_dim", "feature_dim=12"),
        ("nan", "NaN or inf"),
        ("inf", "NaN or inf"),
        ("no_augmentations", "no shared augmentations"),
        ("batch_too_large", "larger than the dataset"),
    ],
)
def test_bad_inputs_fail_before_training(case, message, tmp_path, capsys):
    dataset, _ = synthetic_tile_dataset(n_slides=6, feature_dim=16, n_aug=2, tiles_per_slide=5)
    extra = ["--batch_size", "4"]
    if case == "empty":
        dataset = dataset.select([])
    elif case == "feature_dim":
        extra += ["--feature_dim", "12"]
    elif case in ("nan", "inf"):
        bad = float("nan") if case == "nan" else float("inf")

        def corrupt(row, index):
            if index == 3:
                row["features"][1][2] = bad
            return row

        dataset = dataset.map(corrupt, with_indices=True)
    elif case == "no_augmentations":
        dataset, _ = synthetic_tile_dataset(n_slides=6, feature_dim=16, tiles_per_slide=5, augmented=False)
    elif case == "batch_too_large":
        extra = ["--batch_size", "7"]
    path = _write(dataset, tmp_path / "features")
    code = main(
        ["--features", str(path), "--output_dir", str(tmp_path / "run"), *TINY, "--max_steps", "2", *extra]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "final").exists()


def test_the_window_pair_top_preset_sets_its_recipe_and_flags_still_win(tmp_path):
    data_args, model_args, train_args = parse_arguments(
        ["--features", str(tmp_path), "--output-dir", str(tmp_path / "run"), "--preset", "window-pair-top",
         "--n-tiles", "32"]
    )  # fmt: skip
    assert (data_args.tile_sampling, data_args.n_tiles, data_args.disjoint_views, data_args.places_per_slide) == (
        "window-pair", 32, True, 4,
    )  # fmt: skip
    pooling = (model_args.slide_pooling, model_args.top_site_fraction)
    assert (model_args.hidden_dim, *pooling) == (256, "top", 0.03)
    assert train_args.learning_rate == 0.002


def test_config_file_with_command_line_overrides(synthetic_features, tmp_path):
    features, _ = synthetic_features
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"features: {features}\noutput_dir: {tmp_path / 'run'}\nbatch_size: 8\nmax_steps: 50\nn_tiles: 3\n"
    )
    data_args, model_args, train_args = parse_arguments(["--config", str(config), "--max_steps", "2"])
    assert (train_args.batch_size, train_args.max_steps, data_args.n_tiles) == (8, 2, 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_sise: 8\n")
    with pytest.raises(ValueError, match="batch_sise"):
        parse_arguments(["--config", str(bad)])


@pytest.mark.slow
def test_two_process_accelerate_launch(synthetic_features, tmp_path):
    """A real `accelerate launch` with two gloo processes on CPU."""
    features, _ = synthetic_features
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        "-m", "giga_ssl_hf.training.train",
        "--features", str(features), "--output_dir", str(tmp_path / "run"), *TINY,
        "--batch_size", "8", "--max_steps", "3", "--save_steps", "0",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "run" / "logs" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["process_index"] for r in ranks] == [0, 1]
    assert ranks[0]["parameter_checksum"] == ranks[1]["parameter_checksum"]
    seen = [set(r["slides_seen"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 3 * 8
    assert not seen[0] & seen[1]  # 3 steps of 8 per rank within one epoch of 64 slides: disjoint
    summary = json.loads((tmp_path / "run" / "final" / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["total_batch_size"] == 16
    assert GigaSSLModel.from_pretrained(tmp_path / "run" / "final").config.feature_dim == 16


def test_layer4_initialised_from_a_resnet18_weights_file(tmp_path):
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    dataset, _ = synthetic_tile_dataset(n_slides=4, feature_dim=256, n_aug=2, tiles_per_slide=6)
    dataset.save_to_disk(str(tmp_path / "features"))
    run_train(
        tmp_path / "features", tmp_path / "run", "--init_layer4", str(tmp_path / "resnet18.pth"),
        "--hidden_dim", "512", "--projection_dims", "64", "32", "--batch_size", "4", "--max_steps", "1",
        "--learning_rate", "0", "--weight_decay", "0", "--save_steps", "0",
    )  # fmt: skip
    encoder = GigaSSLModel.from_pretrained(tmp_path / "run" / "final")
    assert torch.equal(encoder.encoder.layer4[0].conv1.weight, resnet.layer4[0].conv1.weight)
    assert torch.equal(encoder.encoder.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)


def test_bf16_mixed_precision_trains(synthetic_features, tmp_path):
    """In a process of its own: Accelerate fixes the mixed precision once per process."""
    features, _ = synthetic_features
    command = [
        sys.executable, "-m", "giga_ssl_hf.training.train",
        "--features", str(features), "--output_dir", str(tmp_path / "run"), *TINY,
        "--mixed_precision", "bf16", "--batch_size", "8", "--max_steps", "3", "--save_steps", "0",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "final" / "training_summary.json").read_text())
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    assert GigaSSLModel.from_pretrained(tmp_path / "run" / "final").dtype == torch.float32


def test_another_mixed_precision_in_the_same_process_is_refused(synthetic_features, tmp_path, capsys):
    features, _ = synthetic_features
    run_train(features, tmp_path / "first", "--batch_size", "8", "--max_steps", "1", "--save_steps", "0")
    argv = ["--features", str(features), "--output_dir", str(tmp_path / "second"), *TINY, "--batch_size", "8"]
    assert main([*argv, "--max_steps", "1", "--mixed_precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "--mixed-precision bf16: this process already trained with mixed precision 'no'" in err
    assert "train in a new process" in err and not (tmp_path / "second" / "final").exists()


def test_tensorboard_logs_loss_lr_and_embedding_std(synthetic_features, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    features, _ = synthetic_features
    argv = ["--features", str(features), "--output_dir", str(tmp_path / "run"), "--hidden_dim", "32"]
    argv += ["--projection_dims", "32", "16", "--batch_size", "8", "--max_steps", "4", "--logging_steps", "2"]
    train(*parse_arguments([*argv, "--save_steps", "0", "--report_to", "tensorboard"]))
    (events,) = (tmp_path / "run" / "logs" / "giga_ssl").glob(
        "events.out.tfevents*"
    )  # hparams go to a subfolder
    accumulator = EventAccumulator(str(events.parent)).Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"loss", "lr", "embedding_std"} <= tags
    assert [event.step for event in accumulator.Scalars("loss")] == [2, 4]
    assert all(0 < event.value < 1 for event in accumulator.Scalars("embedding_std"))


@pytest.mark.parametrize(
    "sampling",
    [["window"], ["window-pair"], ["window-pair", "--places_per_slide", "2", "--view_offset", "1"]],
)
def test_window_views_train_and_are_recorded(synthetic_features, tmp_path, sampling):
    features, _ = synthetic_features
    summary = run_train(
        features, tmp_path / "run", "--tile_sampling", *sampling, "--batch_size", "8", "--max_steps", "3",
        "--save_steps", "0",
    )  # fmt: skip
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    recorded = json.loads((tmp_path / "run" / "final" / "training_summary.json").read_text())
    assert recorded["arguments"]["tile_sampling"] == sampling[0]


@pytest.mark.parametrize(
    ("flags", "pooling", "fraction"), [((), "max", 0.03), (("--top_site_fraction", "0.1"), "top", 0.1)]
)
def test_selective_slide_pooling_trains_and_stays_with_the_model(
    flags, pooling, fraction, synthetic_features, tmp_path
):
    features, _ = synthetic_features
    summary = run_train(
        features, tmp_path / "run", "--slide_pooling", pooling, *flags, "--batch_size", "8", "--max_steps", "2",
        "--save_steps", "0",
    )  # fmt: skip
    assert np.isfinite(summary["final_loss"])
    config = GigaSSLModel.from_pretrained(tmp_path / "run" / "final").config
    assert (config.slide_pooling, config.top_site_fraction) == (pooling, fraction)


def test_unknown_slide_pooling_is_a_usage_error(synthetic_features, tmp_path, capsys):
    features, _ = synthetic_features
    argv = ["--features", str(features), "--output_dir", str(tmp_path / "run"), "--slide_pooling", "sum"]
    assert main([*argv, *TINY]) == 2
    assert "slide_pooling" in capsys.readouterr().err


def test_unknown_tile_sampling_is_a_usage_error(synthetic_features, tmp_path, capsys):
    features, _ = synthetic_features
    argv = ["--features", str(features), "--output_dir", str(tmp_path / "run"), "--tile_sampling", "grid"]
    assert main([*argv, *TINY]) == 2
    assert "tile_sampling" in capsys.readouterr().err


def test_places_per_slide_without_window_pair_is_a_usage_error(synthetic_features, tmp_path, capsys):
    features, _ = synthetic_features
    argv = ["--features", str(features), "--output_dir", str(tmp_path / "run"), "--places_per_slide", "2"]
    assert main([*argv, *TINY]) == 2
    err = capsys.readouterr().err
    assert "window-pair" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_init_from_keeps_its_architecture_and_head_but_takes_a_new_pooling(tmp_path, tiny_config):
    """--init-from X --preset window-pair-top: X's width and projection head, the preset's top pooling."""
    from giga_ssl_hf.training.setup import build_config

    start = tiny_config(projection_dims=[16, 16, 8])
    argv = ["--features", str(tmp_path), "--output-dir", str(tmp_path / "run"), "--preset", "window-pair-top"]
    _, model_args, _ = parse_arguments(argv)
    config = build_config(model_args, 8, 64, init_config=start)
    assert (config.hidden_dim, config.projection_dims) == (start.hidden_dim, [16, 16, 8])
    assert (config.slide_pooling, config.top_site_fraction) == ("top", 0.03)
    _, model_args, _ = parse_arguments([*argv, "--projection-dims", "16", "4"])
    assert build_config(model_args, 8, 64, init_config=start).projection_dims == [16, 4]
