"""GigaSSLForSlideClassification: the slide encoder and a linear head on the L2-normalised slide embedding."""

import pytest
import torch
import torch.nn.functional as F

from giga_ssl_hf import GigaSSLForSlideClassification, register_auto_classes


def _classifier(tiny_config, n_classes=3):
    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(n_classes)}
    return GigaSSLForSlideClassification(tiny_config(id2label=labels)).eval()


def _slides(batch=2, views=3, tiles=5):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(batch, views, tiles, 8, generator=generator)
    coords = torch.randint(0, 20, (batch, views, tiles, 2), generator=generator) * 224
    return features, coords


def test_logits_are_the_head_on_the_normalised_mean_of_the_views(tiny_config):
    model = _classifier(tiny_config)
    assert model.classifier.out_features == 3
    assert torch.equal(model.embedding_mean, torch.zeros(16)) and torch.equal(
        model.embedding_scale, torch.ones(16)
    )
    with torch.no_grad():
        model.embedding_mean.uniform_(-0.1, 0.1)
        model.embedding_scale.uniform_(0.5, 2.0)
    features, coords = _slides()
    with torch.no_grad():
        out = model(tile_features=features, tile_coords=coords, patch_size_level0=224)
        views = model.gigassl(
            features.flatten(0, 1), coords.flatten(0, 1), patch_size_level0=224
        ).slide_embedding
        embedding = F.normalize(views.unflatten(0, (2, 3)).mean(dim=1), dim=1)
        expected = model.classifier((embedding - model.embedding_mean) / model.embedding_scale)
    torch.testing.assert_close(out.slide_embedding, embedding)
    torch.testing.assert_close(out.logits, expected)
    with torch.no_grad():
        direct = model(slide_embedding=embedding).logits
    torch.testing.assert_close(direct, expected)


def test_labels_give_the_cross_entropy_and_gradients_reach_the_encoder(tiny_config):
    model = _classifier(tiny_config).train()
    features, coords = _slides(batch=4, views=1)
    labels = torch.tensor([0, 1, 2, 1])
    out = model(tile_features=features[:, 0], tile_coords=coords[:, 0], labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert model.gigassl.encoder.layer4[0].conv1.weight.grad.abs().sum() > 0
    loss, logits, embedding = model(
        tile_features=features[:, 0], tile_coords=coords[:, 0], labels=labels, return_dict=False
    )
    assert logits.shape == (4, 3) and embedding.shape == (4, 16) and loss.ndim == 0


def test_inputs_that_do_not_fit_are_refused(tiny_config):
    model = _classifier(tiny_config)
    features, coords = _slides()
    with pytest.raises(ValueError, match="either tile_features"):
        model(tile_features=features, tile_coords=coords, slide_embedding=torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"slide_embedding must be \(batch, 16\)"):
        model(slide_embedding=torch.zeros(2, 8))


def test_saved_and_loaded_with_the_auto_class(tiny_config, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = _classifier(tiny_config, n_classes=2)
    with torch.no_grad():
        model.embedding_scale.fill_(2.0)
    model.save_pretrained(tmp_path)
    register_auto_classes()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is GigaSSLForSlideClassification
    assert loaded.config.id2label == {0: "class_0", 1: "class_1"}
    embedding = F.normalize(torch.randn(3, 16), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(slide_embedding=embedding).logits, model(slide_embedding=embedding).logits
        )
