"""``giga-ssl convert``: an original Giga-SSL checkpoint -> a Hugging Face model folder, ready for push-model.

The conversion itself (key mapping, config inference) lives beside the model
(:mod:`giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf`), self-contained like the rest of the model
folder; this module does the file work around it with the package's helpers: the safe load of the original
checkpoint, the training summary and the output folder, and the command line. The model package is imported
inside the functions: it imports transformers and torch, which ``giga-ssl convert --help`` must not wait for.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from giga_ssl_hf.contracts import TRAINING_SUMMARY_FILENAME
from giga_ssl_hf.files import write_json
from giga_ssl_hf.settings import SettingsParser, option, run_main
from giga_ssl_hf.weight_files import safe_torch_load

if TYPE_CHECKING:
    from giga_ssl_hf.models.gigassl import GigaSSLForContrastivePretraining, GigaSSLModel
    from giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf import OriginalLayout

logger = logging.getLogger(__name__)

DESCRIPTION = f"""Convert an original Giga-SSL checkpoint (trislaz/gigassl SimCLRMIL .pth, or a SparseConvMIL 'scm' or
ResidualMLP 'mlp' checkpoint of its successor trislaz/Democratizing_WSI) into a Hugging Face model folder
(config.json, model.safetensors, {TRAINING_SUMMARY_FILENAME}). The converted model reproduces the original: fixed
224-px grid cells and a batch-wide sparse map size (see GigaSSLConfig). The checkpoint is read with
torch.load(weights_only=True): no pickled code runs."""
EPILOG = "Then publish it: giga-ssl push-model OUT --repo-id ORG/NAME [--dry-run DIR]"


@dataclass
class ConvertSettings:
    """What to convert and where to write it."""

    checkpoint: Path = option(help="original checkpoint (.pth / .pth.tar)", positional=True)
    out: Path | None = option(None, "output folder (created)", metavar="OUT", required=True)


def build_parser() -> SettingsParser:
    return SettingsParser(ConvertSettings, prog="giga-ssl convert", description=DESCRIPTION, epilog=EPILOG)


def load_original_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict (``state_dict``, ``config``, ...), refusing any pickled object off the allow-list."""
    import torch

    from giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf import SAFE_GLOBALS

    path = Path(path)
    checkpoint = safe_torch_load(path, SAFE_GLOBALS)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    if "state_dict" not in checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        checkpoint = {"state_dict": checkpoint}
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path}: no 'state_dict' in the checkpoint (keys: {sorted(checkpoint)})")
    return checkpoint


def convert_checkpoint(path: str | Path) -> tuple[GigaSSLModel | GigaSSLForContrastivePretraining, dict]:
    """The converted model (with the SimCLR head when the checkpoint has one) and its training summary."""
    from giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf import convert_original_checkpoint

    path = Path(path)
    checkpoint = load_original_checkpoint(path)
    model, layout, flat = convert_original_checkpoint(checkpoint)
    summary = training_summary(path, layout, checkpoint, flat)
    config = model.config
    logger.info(
        "converted %s (%s): %d -> %d, grid cell %d px, projection head %s",
        path,
        layout.name,
        config.feature_dim,
        config.hidden_dim,
        config.grid_cell_size,
        "kept" if hasattr(model, "projection_head") else "absent",
    )
    return model, summary


def training_summary(path: Path, layout: OriginalLayout, checkpoint: dict, flat: dict[str, object]) -> dict:
    """What the model card shows under "how it was trained", from the original config and checkpoint."""
    from giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf import setting

    # Summary label -> the setting in the original's nested config, then in the successor's flat one.
    known = {
        "run_name": ("name",),
        "tile_feature_dim": ("dataset.feature_depth", "feature_depth"),
        "tiles_per_view": ("dataset.nb_tiles", "nb_tiles"),
        "augmentations_per_slide": ("dataset.Naug", "Naug"),
        "batch_size": ("train.batch_size", "batch_size"),
        "epochs_planned": ("train.num_epochs", "num_epochs", "epochs"),
        "optimizer": ("train.optimizer.name", "optimizer"),
        "base_learning_rate": ("train.base_lr", "base_lr", "lr"),
        "weight_decay": ("train.optimizer.weight_decay", "weight_decay"),
        "warmup_epochs": ("train.warmup_epochs", "warmup_epochs"),
        "temperature": ("model.temperature_xent", "temperature_xent"),
        "grid_cell_size": ("model.downmap", "downmap"),
    }
    summary = {"converted_from": path.name, "original_layout": f"{layout.name}: {layout.source}"}
    summary["checkpoint_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    if isinstance(checkpoint.get("epoch"), int):
        summary["epoch_saved"] = checkpoint["epoch"]
    summary |= {
        label: value for label, names in known.items() if (value := setting(flat, *names)) is not None
    }
    summary["original_config"] = {
        key: value
        for key, value in flat.items()
        if isinstance(value, (str, int, float, bool)) or value is None
    }
    return summary


def write_converted(path: str | Path, out: str | Path) -> Path:
    """Convert ``path`` and save the model (``save_pretrained``) and its training summary into ``out``."""
    model, summary = convert_checkpoint(path)
    out = Path(out)
    model.save_pretrained(out)
    write_json(out / TRAINING_SUMMARY_FILENAME, summary, sort_keys=False)
    logger.info("wrote %s", out)
    return out


def convert(settings: ConvertSettings) -> int:
    print(f"wrote {write_converted(settings.checkpoint, settings.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), convert, argv)
