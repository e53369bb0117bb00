"""Conversion of the original Giga-SSL checkpoints (trislaz/gigassl and its successor) to Hugging Face folders.

The original code trains a ``SimCLRMIL`` whose SparseConvMIL encoder is a SparseConvNet copy of ResNet18's
``layer4``; its successor (trislaz/Democratizing_WSI) wraps the same encoder under ``backbone.mil.``. The
key layouts below were read from those repositories' ``networks.py`` / ``simclr.py``:

- sparse convolutions: SparseConvNet weights ``(k*k, 1, C_in, C_out)`` with
  ``W_sparse[a*k + b, 0] == W_dense[:, :, a, b].T``; 3x3 for ``conv1``/``conv2``, 1x1 for ``convd``;
- SparseConvNet ``BatchNormalization``: ``weight``, ``bias``, ``running_mean``, ``running_var`` (its
  ``momentum=0.9`` is torch's 0.1; no ``num_batches_tracked``);
- ``SimCLRMIL.projector`` (``projection_MLP``): ``layer1``/``layer2`` = (Linear, ReLU, BatchNorm1d) and
  ``layer3`` = Linear; ``SimCLRMIL.encoder = Sequential(backbone, projector)`` registers the same modules
  a second time, so every tensor also appears under ``encoder.0.`` / ``encoder.1.``.

The successor's light ResidualMLP ('mlp') has the module names of this package's ``encoder_type="mlp"``
(``tile_encoder.{i}.block.{j}.block.0`` Linear, ``...norm`` BatchNorm1d, ``residual_lin`` shortcut), so its
tensors are copied as they are.

The converted config sets ``grid_size_mode="batch"``, ``fixed_grid_cell_size=True`` and ``grid_cell_size``
= the original ``downmap`` (224 by default): level-0 pixel coordinates divided by a fixed cell size and one
sparse map size per batch, as the original trained. (The original ``inference.py`` also divided coordinates
by 4 before the model; pass ``tile_coords / 4`` to reproduce its released embeddings exactly.)

``SAFE_GLOBALS`` lists the two namespace classes the original configs are made of, so that the checkpoint
can be read with ``torch.load(weights_only=True)`` and never runs arbitrary pickle code.

This converter sits beside the model, like transformers' ``convert_*_to_hf.py``, and like everything in this
folder imports only torch, transformers and its neighbours (relative imports): it maps an already loaded
checkpoint dict to a model. Reading the file safely, the training summary and the output folder are the
package's (:mod:`giga_ssl_hf.hub.convert`, the ``giga-ssl convert`` command line).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .configuration_gigassl import GigaSSLConfig

if TYPE_CHECKING:
    import torch

    from .modeling_gigassl import GigaSSLForContrastivePretraining, GigaSSLModel


@dataclass(frozen=True)
class OriginalLayout:
    """Where one family of original checkpoints keeps its tensors (all prefixes are state_dict key prefixes)."""

    name: str
    source: str
    encoder_type: str  # this package's encoder_type
    encoder_prefix: str
    projector_prefix: str
    dropped_prefixes: tuple[str, ...] = ()  # known tensors that are not part of the slide encoder


# The one table of supported layouts; the first whose signature key is present wins.
LAYOUTS: tuple[OriginalLayout, ...] = (
    OriginalLayout(
        name="gigassl",
        source="trislaz/gigassl SimCLRMIL (argparse Namespace config)",
        encoder_type="sparse_conv",
        encoder_prefix="backbone.net.mil_model.sparse_pooling.0.",
        projector_prefix="projector.",
    ),
    OriginalLayout(
        name="successor-scm",
        source="trislaz/Democratizing_WSI SparseConvMIL 'scm' (dict config)",
        encoder_type="sparse_conv",
        encoder_prefix="backbone.mil.net.mil_model.sparse_pooling.0.",
        # Assumed like the original: the successor's loader only shows the backbone.mil. keys.
        projector_prefix="projector.",
        dropped_prefixes=("backbone.mil.net.linear_classifier.",),
    ),
    OriginalLayout(
        name="successor-mlp",
        source="trislaz/Democratizing_WSI ResidualMLP 'mlp' (dict config)",
        encoder_type="mlp",
        encoder_prefix="backbone.mil.tile_encoder.",
        projector_prefix="projector.",
        dropped_prefixes=("backbone.mil.classifier.",),
    ),
)
# Signature key of each encoder type, relative to ``encoder_prefix``.
_SIGNATURES = {"sparse_conv": "0.conv1.weight", "mlp": "0.block.0.block.0.weight"}
# SimCLRMIL.encoder = Sequential(backbone, projector): these prefixes repeat tensors stored elsewhere.
_ALIASES = {"encoder.0.": "backbone.", "encoder.1.": "projector."}

# Original sparse layer4 module -> this package's ``encoder.layer4`` module.
SPARSE_CONVS = {
    "0.conv1": "0.conv1",
    "0.conv2": "0.conv2",
    "0.convd": "0.downsample.0",
    "1.conv1": "1.conv1",
    "1.conv2": "1.conv2",
}
SPARSE_NORMS = {
    "0.norm1": "0.bn1",
    "0.norm2": "0.bn2",
    "0.normd": "0.downsample.1",
    "1.norm1": "1.bn1",
    "1.norm2": "1.bn2",
}
# Original projection_MLP module -> index in this package's ``projection_head`` Sequential.
PROJECTOR_LINEARS = {"layer1.0": "0", "layer2.0": "3", "layer3": "6"}
PROJECTOR_NORMS = {"layer1.2": "2", "layer2.2": "5"}
_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var")


class OriginalNamespace:
    """Attribute bag standing in for trislaz/gigassl's ``arguments.Namespace`` (the nested config sections).

    Allow-listed under that name for ``weights_only`` loading, so an original config unpickles into plain
    attributes without importing (or running) the original code.
    """


SAFE_GLOBALS = [argparse.Namespace, (OriginalNamespace, "arguments.Namespace")]


def flatten_config(config: object, prefix: str = "") -> dict[str, object]:
    """``{"model.downmap": 224, ...}`` from an original config (Namespaces and dicts, nested or flat)."""
    if isinstance(config, (argparse.Namespace, OriginalNamespace)):
        config = vars(config)
    if isinstance(config, dict):
        flat: dict[str, object] = {}
        for key, value in config.items():
            flat.update(flatten_config(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: config} if prefix else {}


def setting(flat: dict[str, object], *names: str, default: object = None) -> object:
    """The value of the first of ``names`` (dotted keys) present: the original nests its sections
    (``model.downmap``), the successor's dict config may not (``downmap``)."""
    return next((flat[name] for name in names if name in flat), default)


def detect_layout(state_dict: dict[str, torch.Tensor]) -> OriginalLayout:
    for layout in LAYOUTS:
        if layout.encoder_prefix + _SIGNATURES[layout.encoder_type] in state_dict:
            return layout
    expected = "\n".join(
        f"  {layout.name} ({layout.source}): {layout.encoder_prefix}{_SIGNATURES[layout.encoder_type]}"
        for layout in LAYOUTS
    )
    raise ValueError(
        "unknown checkpoint layout: none of the known signature keys is present.\n"
        f"expected one of:\n{expected}\nfound keys: {_preview(sorted(state_dict))}"
    )


def _preview(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def sparse_to_dense(weight: torch.Tensor) -> torch.Tensor:
    """SparseConvNet ``(k*k, 1, C_in, C_out)`` -> torch ``(C_out, C_in, k, k)``, first kernel axis along x."""
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"expected a SparseConvNet weight (k*k, 1, C_in, C_out), got {tuple(weight.shape)}")
    k = round(weight.shape[0] ** 0.5)
    if k * k != weight.shape[0]:
        raise ValueError(f"SparseConvNet weight with {weight.shape[0]} offsets is not a square kernel")
    return weight[:, 0].reshape(k, k, *weight.shape[2:]).permute(3, 2, 0, 1).contiguous()


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
) -> tuple[OriginalLayout, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(layout, ``encoder.layer4.*`` tensors, ``projection_head.*`` tensors, empty without a projector)."""
    import torch

    layout = detect_layout(state_dict)
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise ValueError(f"{layout.name} checkpoint lacks {key!r}")
        used.add(key)
        return state_dict[key]

    encoder = {}
    if layout.encoder_type == "mlp":
        # The successor's ResidualMLP and this package's mlp encoder share module names under tile_encoder.
        for key in [k for k in state_dict if k.startswith(layout.encoder_prefix)]:
            encoder[f"encoder.tile_encoder.{key[len(layout.encoder_prefix) :]}"] = take(key)
    for original, ours in SPARSE_CONVS.items() if layout.encoder_type == "sparse_conv" else ():
        encoder[f"encoder.layer4.{ours}.weight"] = sparse_to_dense(
            take(f"{layout.encoder_prefix}{original}.weight")
        )
    for original, ours in SPARSE_NORMS.items() if layout.encoder_type == "sparse_conv" else ():
        for param in _NORM_PARAMS:
            encoder[f"encoder.layer4.{ours}.{param}"] = take(f"{layout.encoder_prefix}{original}.{param}")

    projector = {}
    if any(key.startswith(layout.projector_prefix) for key in state_dict):
        for original, ours in PROJECTOR_LINEARS.items():
            for param in ("weight", "bias"):
                projector[f"projection_head.{ours}.{param}"] = take(
                    f"{layout.projector_prefix}{original}.{param}"
                )
        for original, ours in PROJECTOR_NORMS.items():
            for param in (*_NORM_PARAMS, "num_batches_tracked"):
                key = f"{layout.projector_prefix}{original}.{param}"
                if param != "num_batches_tracked" or key in state_dict:
                    projector[f"projection_head.{ours}.{param}"] = take(key)

    def known(key: str) -> bool:
        return key in used or key.startswith(layout.dropped_prefixes)

    unexpected = []
    for key, value in state_dict.items():
        alias = next((key.replace(a, t, 1) for a, t in _ALIASES.items() if key.startswith(a)), None)
        if known(key) or (alias in state_dict and known(alias) and torch.equal(value, state_dict[alias])):
            continue
        unexpected.append(key)
    if unexpected:
        raise ValueError(
            f"{layout.name} checkpoint ({layout.source}) has {len(unexpected)} unexpected key(s) that "
            f"the conversion table does not map: {_preview(sorted(unexpected))}"
        )
    return layout, encoder, projector


def converted_config(
    layout: OriginalLayout,
    encoder: dict[str, torch.Tensor],
    projector: dict[str, torch.Tensor],
    flat: dict[str, object],
) -> GigaSSLConfig:
    """The config of the converted model: sizes from the tensors, the rest from the original's config."""
    if layout.encoder_type == "mlp":
        first = encoder["encoder.tile_encoder.0.block.0.block.0.weight"]
        architecture = {
            "mlp_num_blocks": len({key.split(".")[2] for key in encoder}),
            "mlp_dropout": float(setting(flat, "dropout", default=0.0)),
        }
    else:
        first = encoder["encoder.layer4.0.conv1.weight"]
        architecture = {}
    if projector:
        projection_dims = [
            projector[f"projection_head.{i}.weight"].shape[0] for i in PROJECTOR_LINEARS.values()
        ]
    else:
        projection_dims = GigaSSLConfig().projection_dims
    return GigaSSLConfig(
        feature_dim=first.shape[1],
        hidden_dim=first.shape[0],
        encoder_type=layout.encoder_type,
        **architecture,
        grid_cell_size=int(setting(flat, "model.downmap", "downmap", default=224)),
        fixed_grid_cell_size=True,
        grid_size_mode="batch",
        projection_dims=projection_dims,
        temperature=float(setting(flat, "model.temperature_xent", "temperature_xent", default=0.05)),
        n_tiles=int(setting(flat, "dataset.nb_tiles", "nb_tiles", default=5)),
    )


def convert_original_checkpoint(
    checkpoint: dict,
) -> tuple[GigaSSLModel | GigaSSLForContrastivePretraining, OriginalLayout, dict[str, object]]:
    """The converted model (with the SimCLR head when the checkpoint has one), the detected layout and the
    flattened original config, from a loaded checkpoint dict (``state_dict``, optional ``config``)."""
    import torch

    from .modeling_gigassl import GigaSSLForContrastivePretraining, GigaSSLModel

    layout, encoder, projector = convert_state_dict(checkpoint["state_dict"])
    flat = flatten_config(checkpoint.get("config"))
    config = converted_config(layout, encoder, projector, flat)
    if projector:
        model = GigaSSLForContrastivePretraining(config)
        weights = {f"gigassl.{key}": value for key, value in encoder.items()} | projector
    else:
        model = GigaSSLModel(config)
        weights = encoder
    # SparseConvNet's BatchNormalization keeps no update count: start it at 0 (anything else missing is an error).
    counts = {
        key: torch.zeros_like(v)
        for key, v in model.state_dict().items()
        if key.endswith("num_batches_tracked")
    }
    model.load_state_dict(counts | weights, strict=True)
    model.eval()
    return model, layout, flat
