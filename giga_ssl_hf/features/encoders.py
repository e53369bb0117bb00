"""Tile encoders: images ``(B, 3, H, W)`` in [0, 1] (or uint8) -> features ``(B, D)``.

- a preset (``giga-ssl encoders`` lists them; :mod:`giga_ssl_hf.features.encoder_presets`): the paper's
  ``resnet18-layer3`` (ResNet18 cut after ``layer3``, averaged spatially, 256-d) and pathology foundation
  models (UNI, Virchow, H-optimus, Prov-GigaPath, Phikon, CONCH v1.5, ...) with their constructor arguments,
  normalisation and pooling; weights from the HF cache (revision recorded) or ``weights=``.
- any other timm model name or ``hf-hub:`` id, created with ``num_classes=0`` (pooled features) and the
  normalisation of its pretrained config.

``weights`` loads a local file over the architecture: ``.safetensors``, or a torch checkpoint
(``.pth``, ``.pth.tar``, ``.pt``, ``.bin``; read with ``weights_only=True``) whose ``state_dict`` may carry the
MoCo prefix ``module.encoder_q.`` (stripped; the key ``module.encoder_k.`` copy and the heads are
ignored). Its sha256 is recorded in the encoder's provenance.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from torch import nn

from giga_ssl_hf.features.encoder_presets import (
    PRESETS,
    EncoderPreset,
    download_preset_weights,
    resolve_encoder_name,
    unknown_encoder_message,
)
from giga_ssl_hf.runtime import resolve_device
from giga_ssl_hf.weight_files import file_sha256, load_state_dict_file

logger = logging.getLogger(__name__)

_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.", "model.", "backbone.")


def _timm_kwargs(preset: EncoderPreset) -> dict:
    """The preset's constructor kwargs with the named layer classes resolved."""
    classes = {"swiglu-packed": timm.layers.SwiGLUPacked, "silu": nn.SiLU}
    return {
        key: classes.get(value, value) if isinstance(value, str) else value
        for key, value in preset.kwargs.items()
    }


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


class ClsAndMeanPatchTokens(nn.Module):
    """A timm ViT returning all tokens -> CLS concatenated with the mean of the patch tokens (registers excluded)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(x)  # (batch, prefix + patches, dim)
        patches = tokens[:, self.vit.num_prefix_tokens :]
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)  # (batch, 2 * dim)


class TransformersClsToken(nn.Module):
    """A transformers ViT / Dinov2 model -> the CLS token of its last hidden state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).last_hidden_state[:, 0]  # (batch, hidden)


class AttentionalPooler(nn.Module):
    """One learned query attending over the tokens (CONCH's contrastive pooler; multi-head, no biases)."""

    def __init__(self, dim: int, context_dim: int, num_heads: int = 8, num_queries: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(num_queries, dim))
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        keys, values = self.to_kv(self.ln_k(tokens)).chunk(2, dim=-1)  # (batch, n, dim) each
        queries = self.to_q(self.ln_q(self.query)).expand(batch, -1, -1)  # (batch, q, dim)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (batch, heads, n, dim / heads)

        pooled = nn.functional.scaled_dot_product_attention(heads(queries), heads(keys), heads(values))
        return self.to_out(pooled.transpose(1, 2).flatten(2))  # (batch, q, dim)


class ConchVisionTower(nn.Module):
    """CONCH v1.5's image tower: ViT-L/16 trunk, attentional pooler to 768-d, LayerNorm."""

    def __init__(self, trunk: nn.Module, dim: int = 768):
        super().__init__()
        self.trunk = trunk
        self.attn_pool_contrast = AttentionalPooler(dim, trunk.embed_dim, num_heads=8, num_queries=1)
        self.ln_contrast = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)  # (batch, 1 + patches, 1024)
        return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])  # (batch, 768)


def build_preset_backbone(preset: EncoderPreset) -> nn.Module:
    """The preset's network, images ``(B, 3, S, S)`` (normalised) -> features ``(B, feature_dim)``, no weights."""
    if preset.family == "resnet-layer3":
        resnet = timm.create_model(preset.architecture, pretrained=False, num_classes=0)
        return _ResNetLayer3(resnet)
    if preset.family == "timm":
        vit = timm.create_model(preset.architecture, pretrained=False, num_classes=0, **_timm_kwargs(preset))
        return ClsAndMeanPatchTokens(vit) if preset.pooling == "cls+mean" else vit
    if preset.family == "conch":
        trunk = timm.create_model(
            preset.architecture, pretrained=False, num_classes=0, global_pool="", **_timm_kwargs(preset)
        )
        return ConchVisionTower(trunk, preset.feature_dim)
    if preset.family in ("transformers-vit", "transformers-dinov2"):
        import transformers

        if preset.family == "transformers-vit":
            model = transformers.ViTModel(transformers.ViTConfig(**preset.kwargs), add_pooling_layer=False)
        else:
            model = transformers.Dinov2Model(transformers.Dinov2Config(**preset.kwargs))
        return TransformersClsToken(model)
    raise ValueError(f"unknown encoder family {preset.family!r}")


def load_transformers_preset(preset: EncoderPreset, name_or_path: str | Path) -> nn.Module:
    """A transformers preset with its weights: ``from_pretrained`` of the Hub repo (HF cache) or a local folder."""
    import transformers

    model_class = getattr(transformers, preset.architecture)
    extra = {"add_pooling_layer": False} if preset.family == "transformers-vit" else {}
    try:
        model = model_class.from_pretrained(str(name_or_path), **extra)
    except OSError as error:  # offline without cache, gated, no such folder: one clear message
        raise ValueError(
            f"encoder {preset.name!r}: could not load {name_or_path}; offline, the HF cache must hold it "
            f"(HF_HUB_OFFLINE=1), or pass --weights with a local copy of the repository: {error}"
        ) from error
    return TransformersClsToken(model)


def weights_target(preset: EncoderPreset, backbone: nn.Module) -> nn.Module:
    """The module a preset's published state dict loads into (the wrappers add a level)."""
    if isinstance(backbone, ClsAndMeanPatchTokens):
        return backbone.vit
    if isinstance(backbone, TransformersClsToken):
        return backbone.model
    return backbone


class TileEncoder(nn.Module):
    """A backbone with its input normalisation; ``forward`` takes [0, 1] floats or uint8 images."""

    def __init__(
        self,
        backbone: nn.Module,
        name: str,
        feature_dim: int,
        mean,
        std,
        input_size: int,
        provenance: dict | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.name = name
        # Where the weights came from (source, revision or weights sha256, ...): see encoder_provenance.
        self.provenance = dict(provenance or {})
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
    expected = module.state_dict()
    other_shapes = [
        f"{key} {tuple(value.shape)} in the file, {tuple(expected[key].shape)} in the encoder"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if other_shapes:  # load_state_dict would raise a multi-line RuntimeError listing every one
        raise ValueError(
            f"{source}: the weights are of another architecture than the encoder ({len(other_shapes)} tensors "
            f"of other shapes, e.g. {other_shapes[0]}); pass the --encoder they were trained with"
        )
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


def _resample_position_embedding(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Resize a checkpoint's ViT ``pos_embed`` to the module's grid (a checkpoint saved at another size)."""
    for key, value in list(state_dict.items()):
        if not key.endswith("pos_embed"):
            continue
        owner = module.get_submodule(key.rsplit(".", 1)[0]) if "." in key else module
        target = getattr(owner, "pos_embed", None)
        if target is None or target.shape == value.shape:
            continue
        prefix = 0 if getattr(owner, "no_embed_class", False) else getattr(owner, "num_prefix_tokens", 1)
        grid = owner.patch_embed.grid_size
        state_dict[key] = timm.layers.resample_abs_pos_embed(value, list(grid), num_prefix_tokens=prefix)


def _build_preset(
    preset: EncoderPreset, download: bool, weights: str | Path | None
) -> tuple[nn.Module, dict]:
    provenance: dict = {"source": preset.source, "revision": None, "weights_sha256": None}
    if preset.family.startswith("transformers") and (
        download or (weights is not None and Path(weights).is_dir())
    ):
        # transformers renames old checkpoint keys on load: let from_pretrained read the repo (or its folder).
        backbone = load_transformers_preset(preset, weights if weights is not None else preset.source)
        provenance["revision"] = getattr(weights_target(preset, backbone).config, "_commit_hash", None)
        return backbone, provenance
    # The weights first: unavailable ones are refused in seconds, before a model of gigabytes is built.
    path, provenance["revision"] = download_preset_weights(preset) if download else (None, None)
    backbone = build_preset_backbone(preset)
    if path is not None:
        state_dict = load_weights_file(path)
        target = weights_target(preset, backbone)
        _resample_position_embedding(target, state_dict)
        _load_into(target, state_dict, f"{preset.source}/{path.name}")
    return backbone, provenance


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
    name = resolve_encoder_name(name)
    if name not in PRESETS and not name.startswith("hf-hub:") and not timm.is_model(name):
        raise ValueError(unknown_encoder_message(name, [*PRESETS, *timm.list_models()]))
    download = pretrained and weights is None
    if weights is not None and not Path(weights).is_file():
        transformers_preset = name in PRESETS and PRESETS[name].family.startswith("transformers")
        if not (transformers_preset and Path(weights).is_dir()):
            raise FileNotFoundError(f"--weights: no such file: {weights}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        if name in PRESETS:
            preset = PRESETS[name]
            backbone, provenance = _build_preset(preset, download, weights)
            feature_dim, mean, std, input_size = (
                preset.feature_dim,
                preset.mean,
                preset.std,
                preset.input_size,
            )
            provenance.update(pooling=preset.pooling, normalisation=preset.normalisation)
        else:
            backbone = timm.create_model(name, pretrained=download, num_classes=0)
            config = timm.data.resolve_data_config({}, model=backbone)
            feature_dim, mean, std = backbone.num_features, config["mean"], config["std"]
            input_size = config["input_size"][-1]
            provenance = {"source": name, "revision": None, "weights_sha256": None, "pooling": "timm default"}
            provenance["normalisation"] = f"mean {tuple(mean)} std {tuple(std)}"
    if weights is not None and Path(weights).is_file():
        state_dict = load_weights_file(weights)
        target = weights_target(PRESETS[name], backbone) if name in PRESETS else backbone
        _resample_position_embedding(target, state_dict)
        _load_into(target, state_dict, str(weights))
        provenance["weights_sha256"] = file_sha256(weights)
    provenance["weights"] = (
        "local file"
        if weights is not None
        else "pretrained"
        if pretrained
        else f"random init (seed {init_seed})"
    )
    return TileEncoder(backbone, name, feature_dim, mean, std, input_size, provenance).eval()


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
        self.device = torch.device(resolve_device(str(device)))
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
