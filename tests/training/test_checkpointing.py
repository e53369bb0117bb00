"""Which checkpoint `--resume-from-checkpoint latest` picks; pruning after a save; what `checkpoints/` may
hold."""

import pytest
import torch

from giga_ssl_hf.training.checkpointing import (
    find_checkpoint,
    latest_checkpoint,
    project_configuration,
    save_checkpoint,
)
from giga_ssl_hf.training.train import main


def test_latest_is_the_highest_step(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        find_checkpoint(tmp_path, "latest")
    for name in ("checkpoint_4", "checkpoint_10", "checkpoint_6", "checkpoint_x", "step_40", "logs"):
        (checkpoints / name).mkdir(parents=True)
    (checkpoints / "checkpoint_20").write_text("not a folder")
    assert find_checkpoint(tmp_path, "latest") == checkpoints / "checkpoint_10"  # by step, not by name
    (checkpoints / "checkpoint_12").mkdir()
    assert find_checkpoint(tmp_path, "latest") == checkpoints / "checkpoint_12"
    assert find_checkpoint(tmp_path, str(checkpoints / "checkpoint_4")) == checkpoints / "checkpoint_4"
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        find_checkpoint(tmp_path, str(checkpoints / "checkpoint_5"))


@pytest.fixture
def accelerator(tmp_path):
    """A real Accelerator, as train makes it (process-wide state: no mixed precision, CPU without a GPU)."""
    from accelerate import Accelerator

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), project_config=project_configuration(tmp_path)
    )
    model = torch.nn.Linear(2, 2)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    return accelerator


def test_a_limit_of_one_keeps_the_last_complete_checkpoint_through_a_failed_save(accelerator, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "checkpoint_1").mkdir(parents=True)
    save_checkpoint(accelerator, 2, total_limit=1)
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint_2"]

    def disk_full(models, weights, output_dir):  # called once Accelerate has made the new folder
        raise OSError(28, "No space left on device")

    hook = accelerator.register_save_state_pre_hook(disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(accelerator, 4, total_limit=1)
    hook.remove()
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint_2"]
    assert find_checkpoint(tmp_path, "latest") == checkpoints / "checkpoint_2"
    assert (checkpoints / "checkpoint_2" / "model.safetensors").is_file()

    save_checkpoint(accelerator, 6, total_limit=2)
    save_checkpoint(accelerator, 8, total_limit=2)
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint_6", "checkpoint_8"]


@pytest.mark.parametrize("stray", ["notes.txt", ".DS_Store", "checkpoint_4.bak"])
def test_an_entry_of_checkpoints_that_is_no_checkpoint_is_refused_up_front(
    stray, synthetic_features, tmp_path, capsys
):
    features, _ = synthetic_features
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "checkpoint_4").mkdir(parents=True)
    (checkpoints / stray).write_text("mine")
    argv = ["--features", str(features), "--output-dir", str(tmp_path / "run"), "--report-to", "none"]
    assert (
        main([*argv, "--max-steps", "8", "--save-total-limit", "1", "--resume-from-checkpoint", "latest"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{checkpoints / stray}: not a checkpoint" in err
    assert "move it elsewhere" in err
    assert sorted(path.name for path in checkpoints.iterdir()) == sorted(["checkpoint_4", stray])
    assert not (tmp_path / "run" / "final").exists()
