"""Tile encoders: images ``(B, 3, H, W)`` in [0, 1] (or uint8) -> features ``(B, D)``.

- ``resnet18-layer3``: the paper's encoder, a ResNet18 cut after ``layer3`` and averaged spatially
  (256-d), ImageNet mean / std. Pretrained weights are torchvision's ImageNet ones (``resnet18.tv_in1k``
  in timm), or the original MoCo TCGA checkpoint through ``weights=``.
- any timm model name or ``hf-hub:`` id, created with ``num_classes=0`` (pooled features) and the
  normalisation of its pretrained config.

``weights`` loads a local file over the architecture: ``.safetensors``, or a torch checkpoint
(``.pth``, ``.pth.tar``, ``.pt``; read with ``weights_only=True``) whose ``state_dict`` may carry the
MoCo prefix ``module.encoder_q.`` (stripped; the key ``module.encoder_k.`` copy and the heads are
ignored).
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from giga_ssl_hf.checkpoints import load_state_dict_file

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = {"resnet18-layer3": "resnet18.tv_in1k"}
_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.", "model.", "backbone.")


class _ResNetLayer3(nn.Module):
    """ResNet stem + layer1..3, spatial mean: the paper's 256-d tile features."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        # Same attribute names as torchvision / timm ResNets, so their state dicts load unchanged.
        self.conv1, self.bn1, self.act1, self.maxpool = resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x))).mean(dim=(2, 3))


class TileEncoder(nn.Module):
    """A backbone with its input normalisation; ``forward`` takes [0, 1] floats or uint8 images."""

    def __init__(self, backbone: nn.Module, name: str, feature_dim: int, mean, std, input_size: int):
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.feature_dim = int(feature_dim)
        self.input_size = int(input_size)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return self.backbone((images - self.mean) / self.std)


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(key.startswith("module.encoder_q.") for key in state_dict):
        state_dict = {k: v for k, v in state_dict.items() if k.startswith("module.encoder_q.")}
    for prefix in _PREFIXES:
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of a local ``.safetensors`` or torch checkpoint, MoCo / DataParallel prefixes removed."""
    return _strip_prefixes(load_state_dict_file(path))


def _load_into(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"{source}: weights miss {len(result.missing_keys)} keys, e.g. {result.missing_keys[:5]}"
        )
    if result.unexpected_keys:
        # Expected for the paper preset: layer4, fc and MoCo heads are cut off.
        logger.info(
            "%s: ignored %d keys not used by the encoder (e.g. %s)",
            source,
            len(result.unexpected_keys),
            result.unexpected_keys[:3],
        )


def build_tile_encoder(
    name: str = "resnet18-layer3",
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    init_seed: int = 0,
) -> TileEncoder:
    """A :class:`TileEncoder` in eval mode on CPU.

    ``pretrained=False`` gives a random init (offline tests), drawn from ``init_seed`` so that the same
    call gives the same weights in every process (a resumed extraction must match an uninterrupted one).
    ``weights`` (a local file) wins over ``pretrained``.
    """
    download = pretrained and weights is None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if name in PRESETS:
            resnet = timm.create_model(PRESETS[name], pretrained=download, num_classes=0)
            backbone: nn.Module = _ResNetLayer3(resnet)
            feature_dim, mean, std, input_size = 256, IMAGENET_MEAN, IMAGENET_STD, 224
        else:
            backbone = timm.create_model(name, pretrained=download, num_classes=0)
            config = timm.data.resolve_data_config({}, model=backbone)
            feature_dim, mean, std = backbone.num_features, config["mean"], config["std"]
            input_size = config["input_size"][-1]
    if weights is not None:
        _load_into(backbone, load_weights_file(weights), str(weights))
    return TileEncoder(backbone, name, feature_dim, mean, std, input_size).eval()


def cpu_supports_fast_bf16() -> bool:
    """Whether this CPU has AMX bf16 tiles, where bf16 autocast runs convolutions ~3x faster than fp32."""
    try:
        with open("/proc/cpuinfo") as handle:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in handle)
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` (``auto``, ``bf16``, ``fp32``) on ``device``; None means fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    if device.type == "cuda" or (device.type == "cpu" and cpu_supports_fast_bf16()):
        return torch.bfloat16
    return None


class EncoderRunner:
    """Runs a :class:`TileEncoder` batch by batch: inference mode, channels_last, optional bf16 autocast."""

    def __init__(self, encoder: TileEncoder, device: str | torch.device = "auto", precision: str = "auto"):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.autocast_dtype = resolve_precision(precision, self.device)
        self.encoder = encoder.to(self.device).to(memory_format=torch.channels_last).eval()

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` float32 on CPU of images ``(B, 3, H, W)`` (uint8 or [0, 1] floats)."""
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            return self.encoder(images).float().cpu()
