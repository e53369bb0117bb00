"""Which checkpoint `--resume-from-checkpoint latest` picks among both namings."""

import pytest

from giga_ssl_hf.training.checkpointing import find_checkpoint, latest_checkpoint


def test_latest_is_the_highest_step_of_either_naming(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        find_checkpoint(tmp_path, "latest")
    for name in ("step_4", "step_8", "checkpoint_6", "checkpoint_x", "logs"):
        (checkpoints / name).mkdir(parents=True)
    (checkpoints / "checkpoint_20").write_text("not a folder")
    assert find_checkpoint(tmp_path, "latest") == checkpoints / "step_8"  # written before the switch
    (checkpoints / "checkpoint_8").mkdir()
    assert find_checkpoint(tmp_path, "latest") == checkpoints / "checkpoint_8"  # same step: the newer naming
    (checkpoints / "checkpoint_12").mkdir()
    assert find_checkpoint(tmp_path, "latest") == checkpoints / "checkpoint_12"
    assert find_checkpoint(tmp_path, str(checkpoints / "step_4")) == checkpoints / "step_4"
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        find_checkpoint(tmp_path, str(checkpoints / "step_5"))
