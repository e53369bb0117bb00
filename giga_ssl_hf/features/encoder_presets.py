"""Tile-encoder presets: pathology foundation models with the constructor, normalisation and pooling they need.

A bare timm name gives the wrong features for most pathology encoders (UNI needs ``init_values=1e-5``;
Virchow a SwiGLU MLP and the CLS token concatenated with the mean of the patch tokens; H-optimus its own
mean / std; Phikon is a transformers model whose CLS token is the feature). A preset carries all of it.
The facts (architecture kwargs, normalisation, pooling) follow the models' Hub configs and model cards,
as mirrored by TRIDENT (``trident/patch_encoder_models/load.py``) and STAMP (``preprocessing/extractor/``).
This module is the table alone (no torch / timm import, so that ``giga-ssl encoders`` answers at once);
:mod:`giga_ssl_hf.features.encoders` builds the networks.

``giga-ssl encoders`` prints the table. Weights come from the HF cache (downloaded once; gated models need
the user's token and accepted terms; ``HF_HUB_OFFLINE=1`` reads the cache alone) or a local ``--weights``
file. :func:`~giga_ssl_hf.features.encoders.build_preset_backbone` builds the architecture without weights
(under ``torch.device("meta")`` without memory either, which the tests use to check every preset against
its published size).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from giga_ssl_hf.settings import SettingsParser, run_main

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)

POOLINGS = {
    "layer3-mean": "ResNet layer3 output averaged over space",
    "cls": "CLS token",
    "cls+mean": "CLS token concatenated with the mean of the patch tokens",
    "attention-pool": "attentional pooler over all tokens (CONCH contrastive head)",
}


@dataclass(frozen=True)
class EncoderPreset:
    """How to build, load and run one tile encoder."""

    name: str
    source: str  # Hub repo of the weights
    family: str  # "resnet-layer3", "timm", "transformers-vit", "transformers-dinov2" or "conch"
    architecture: str  # timm model name (timm / conch families) or transformers model class
    feature_dim: int
    input_size: int  # tile side in px given to the encoder
    target_mpp: float  # µm per px the model was trained at
    pooling: str
    licence: str
    gated: bool
    # Constructor kwargs (timm; "mlp_layer": "swiglu-packed" and "act_layer": "silu" name the timm / torch
    # classes) or config fields (transformers).
    kwargs: dict = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weight_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")

    @property
    def normalisation(self) -> str:
        if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD):
            return "ImageNet"
        if (self.mean, self.std) == (HOPTIMUS_MEAN, HOPTIMUS_STD):
            return "H-optimus"
        return f"mean {self.mean} std {self.std}"


_SWIGLU = {"mlp_layer": "swiglu-packed", "act_layer": "silu"}
_VIRCHOW = {
    "img_size": 224,
    "init_values": 1e-5,
    "mlp_ratio": 5.3375,
    "global_pool": "",
    "dynamic_img_size": True,
}

PRESETS: dict[str, EncoderPreset] = {
    preset.name: preset
    for preset in (
        EncoderPreset(
            "resnet18-layer3", "timm/resnet18.tv_in1k", "resnet-layer3", "resnet18", 256, 224, 1.0,
            "layer3-mean", "BSD-3-Clause (torchvision)", False,
        ),
        EncoderPreset(
            "uni", "MahmoodLab/UNI", "timm", "vit_large_patch16_224", 1024, 224, 0.5, "cls", "CC-BY-NC-ND-4.0",
            True, {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
            weight_files=("pytorch_model.bin",),
        ),
        EncoderPreset(
            "uni2-h", "MahmoodLab/UNI2-h", "timm", "vit_giant_patch14_224", 1536, 224, 0.5, "cls",
            "CC-BY-NC-ND-4.0", True,
            {
                "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8,
                "dynamic_img_size": True, **_SWIGLU,
            },
            weight_files=("pytorch_model.bin",),
        ),
        EncoderPreset(
            "virchow", "paige-ai/Virchow", "timm", "vit_huge_patch14_224", 2560, 224, 0.5, "cls+mean",
            "Apache-2.0", True, {**_VIRCHOW, **_SWIGLU},
        ),
        EncoderPreset(
            "virchow2", "paige-ai/Virchow2", "timm", "vit_huge_patch14_224", 2560, 224, 0.5, "cls+mean",
            "CC-BY-NC-ND-4.0", True, {**_VIRCHOW, "reg_tokens": 4, **_SWIGLU},
        ),
        EncoderPreset(
            "h-optimus-0", "bioptimus/H-optimus-0", "timm", "vit_giant_patch14_reg4_dinov2", 1536, 224, 0.5,
            "cls", "Apache-2.0", False, {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
            HOPTIMUS_MEAN, HOPTIMUS_STD,
        ),
        EncoderPreset(
            "h-optimus-1", "bioptimus/H-optimus-1", "timm", "vit_giant_patch14_reg4_dinov2", 1536, 224, 0.5,
            "cls", "H-optimus-1 licence (non-commercial)", True,
            {"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False}, HOPTIMUS_MEAN, HOPTIMUS_STD,
        ),
        EncoderPreset(
            "h0-mini", "bioptimus/H0-mini", "timm", "vit_base_patch14_reg4_dinov2", 768, 224, 0.5, "cls",
            "CC-BY-NC-ND-4.0", True,
            # SwiGLU at ratio 5.33334 (as H-optimus-0): the published 86M parameters of a ViT-B/14.
            {"img_size": 224, "mlp_ratio": 5.33334, "init_values": 1e-5, "dynamic_img_size": True, **_SWIGLU},
            HOPTIMUS_MEAN, HOPTIMUS_STD,
        ),
        EncoderPreset(
            "prov-gigapath", "prov-gigapath/prov-gigapath", "timm", "vit_giant_patch14_dinov2", 1536, 224, 0.5,
            "cls", "Apache-2.0", True,
            {
                "img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                "init_values": 1e-5, "mlp_ratio": 5.33334, "dynamic_img_size": True,
            },
        ),
        EncoderPreset(
            "phikon", "owkin/phikon", "transformers-vit", "ViTModel", 768, 224, 0.5, "cls",
            "Owkin non-commercial", False,
            {
                "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "image_size": 224, "patch_size": 16, "qkv_bias": True,
                "layer_norm_eps": 1e-12,
            },
        ),
        EncoderPreset(
            "phikon-v2", "owkin/phikon-v2", "transformers-dinov2", "Dinov2Model", 1024, 224, 0.5, "cls",
            "Owkin non-commercial", False,
            {
                "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "mlp_ratio": 4,
                "image_size": 224, "patch_size": 16, "qkv_bias": True, "layerscale_value": 1e-5,
                "layer_norm_eps": 1e-6, "use_swiglu_ffn": False,
            },
        ),
        EncoderPreset(
            "conch-v1.5", "MahmoodLab/conchv1_5", "conch", "vit_large_patch16_224", 768, 448, 0.5,
            "attention-pool", "CC-BY-NC-ND-4.0", True,
            # Built at 224 like the published trunk; 448 px inputs interpolate the position embedding.
            {"img_size": 224, "patch_size": 16, "init_values": 1.0, "dynamic_img_size": True},
            weight_files=("pytorch_model_vision.bin",),
        ),
    )
}  # fmt: skip


def unknown_encoder_message(name: str, candidates: list[str]) -> str:
    """Why ``name`` names no encoder, with the nearest of ``candidates`` (names are compared in lower case)."""
    lowered = {candidate.lower(): candidate for candidate in candidates}
    close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown encoder {name!r}: not a preset ('giga-ssl encoders' lists them), a timm model name nor an "
        f"hf-hub: id{hint}"
    )


def _timm_sources() -> str | None:
    """The text of timm's model modules, read without importing timm (which imports torch: seconds and a
    gigabyte); None when timm is not installed."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return "\n".join(path.read_text(errors="ignore") for path in sorted(folder.rglob("*.py")))


def resolve_encoder_name(name: str) -> str:
    """A preset's name typed in any case -> the preset (``UNI`` -> ``uni``); other names unchanged.

    A name that can be neither a preset, an ``hf-hub:`` id nor a timm model raises a ValueError naming the
    nearest ones, before torch is imported: timm registers its models as functions (``@register_model def
    name(...)``), so a name that is not a word of timm's model sources is none of them. The other names are
    left to timm to judge.
    """
    by_lower = {preset.lower(): preset for preset in PRESETS}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    if name.startswith("hf-hub:"):
        return name
    architecture = name.split(".", 1)[0]  # timm's "name.pretrained_tag"
    sources = _timm_sources()
    if sources is None or (
        architecture.isidentifier() and re.search(rf"\b{re.escape(architecture)}\b", sources)
    ):
        return name
    timm_names = re.findall(r"@register_model\s+def (\w+)\(", sources)
    raise ValueError(unknown_encoder_message(name, [*PRESETS, *timm_names]))


class WeightsUnavailableError(ValueError):
    """A preset's weights are neither in the HF cache nor downloadable (offline, gated, no network)."""

    def __init__(self, message: str, gated: bool = False):
        super().__init__(message)
        self.gated = gated


def download_preset_weights(preset: EncoderPreset, revision: str | None = None) -> tuple[Path, str | None]:
    """Local path of the preset's weight file (HF cache, downloading when allowed) and its commit hash."""
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in preset.weight_files:
        try:
            path = Path(hf_hub_download(preset.source, filename, revision=revision))
        except Exception as error:  # not in this repo, offline without cache, gated, no network: try the next
            errors.append(f"{filename}: {type(error).__name__}: {' '.join(str(error).split())}")
            continue
        # The cache keeps files under snapshots/<commit>/: that is the revision the features came from.
        commit = path.parent.name if path.parent.parent.name == "snapshots" else None
        return path, commit
    gated = " (gated: accept its terms on the Hub, then hf auth login)" if preset.gated else ""
    raise WeightsUnavailableError(
        f"encoder {preset.name!r}: could not get the weights of {preset.source}{gated}; offline, the HF cache "
        f"must hold them (HF_HUB_OFFLINE=1), or pass --weights FILE. {'; '.join(errors)}",
        gated=preset.gated,
    )


def presets_table() -> str:
    """The presets as an aligned text table (what ``giga-ssl encoders`` prints)."""
    header = ("name", "source", "dim", "input", "µm/px", "normalisation", "pooling", "licence", "gated")
    rows = [
        (
            p.name, p.source, str(p.feature_dim), f"{p.input_size}px", f"{p.target_mpp:g}", p.normalisation,
            p.pooling, p.licence, "yes" if p.gated else "no",
        )
        for p in PRESETS.values()
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def build_parser() -> SettingsParser:
    return SettingsParser(
        prog="giga-ssl encoders",
        description="List the tile-encoder presets that `giga-ssl extract --encoder NAME` accepts: Hub source, "
        "feature dimension, input size, the resolution (µm/px) they were trained at, input normalisation, "
        "output pooling and licence. Any other timm model name or hf-hub: id works too (timm defaults). "
        "Pooling: " + "; ".join(f"{k}: {v}" for k, v in POOLINGS.items()) + ".",
    )


def run() -> int:
    print(presets_table())
    print(
        "\nWeights: the HF cache (gated models: accept the terms on the Hub, then `hf auth login`; offline: "
        "HF_HUB_OFFLINE=1 with the cache filled) or --weights FILE."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)
