"""Reading weight files safely: ``.safetensors``, or torch checkpoints unpickled with ``weights_only=True``.

A torch checkpoint can pickle arbitrary objects, and unpickling one can run code: such a file is refused
with a one-line reason instead of torch's multi-line advice to retry unsafely.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def safe_torch_load(path: str | Path, safe_globals: list | tuple = ()) -> object:
    """``torch.load(path, weights_only=True)``; a pickled object off the allow-list raises a ValueError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message opens with advice to retry with weights_only=False; keep only the offending global.
        lines = str(error).splitlines()
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        allowed = ", ".join(getattr(item, "__name__", None) or item[1] for item in safe_globals if item)
        raise ValueError(
            f"{path}: refused to load: the file pickles an object outside the allow-list (tensors, "
            f"containers{', ' + allowed if allowed else ''}), and unpickling it could run arbitrary code "
            f"({reason.strip()}); save the weights as a plain state dict or .safetensors"
        ) from error


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a torch checkpoint (its ``state_dict`` when it has one)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"no weights file at {path}")
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = safe_torch_load(path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise ValueError(
            f"{path}: expected a state dict (or a checkpoint with 'state_dict'), got {type(state_dict).__name__}"
        )
    return state_dict
