import pytest
import torch
from safetensors.torch import save_file

from giga_ssl_hf.features.augment import SharedAugmentation
from giga_ssl_hf.features.encoders import EncoderRunner, build_tile_encoder


@pytest.fixture(scope="module")
def encoder():
    return build_tile_encoder("resnet18-layer3", pretrained=False)


def test_paper_encoder_is_resnet18_through_layer3(encoder):
    assert encoder.feature_dim == 256 and encoder.input_size == 224
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        features = encoder(images)
        assert features.shape == (3, 256)
        # uint8 input is scaled to [0, 1] before the ImageNet normalisation
        assert torch.allclose(features, encoder(images.float() / 255), atol=1e-5)
    assert not any(name.startswith("backbone.layer4") for name, _ in encoder.named_parameters())


def test_random_init_is_reproducible(encoder):
    again = build_tile_encoder("resnet18-layer3", pretrained=False)
    other = build_tile_encoder("resnet18-layer3", pretrained=False, init_seed=1)
    first = dict(encoder.backbone.named_parameters())["conv1.weight"]
    assert torch.equal(dict(again.backbone.named_parameters())["conv1.weight"], first)
    assert not torch.equal(dict(other.backbone.named_parameters())["conv1.weight"], first)


def test_runner_fp32_matches_module(encoder):
    images = torch.rand(4, 3, 64, 64)
    runner = EncoderRunner(encoder, device="cpu", precision="fp32")
    with torch.inference_mode():
        expected = encoder(images)
    assert torch.allclose(runner(images), expected, atol=1e-4)


def test_moco_checkpoint_and_safetensors_load(tmp_path, encoder):
    backbone_state = encoder.backbone.state_dict()
    moco = {f"module.encoder_q.{k}": v for k, v in backbone_state.items()}
    moco.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in backbone_state.items()})
    moco["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 512)  # MoCo v2 MLP head: ignored
    moco["module.encoder_q.layer4.0.conv1.weight"] = torch.zeros(512, 256, 3, 3)  # cut off: ignored
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": moco}, tmp_path / "moco.pth.tar")
    save_file({k: v.contiguous() for k, v in backbone_state.items()}, tmp_path / "w.safetensors")
    images = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        expected = encoder(images)
        for weights in ("moco.pth.tar", "w.safetensors"):
            loaded = build_tile_encoder("resnet18-layer3", pretrained=False, weights=tmp_path / weights)
            assert torch.allclose(loaded(images), expected, atol=1e-5)


def test_weights_missing_keys_are_an_error(tmp_path):
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="miss"):
        build_tile_encoder("resnet18-layer3", pretrained=False, weights=tmp_path / "partial.safetensors")


def test_any_timm_model_with_pooled_features():
    encoder = build_tile_encoder("resnet10t", pretrained=False)
    assert encoder.feature_dim == 512
    with torch.inference_mode():
        assert encoder(torch.rand(2, 3, 64, 64)).shape == (2, 512)


def test_shared_augmentation_is_per_view_and_chunk_invariant():
    augmentation = SharedAugmentation(64)
    params = [augmentation.sample(torch.Generator().manual_seed(s)) for s in range(20)]
    again = [augmentation.sample(torch.Generator().manual_seed(s)) for s in range(20)]
    assert params == again  # draws come from the generator only
    crops = [p.crop for p in params]
    assert len(set(crops)) > 10
    for top, left, height, width in crops:
        assert 0.5 * 64 * 64 * 0.9 <= height * width <= 64 * 64 and top + height <= 64 and left + width <= 64
    assert any(p.grayscale for p in params) and any(p.blur_sigma is not None for p in params)
    images = torch.rand(6, 3, 64, 64)
    for p in params[:8]:
        whole = augmentation.apply(images, p)
        # same parameters on every tile: augmenting chunks equals augmenting the whole view
        chunks = torch.cat([augmentation.apply(images[:2], p), augmentation.apply(images[2:], p)])
        assert torch.allclose(whole, chunks, atol=1e-6)
        assert whole.shape == images.shape and whole.min() >= 0 and whole.max() <= 1
        if p.grayscale:
            assert torch.allclose(whole[:, 0], whole[:, 1]) and torch.allclose(whole[:, 1], whole[:, 2])
    gray = next(p for p in params if p.grayscale)
    colour = next(p for p in params if not p.grayscale)
    assert not torch.allclose(augmentation.apply(images, gray), augmentation.apply(images, colour))
