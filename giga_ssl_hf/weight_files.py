"""Reading weight files safely: ``.safetensors``, or torch checkpoints unpickled with ``weights_only=True``;
and naming a model by the content of its weight files (:func:`weights_sha256`), not by its path.

A torch checkpoint can pickle arbitrary objects, and unpickling one can run code: such a file is refused
with a one-line reason instead of torch's multi-line advice to retry unsafely. A file that is not a weights
file at all, or a truncated one, is refused in one line as well, and :func:`check_weights_file` tells so
without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own bound on its JSON header


def _not_weights(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path}: not a readable weights file ({why}); pass a complete .safetensors file or a torch checkpoint "
        "(.pth, .pth.tar, .pt, .bin) saved with torch.save"
    )


def _check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the tensors it lists."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise _not_weights(path, "no safetensors header")
        try:
            header = json.loads(handle.read(length))
            end = max(
                (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                default=0,
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise _not_weights(path, "no safetensors header") from None
    if size != 8 + length + end:
        raise _not_weights(path, f"{size} bytes where its header describes {8 + length + end}: truncated?")


def check_weights_file(path: str | Path) -> None:
    """Raise unless ``path`` is a complete ``.safetensors`` file or has the form of a torch checkpoint (a zip
    archive, or a legacy pickle); reads the header only and imports no torch, so that a wrong file is
    refused at once."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        _check_safetensors(path)
        return
    with open(path, "rb") as handle:
        legacy_pickle = handle.read(1) == b"\x80"  # pickle protocol 2+ opcode: torch.save before torch 1.6
    if not (legacy_pickle or zipfile.is_zipfile(path)):
        raise _not_weights(path, "neither a zip-format torch checkpoint nor a pickle; truncated?")


def safe_torch_load(path: str | Path, safe_globals: list | tuple = ()) -> object:
    """``torch.load(path, weights_only=True)``; a pickled object off the allow-list, or a file that is not a
    complete torch checkpoint, raises a ValueError."""
    import torch

    path = Path(path)
    check_weights_file(path)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message opens with advice to retry with weights_only=False; keep only the offending global.
        lines = str(error).splitlines()
        reason = next((line for line in lines if "GLOBAL" in line), None)
        if reason is None:  # not the allow-list: the bytes themselves are not a pickle
            raise _not_weights(path, lines[0] if lines else "not a pickle") from error
        allowed = ", ".join(getattr(item, "__name__", None) or item[1] for item in safe_globals if item)
        raise ValueError(
            f"{path}: refused to load: the file pickles an object outside the allow-list (tensors, "
            f"containers{', ' + allowed if allowed else ''}), and unpickling it could run arbitrary code "
            f"({reason.strip()}); save the weights as a plain state dict or .safetensors"
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:  # a damaged or truncated archive
        raise _not_weights(
            path, str(error).splitlines()[0] if str(error) else type(error).__name__
        ) from error


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a torch checkpoint (its ``state_dict`` when it has one)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        check_weights_file(path)
        from safetensors.torch import load_file

        return load_file(str(path))
    checkpoint = safe_torch_load(path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state_dict, dict):
        raise ValueError(
            f"{path}: expected a state dict (or a checkpoint with 'state_dict'), got {type(state_dict).__name__}"
        )
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path}: expected a state dict of tensors (or a checkpoint with 'state_dict'); {not_tensors[0]!r} "
            f"is a {type(state_dict[not_tensors[0]]).__name__}"
        )
    return state_dict


# What from_pretrained reads: the config and the weights (single file or shards), never the rest of a repo.
MODEL_FILE_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
]
HASH_CHUNK_BYTES = 1 << 20


def model_folder(model_name_or_path: str | Path) -> Path:
    """The local folder of a model folder or Hub id (its HF-cache snapshot: config and weights only), found
    without building the model."""
    path = Path(model_name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError

    try:
        return Path(snapshot_download(str(model_name_or_path), allow_patterns=MODEL_FILE_PATTERNS))
    except (HFValidationError, OSError) as error:  # the Hub's errors derive from OSError
        raise FileNotFoundError(
            f"no model folder at {model_name_or_path} (nor a reachable Hub repo)"
        ) from error


def weights_sha256(folder: Path) -> str | None:
    """sha256 of a model folder's weight files (``*.safetensors``, else torch ``*.bin``), read in chunks, named
    and in name order: the model's content, whatever its path. None when the folder has no weight file."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        _hash_file(digest, path)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of one file, read in chunks."""
    return _hash_file(hashlib.sha256(), Path(path)).hexdigest()


def _hash_file(digest, path: Path):
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest
