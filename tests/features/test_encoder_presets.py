"""Every tile-encoder preset checked offline against its published architecture.

Each preset is built on the meta device (no weights, no memory, no download). Its parameter count must match
the figure its authors published, within the precision they published it at, and a sample of its state-dict
keys (the names the published checkpoint is loaded under) must have the shapes that follow from the
published config. A meta-device forward checks the documented feature dimension of every preset; presets
small enough also run a real forward on random weights.

Sources (read 2026-11; the Hub itself is unreachable from the tests):
- resnet18-layer3: torchvision ``ResNet18_Weights.IMAGENET1K_V1`` lists ``num_params`` 11,689,512; minus
  ``layer4`` (8,393,728, two 3x3 BasicBlocks 256->512 with a 1x1 downsample) and ``fc`` (513,000): exact.
- uni: UNI model card (MahmoodLab/UNI): ViT-L/16, timm ``vit_large_patch16_224`` with ``init_values=1e-5``; timm's
  card of that architecture gives 304.3 M parameters including the 1,025,000-parameter ImageNet head.
- uni2-h: UNI2-h model card: ViT-H/14 with 8 register tokens, SwiGLU, 681 M parameters (timm kwargs as in
  TRIDENT ``patch_encoder_models/load.py``, mirroring the card).
- virchow / virchow2: Virchow (Vorontsov et al., Nat. Med. 2024) and Virchow2 (arXiv 2408.00738): ViT-H/14,
  632 M parameters; config ``mlp_ratio 5.3375``, SwiGLUPacked, 4 register tokens for Virchow2.
- h-optimus-0 / h-optimus-1: Bioptimus model cards and bioptimus/releases (ViT-g/14, depth 40, 1536-d, 24
  heads, SwiGLU ``mlp_ratio 5.33334``, 4 registers, ``no_embed_class``): 1.1 B parameters.
- h0-mini: H0-mini (Filiot et al., arXiv 2501.16239): ViT-B/14 with registers, 86 M parameters.
- prov-gigapath: Prov-GigaPath hub config (timm ``vit_giant_patch14_dinov2``, patch 16, depth 40, 1536-d,
  ``mlp_ratio 5.33334``) and paper (Xu et al., Nature 2024): 1.1 B parameters (tile encoder).
- phikon: owkin/phikon config.json (ViT-B/16, 768-d, 12 layers, intermediate 3072, 224 px): 86 M (Filiot et
  al., medRxiv 2023.07.21.23292757).
- phikon-v2: owkin/phikon-v2 config.json (Dinov2, ViT-L/16, 1024-d, 24 layers): 303 M (Phikon-v2, arXiv
  2409.09173).
- conch-v1.5: MahmoodLab/conchv1_5 vision tower as published in TRIDENT
  ``patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py``: iBOT ViT-L/16 trunk (1024-d, depth 24, heads 16,
  LayerScale), ``AttentionalPooler(d_model=768, context_dim=1024, n_head=8, n_queries=1)``, ``LayerNorm(768)``;
  trunk = timm's ViT-L/16 figure above (303.3 M without head) + 49,152 LayerScale + pooler 2,757,120 + 1,536.
"""

from __future__ import annotations

import pytest
import timm
import torch

from giga_ssl_hf.features.encoder_presets import PRESETS, presets_table
from giga_ssl_hf.features.encoders import (
    ClsAndMeanPatchTokens,
    build_preset_backbone,
    build_tile_encoder,
    weights_target,
)

M, B = 1e6, 1e9
# name: (published parameters, relative precision of the published figure, {state-dict key: shape})
MANIFEST = {
    "resnet18-layer3": (
        11_689_512 - 8_393_728 - 513_000,
        0.0,
        {"conv1.weight": (64, 3, 7, 7), "layer3.0.downsample.0.weight": (256, 128, 1, 1),
         "layer3.1.conv2.weight": (256, 256, 3, 3)},
    ),
    "uni": (
        304.3 * M - 1_025_000,
        0.0005,
        {"pos_embed": (1, 197, 1024), "patch_embed.proj.weight": (1024, 3, 16, 16),
         "blocks.23.ls2.gamma": (1024,), "blocks.23.mlp.fc1.weight": (4096, 1024)},
    ),
    "uni2-h": (
        681 * M,
        0.001,
        {"reg_token": (1, 8, 1536), "pos_embed": (1, 256, 1536), "patch_embed.proj.weight": (1536, 3, 14, 14),
         "blocks.23.mlp.fc1.weight": (8192, 1536), "blocks.23.mlp.fc2.weight": (1536, 4096)},
    ),
    "virchow": (
        632 * M,
        0.002,
        {"pos_embed": (1, 257, 1280), "patch_embed.proj.weight": (1280, 3, 14, 14),
         "blocks.31.mlp.fc1.weight": (6832, 1280), "blocks.31.mlp.fc2.weight": (1280, 3416)},
    ),
    "virchow2": (
        632 * M,
        0.002,
        {"reg_token": (1, 4, 1280), "pos_embed": (1, 261, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)},
    ),
    "h-optimus-0": (
        1.1 * B,
        0.05,
        {"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536), "patch_embed.proj.weight": (1536, 3, 14, 14),
         "blocks.39.mlp.fc1.weight": (8192, 1536), "blocks.39.mlp.fc2.weight": (1536, 4096)},
    ),
    "h-optimus-1": (
        1.1 * B,
        0.05,
        {"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536), "blocks.39.ls1.gamma": (1536,)},
    ),
    "h0-mini": (
        86 * M,
        0.006,
        {"reg_token": (1, 4, 768), "pos_embed": (1, 256, 768), "patch_embed.proj.weight": (768, 3, 14, 14),
         "blocks.11.mlp.fc1.weight": (4096, 768), "blocks.11.mlp.fc2.weight": (768, 2048)},
    ),
    "prov-gigapath": (
        1.1 * B,
        0.05,
        {"pos_embed": (1, 197, 1536), "patch_embed.proj.weight": (1536, 3, 16, 16),
         "blocks.39.mlp.fc1.weight": (8192, 1536), "blocks.39.ls2.gamma": (1536,)},
    ),
    "phikon": (
        86 * M,
        0.006,
        {"embeddings.cls_token": (1, 1, 768), "embeddings.position_embeddings": (1, 197, 768),
         "embeddings.patch_embeddings.projection.weight": (768, 3, 16, 16), "layernorm.weight": (768,)},
    ),
    "phikon-v2": (
        303 * M,
        0.002,
        {"embeddings.position_embeddings": (1, 197, 1024), "embeddings.mask_token": (1, 1024),
         "embeddings.patch_embeddings.projection.weight": (1024, 3, 16, 16),
         "encoder.layer.23.mlp.fc1.weight": (4096, 1024), "encoder.layer.23.layer_scale2.lambda1": (1024,)},
    ),
    "conch-v1.5": (
        304.3 * M - 1_025_000 + 49_152 + 2_757_120 + 1_536,
        0.0005,
        {"trunk.pos_embed": (1, 197, 1024), "trunk.blocks.23.ls1.gamma": (1024,),
         "attn_pool_contrast.query": (1, 768), "attn_pool_contrast.to_kv.weight": (1536, 1024),
         "attn_pool_contrast.to_q.weight": (768, 768), "ln_contrast.weight": (768,)},
    ),
}  # fmt: skip

# Real forward passes on random weights (seconds each on a CPU); the others are too large for the tests.
REAL_FORWARD = ("resnet18-layer3", "phikon", "h0-mini")
REAL_FORWARD_SLOW = ("uni", "phikon-v2", "conch-v1.5")


def test_manifest_covers_every_preset():
    assert sorted(MANIFEST) == sorted(PRESETS)


@pytest.mark.parametrize("name", list(MANIFEST))
def test_preset_matches_published_architecture(name):
    preset = PRESETS[name]
    with torch.device("meta"):
        backbone = build_preset_backbone(preset)
        features = backbone(torch.empty(2, 3, preset.input_size, preset.input_size))
    assert all(p.is_meta for p in backbone.parameters())  # nothing allocated, nothing downloaded
    assert tuple(features.shape) == (2, preset.feature_dim)

    published, precision, keys = MANIFEST[name]
    n_parameters = sum(p.numel() for p in backbone.parameters())
    # Rounded published figures: the count must round to them (relative precision of the figure).
    assert abs(n_parameters - published) <= precision * published + 0.5, (name, n_parameters, published)
    state = weights_target(preset, backbone).state_dict()
    assert {key: tuple(state[key].shape) for key in keys if key in state} == keys, (name, sorted(state)[:10])


def test_cls_and_mean_pooling_excludes_register_tokens():
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, global_pool="", img_size=32, reg_tokens=4
    ).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = vit.forward_features(images)  # (3, 1 + 4 + 4, 192)
        pooled = ClsAndMeanPatchTokens(vit)(images)
    assert pooled.shape == (3, 384)
    torch.testing.assert_close(pooled[:, :192], tokens[:, 0])
    torch.testing.assert_close(pooled[:, 192:], tokens[:, 5:].mean(dim=1))


def _forward(name: str) -> None:
    encoder = build_tile_encoder(name, pretrained=False)
    preset = PRESETS[name]
    images = torch.randint(0, 256, (2, 3, preset.input_size, preset.input_size), dtype=torch.uint8)
    with torch.no_grad():
        features = encoder(images)
    assert features.shape == (2, preset.feature_dim) and torch.isfinite(features).all()
    assert features.std(dim=0).mean() > 0  # two different images give different features
    assert encoder.provenance["weights"] == "random init (seed 0)"
    assert encoder.provenance["normalisation"] == preset.normalisation


@pytest.mark.parametrize("name", REAL_FORWARD)
def test_small_presets_run_on_random_weights(name):
    _forward(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_FORWARD_SLOW)
def test_larger_presets_run_on_random_weights(name):
    _forward(name)


def test_encoders_command_lists_every_preset(capsys):
    from giga_ssl_hf.cli import main

    assert main(["encoders"]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[0].split()
    assert header == [
        "name",
        "source",
        "dim",
        "input",
        "µm/px",
        "normalisation",
        "pooling",
        "licence",
        "gated",
    ]
    for preset in PRESETS.values():
        row = next(line for line in printed.splitlines() if line.startswith(preset.name + " "))
        assert preset.source in row and f" {preset.feature_dim} " in row
    assert printed.startswith(presets_table())


def test_preset_weights_from_a_local_file(tmp_path):
    """--weights FILE: a saved state dict loads over the preset and its sha256 becomes the provenance."""
    from safetensors.torch import save_file

    source = build_tile_encoder("h0-mini", pretrained=False, init_seed=3)
    save_file(
        {k: v.contiguous() for k, v in source.backbone.state_dict().items()}, tmp_path / "h0.safetensors"
    )
    loaded = build_tile_encoder("h0-mini", pretrained=False, weights=tmp_path / "h0.safetensors")
    images = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images))
    assert len(loaded.provenance["weights_sha256"]) == 64 and loaded.provenance["weights"] == "local file"
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_tile_encoder("h0-mini", weights=tmp_path / "missing.safetensors")


def test_gated_preset_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ValueError, match=r"encoder 'uni'.*gated.*HF_HUB_OFFLINE=1"):
        build_tile_encoder("uni")


def test_preset_weights_come_from_the_hf_cache_offline_with_their_revision(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and a filled cache: the preset loads the cached file and records its commit."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--resnet18.tv_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    torch.manual_seed(5)
    published = timm.create_model("resnet18", pretrained=False)  # the full network, head and layer4 included
    save_file(published.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    encoder = build_tile_encoder("resnet18-layer3")
    torch.testing.assert_close(encoder.backbone.layer3[1].conv2.weight, published.layer3[1].conv2.weight)
    assert encoder.provenance["revision"] == commit and encoder.provenance["weights"] == "pretrained"
    assert encoder.provenance["source"] == "timm/resnet18.tv_in1k"
