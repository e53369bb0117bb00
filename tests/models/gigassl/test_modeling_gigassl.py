import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel

from giga_ssl_hf import GigaSSLConfig, GigaSSLForContrastivePretraining, GigaSSLModel
from giga_ssl_hf.models.gigassl import nt_xent_loss, register_auto_classes

PATCH = 448  # level-0 px per tile, as for 224 px tiles at level 1 of a 20x-per-level pyramid


def random_slide(n_tiles, generator, grid=12, dim=8):
    """Tiles on a grid (level-0 px, multiples of PATCH) with random features."""
    cells = torch.randint(0, grid, (n_tiles, 2), generator=generator)
    return torch.randn(n_tiles, dim, generator=generator), cells * PATCH + 3 * PATCH


@pytest.fixture(params=["sparse_conv", "mlp"])
def eval_model(request, tiny_config):
    torch.manual_seed(0)
    model = GigaSSLModel(tiny_config(encoder_type=request.param))
    # Non-trivial running statistics, as after training.
    model.train()
    generator = torch.Generator().manual_seed(1)
    feats, coords = zip(*(random_slide(20, generator) for _ in range(4)))
    with torch.no_grad():
        model(torch.stack(feats), torch.stack(coords), patch_size_level0=PATCH)
    return model.eval()


def embed(model, slides, **kwargs):
    """Pad `slides` [(features, coords)] into one masked batch and embed them."""
    n = max(f.shape[0] for f, _ in slides)
    features = torch.zeros(len(slides), n, slides[0][0].shape[1])
    coords = torch.zeros(len(slides), n, 2, dtype=torch.long)
    mask = torch.zeros(len(slides), n, dtype=torch.bool)
    for i, (f, c) in enumerate(slides):
        features[i, : len(f)], coords[i, : len(c)], mask[i, : len(f)] = f, c, True
    with torch.no_grad():
        return model(features, coords, tile_mask=mask, patch_size_level0=PATCH, **kwargs).slide_embedding


def test_slide_embedding_is_independent_of_batch_mates_and_padding(eval_model):
    generator = torch.Generator().manual_seed(2)
    slides = [random_slide(n, generator, grid=g) for n, g in ((5, 4), (17, 12), (9, 30), (1, 1))]
    together = embed(eval_model, slides)
    for i, slide in enumerate(slides):
        torch.testing.assert_close(embed(eval_model, [slide])[0], together[i], rtol=1e-5, atol=1e-6)
    # Heavy padding with garbage behind the mask changes nothing.
    features, coords = slides[0]
    padded_features = torch.cat([features, 1e3 * torch.randn(7, 8, generator=generator)])
    padded_coords = torch.cat([coords, torch.randint(0, 10**6, (7, 2), generator=generator)])
    mask = torch.tensor([True] * 5 + [False] * 7)
    with torch.no_grad():
        out = eval_model(
            padded_features[None], padded_coords[None], tile_mask=mask[None], patch_size_level0=PATCH
        )
    torch.testing.assert_close(out.slide_embedding[0], together[0], rtol=1e-5, atol=1e-6)


def test_shift_by_whole_cells_changes_nothing(eval_model):
    generator = torch.Generator().manual_seed(3)
    features, coords = random_slide(15, generator)
    reference = embed(eval_model, [(features, coords)])
    for shift in ([1, 0], [0, 7], [-3, 25]):
        shifted = coords + torch.tensor(shift) * PATCH + 10 * PATCH
        torch.testing.assert_close(embed(eval_model, [(features, shifted)]), reference, rtol=1e-5, atol=1e-6)


def _output_grid(model, features, coords):
    """The sparse encoder's final grid for one slide `(n, D)`, `(n, 2)`: its sites and their features."""
    encoder = model.encoder
    mask = torch.ones(1, len(features), dtype=torch.bool)
    return encoder.layer4(encoder.build_grid(features[None], coords[None], mask, torch.tensor([PATCH])))


def _site_of_each_tile(coords, spatial_size):
    """Stride-2 output site of each tile's cell, computed from the coordinates alone."""
    cells = (coords - coords.min(dim=0).values) // PATCH
    return torch.minimum(cells // 2, (spatial_size - 3) // 2)


def test_tile_embeddings_are_the_output_sites_of_their_cells(eval_model):
    generator = torch.Generator().manual_seed(20)
    slides = [random_slide(n, generator, grid=g) for n, g in ((23, 9), (6, 4), (14, 30))]
    n = max(len(f) for f, _ in slides)
    features, coords = torch.zeros(3, n, 8), torch.zeros(3, n, 2, dtype=torch.long)
    mask = torch.zeros(3, n, dtype=torch.bool)
    for i, (f, c) in enumerate(slides):
        features[i, : len(f)], coords[i, : len(c)], mask[i, : len(f)] = f, c, True
    with torch.no_grad():
        plain = eval_model(features, coords, tile_mask=mask, patch_size_level0=PATCH)
        out = eval_model(
            features, coords, tile_mask=mask, patch_size_level0=PATCH, output_tile_embeddings=True
        )
        as_tuple = eval_model(
            features,
            coords,
            tile_mask=mask,
            patch_size_level0=PATCH,
            output_tile_embeddings=True,
            return_dict=False,
        )
    assert plain.tile_embeddings is None
    assert out.tile_embeddings.shape == (3, n, 16)
    torch.testing.assert_close(out.slide_embedding, plain.slide_embedding, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[1], out.tile_embeddings, rtol=0, atol=0)
    assert out.tile_embeddings[~mask].abs().max() == 0  # padding: zeros
    for i, (f, c) in enumerate(slides):
        tiles = out.tile_embeddings[i, : len(f)]
        if eval_model.config.encoder_type == "mlp":
            with torch.no_grad():
                expected = eval_model.encoder.tile_encoder(f)
            torch.testing.assert_close(tiles, expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(tiles.mean(dim=0), out.slide_embedding[i], rtol=1e-5, atol=1e-6)
            continue
        with torch.no_grad():
            grid = _output_grid(eval_model, f, c)
            input_size = eval_model.encoder.build_grid(
                f[None], c[None], torch.ones(1, len(f), dtype=torch.bool), torch.tensor([PATCH])
            ).spatial_size[0]
        site_row = {tuple(xy): row for row, xy in enumerate(grid.xy.tolist())}
        for tile, site in enumerate(_site_of_each_tile(c, input_size).tolist()):
            torch.testing.assert_close(
                tiles[tile], grid.features[site_row[tuple(site)]], rtol=1e-5, atol=1e-6
            )
        # The slide embedding is the mean over the output sites.
        torch.testing.assert_close(grid.features.mean(dim=0), out.slide_embedding[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7), (6, 6), (1, 9), (8, 3)])
def test_distinct_tile_embeddings_average_to_the_slide_embedding(eval_model, shape):
    """A rectangle of tissue: every output site holds a tile's cell, so the distinct tile rows are the sites."""
    generator = torch.Generator().manual_seed(21)
    cells = torch.cartesian_prod(torch.arange(shape[0]), torch.arange(shape[1]))
    features, coords = torch.randn(len(cells), 8, generator=generator), cells * PATCH + 5 * PATCH
    with torch.no_grad():
        out = eval_model(features[None], coords[None], patch_size_level0=PATCH, output_tile_embeddings=True)
    distinct = torch.unique(out.tile_embeddings[0], dim=0)
    if eval_model.config.encoder_type == "sparse_conv":
        with torch.no_grad():
            n_sites = len(_output_grid(eval_model, features, coords).xy)
        assert len(distinct) == n_sites < len(cells)
    torch.testing.assert_close(distinct.mean(dim=0), out.slide_embedding[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder_type", ["sparse_conv", "mlp"])
def test_max_pooling_takes_the_channel_maximum_of_the_distinct_tile_embeddings(encoder_type, tiny_config):
    """A rectangle of tissue (every output site holds a tile's cell); the same weights pool by mean or maximum."""
    torch.manual_seed(0)
    mean_model = _trained_like(GigaSSLModel(tiny_config(encoder_type=encoder_type)))
    max_model = GigaSSLModel(tiny_config(encoder_type=encoder_type, slide_pooling="max")).eval()
    max_model.load_state_dict(mean_model.state_dict())
    cells = torch.cartesian_prod(torch.arange(6), torch.arange(5))
    features, coords = torch.randn(len(cells), 8), cells * PATCH
    with torch.no_grad():
        mean_out = mean_model(
            features[None], coords[None], patch_size_level0=PATCH, output_tile_embeddings=True
        )
        max_out = max_model(
            features[None], coords[None], patch_size_level0=PATCH, output_tile_embeddings=True
        )
    torch.testing.assert_close(max_out.tile_embeddings, mean_out.tile_embeddings)
    torch.testing.assert_close(max_out.slide_embedding[0], max_out.tile_embeddings[0].amax(dim=0))
    assert not torch.allclose(max_out.slide_embedding, mean_out.slide_embedding)


@pytest.mark.parametrize(("encoder_type", "n_sites"), [("sparse_conv", 30), ("mlp", 120)])
def test_top_pooling_averages_each_channels_largest_sites(encoder_type, n_sites, tiny_config):
    """On a rectangle of tissue the distinct tile embeddings are the output sites: per channel, the mean of the
    largest round(fraction x sites) of them."""
    torch.manual_seed(0)
    config = tiny_config(encoder_type=encoder_type, slide_pooling="top", top_site_fraction=0.25)
    model = _trained_like(GigaSSLModel(config))
    cells = torch.cartesian_prod(torch.arange(12), torch.arange(10))
    features, coords = torch.randn(len(cells), 8), cells * PATCH
    with torch.no_grad():
        out = model(features[None], coords[None], patch_size_level0=PATCH, output_tile_embeddings=True)
    sites = torch.unique(out.tile_embeddings[0], dim=0)  # (n_sites, hidden)
    assert (
        len(sites) == n_sites
    )  # 12 x 10 cells: 6 x 5 sites after the stride 2 (mlp: a row per tile), distinct
    k = round(0.25 * len(sites))
    expected = sites.sort(dim=0, descending=True).values[:k].mean(dim=0)
    torch.testing.assert_close(out.slide_embedding[0], expected, rtol=1e-5, atol=1e-6)


def test_pool_sites_top_is_the_maximum_on_few_sites_and_trains_only_the_chosen_rows():
    from giga_ssl_hf.models.gigassl.modeling_gigassl import pool_sites

    generator = torch.Generator().manual_seed(1)
    slide_of_site = torch.tensor([2, 0, 1, 1, 0, 2, 1, 0, 1, 1, 3])[torch.randperm(11, generator=generator)]
    values = torch.randn(11, 4, generator=generator, requires_grad=True)  # (sites, channels)
    top = pool_sites(values, slide_of_site, 4, "top", 0.4)  # k = 1, 2, 1, 1 for 3, 5, 2, 1 sites
    maximum = pool_sites(values, slide_of_site, 4, "max", 0.4)
    torch.testing.assert_close(top[[0, 2, 3]], maximum[[0, 2, 3]])  # the 1-site slide's padding never counts
    rows = values[slide_of_site == 1]
    torch.testing.assert_close(top[1], rows.topk(2, dim=0).values.mean(dim=0))
    top.sum().backward()
    chosen = torch.zeros_like(values)  # d top / d value: 1 / k on each slide's k largest values per channel
    for slide, k in enumerate([1, 2, 1, 1]):
        rows = (slide_of_site == slide).nonzero().flatten()
        largest = values[rows].topk(k, dim=0).indices  # (k, channels)
        chosen[rows[largest], torch.arange(4).expand(k, 4)] = 1 / k
    torch.testing.assert_close(values.grad, chosen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_top_pooling_of_a_large_slide_sums_in_float32_whatever_the_dtype(dtype):
    """100,000 sites of values near 35: the 3,000 largest sum past float16's range and drift in bfloat16; the
    pooling sums in float32 and returns the inputs' dtype."""
    from giga_ssl_hf.models.gigassl.modeling_gigassl import pool_sites, top_site_means

    generator = torch.Generator().manual_seed(0)
    values = (35 + torch.randn(100_000, 2, generator=generator)).to(dtype)  # (sites, channels)
    slide = torch.zeros(len(values), dtype=torch.long)
    expected = values.double().sort(dim=0, descending=True).values[:3000].mean(dim=0)
    pooled = pool_sites(values, slide, 1, "top", 0.03)[0]
    assert pooled.dtype == dtype and torch.isfinite(pooled).all()
    torch.testing.assert_close(
        pooled.double(), expected, rtol=4e-3 if dtype != torch.float32 else 1e-6, atol=0
    )
    both = top_site_means(values, slide, 1, [0.03, 1.0])[0]  # (2 fractions, channels)
    torch.testing.assert_close(both[0], pooled, rtol=0, atol=0)
    torch.testing.assert_close(both[1].double(), values.double().mean(dim=0), rtol=4e-3, atol=0)


@pytest.mark.parametrize("encoder_type", ["sparse_conv", "mlp"])
def test_several_top_site_fractions_pool_one_pass_as_each_alone_would(encoder_type, tiny_config):
    """``top_site_fractions`` gives, per fraction, what a model configured with that fraction gives; 1.0 is the
    mean of the sites; a model that is not top-pooled refuses them, as do fractions outside (0, 1]."""
    torch.manual_seed(0)
    config = tiny_config(encoder_type=encoder_type, slide_pooling="top", top_site_fraction=0.05)
    model = _trained_like(GigaSSLModel(config))
    cells = torch.cartesian_prod(torch.arange(12), torch.arange(10))
    features = torch.randn(2, len(cells), 8)
    coords, mask = (cells * PATCH).expand(2, -1, -1), torch.ones(2, len(cells), dtype=torch.bool)
    mask[1, 50:] = False  # two slides of different sizes in one batch
    fractions = [0.05, 0.3, 1.0]
    with torch.no_grad():
        pooled = model(features, coords, mask, PATCH, top_site_fractions=fractions).slide_embedding
        assert pooled.shape == (2, 3, config.hidden_dim)
        for index, fraction in enumerate(fractions):
            model.config.top_site_fraction = fraction
            alone = model(features, coords, mask, PATCH).slide_embedding  # (2, hidden)
            torch.testing.assert_close(pooled[:, index], alone, rtol=1e-5, atol=1e-6)
        model.config.slide_pooling = "mean"
        torch.testing.assert_close(pooled[:, 2], model(features, coords, mask, PATCH).slide_embedding)
        with pytest.raises(ValueError, match="needs a model with slide_pooling='top'"):
            model(features, coords, mask, PATCH, top_site_fractions=[0.1])
        model.config.slide_pooling = "top"
        with pytest.raises(ValueError, match=r"values in \(0, 1\]"):
            model(features, coords, mask, PATCH, top_site_fractions=[0.1, 0.0])


def test_a_site_reached_only_through_its_window_edge_belongs_to_no_tile(tiny_config):
    """Tiles at cells (0, 0) and (2, 2): the stride-2 windows of sites (0, 1), (1, 0) hold no tile's own cell."""
    model = _trained_like(GigaSSLModel(tiny_config()))
    features, coords = torch.randn(2, 8), torch.tensor([[0, 0], [2, 2]]) * PATCH
    with torch.no_grad():
        out = model(features[None], coords[None], patch_size_level0=PATCH, output_tile_embeddings=True)
        grid = _output_grid(model, features, coords)
    assert sorted(map(tuple, grid.xy.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(torch.unique(out.tile_embeddings[0], dim=0)) == 2
    torch.testing.assert_close(grid.features.mean(dim=0), out.slide_embedding[0])


def test_patch_size_sets_the_grid_cell(tiny_config):
    model = GigaSSLModel(tiny_config()).eval()
    generator = torch.Generator().manual_seed(4)
    features, cells = (
        torch.randn(1, 10, 8, generator=generator),
        torch.randint(0, 9, (1, 10, 2), generator=generator),
    )
    with torch.no_grad():
        at_224 = model(features, cells * 224).slide_embedding  # config.grid_cell_size
        at_896 = model(features, cells * 896, patch_size_level0=896).slide_embedding
        fixed = GigaSSLModel(tiny_config(fixed_grid_cell_size=True)).eval()
        fixed.load_state_dict(model.state_dict())
        # The original's convention: 896 px tiles at 224 px per cell sit 4 cells apart.
        spaced = fixed(features, cells * 896, patch_size_level0=896).slide_embedding
        expected_spaced = model(features, cells * 4 * 224).slide_embedding
    torch.testing.assert_close(at_224, at_896)
    torch.testing.assert_close(spaced, expected_spaced)
    assert not torch.allclose(spaced, at_224)


def test_batch_grid_mode_couples_slides_but_matches_per_slide_alone(tiny_config):
    per_slide = GigaSSLModel(tiny_config()).eval()
    batch_mode = GigaSSLModel(tiny_config(grid_size_mode="batch")).eval()
    batch_mode.load_state_dict(per_slide.state_dict())
    generator = torch.Generator().manual_seed(5)
    small, large = random_slide(6, generator, grid=3), random_slide(30, generator, grid=40)
    torch.testing.assert_close(embed(batch_mode, [small]), embed(per_slide, [small]))
    assert embed(batch_mode, [small, large]).shape == (2, 16)


def test_padding_has_no_effect_on_gradients_or_training_statistics(tiny_config):
    torch.manual_seed(0)
    model = GigaSSLModel(tiny_config()).train()
    twin = GigaSSLModel(tiny_config()).train()
    twin.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(6)
    features, coords = random_slide(6, generator)
    padded_features = torch.cat([features, torch.randn(4, 8, generator=generator)])[None].requires_grad_(True)
    padded_coords = torch.cat([coords, coords[:4] + PATCH])[None]
    mask = torch.tensor([[True] * 6 + [False] * 4])
    out = model(padded_features, padded_coords, tile_mask=mask, patch_size_level0=PATCH).slide_embedding
    ref = twin(features[None], coords[None], patch_size_level0=PATCH).slide_embedding
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert padded_features.grad[0, 6:].abs().max() == 0
    for a, b in zip(model.buffers(), twin.buffers()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("features", "coords", "mask", "message"),
    [
        (torch.randn(2, 5, 7), torch.zeros(2, 5, 2), None, "feature_dim"),
        (torch.randn(2, 5, 8), torch.zeros(2, 5, 3), None, "tile_coords"),
        (torch.randn(2, 5, 8), torch.zeros(2, 4, 2), None, "tile_coords"),
        (torch.randn(5, 8), torch.zeros(5, 2), None, "tile_features"),
        (torch.randn(2, 5, 8), torch.zeros(2, 5, 2), torch.tensor([[True] * 5, [False] * 5]), "masked"),
    ],
)
def test_bad_inputs_raise_clear_errors(features, coords, mask, message, tiny_config):
    model = GigaSSLModel(tiny_config())
    with pytest.raises(ValueError, match=message):
        model(features, coords, tile_mask=mask)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("feature_dim", 0),
        ("hidden_dim", -3),
        ("encoder_type", "transformer"),
        ("grid_size_mode", "global"),
        ("grid_cell_size", 0),
        ("projection_dims", ()),
        ("temperature", 0.0),
        ("n_tiles", 0),
        ("mlp_num_blocks", 0),
        ("mlp_dropout", 1.0),
        ("slide_pooling", "attention"),
        ("top_site_fraction", 0.0),
        ("top_site_fraction", 1.5),
    ],
)
def test_invalid_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GigaSSLConfig(**{field: value})


def test_load_layer4_weights_from_torchvision_resnet18(tiny_config):
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    model = GigaSSLModel(GigaSSLConfig())
    model.load_layer4_weights(resnet.layer4.state_dict())
    torch.testing.assert_close(model.encoder.layer4[0].conv1.weight, resnet.layer4[0].conv1.weight)
    torch.testing.assert_close(
        model.encoder.layer4[0].downsample[0].weight, resnet.layer4[0].downsample[0].weight
    )
    model.load_layer4_weights(resnet.state_dict())  # a whole ResNet state_dict: its layer4 entries
    with pytest.raises(RuntimeError, match="size mismatch"):
        GigaSSLModel(tiny_config()).load_layer4_weights(resnet.layer4.state_dict())


def test_nt_xent_loss_matches_its_definition():
    generator = torch.Generator().manual_seed(7)
    a, b = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    z = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    similarity = z @ z.T / 0.5
    expected = 0.0
    for i in range(8):
        positive = (i + 4) % 8
        others = [similarity[i, j].exp() for j in range(8) if j != i]
        expected += -torch.log(similarity[i, positive].exp() / sum(others))
    torch.testing.assert_close(nt_xent_loss(a, b, 0.5), expected / 8)
    # Identical, well separated views give a much lower loss than random pairs.
    assert nt_xent_loss(10 * torch.eye(4), 10 * torch.eye(4), 0.05) < nt_xent_loss(a, b, 0.05)


def random_view_pairs(seed: int, batch: int, n_tiles: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views per slide of 8-d tile features ``(batch, 2, n_tiles, 8)`` on a ``grid`` x ``grid`` tile grid."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 2, n_tiles, 8, generator=generator)
    coords = torch.randint(0, grid, (batch, 2, n_tiles, 2), generator=generator) * 224
    return features, coords


@pytest.mark.parametrize("encoder_type", ["sparse_conv", "mlp"])
def test_contrastive_model_returns_loss_and_learns(encoder_type, tiny_config):
    torch.manual_seed(0)
    model = GigaSSLForContrastivePretraining(tiny_config(encoder_type=encoder_type, temperature=0.1))
    features, coords = random_view_pairs(seed=8, batch=8, n_tiles=5, grid=20)
    out = model(features, coords)
    assert (
        out.loss.ndim == 0 and out.slide_embedding.shape == (8, 2, 16) and out.projection.shape == (8, 2, 8)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        loss = model(features, coords).loss
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    single = model(features[:, 0], coords[:, 0])
    assert single.loss is None and single.slide_embedding.shape == (8, 16)


def _trained_like(model):
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def test_save_pretrained_and_auto_model_round_trip(tmp_path, tiny_config):
    model = _trained_like(GigaSSLModel(tiny_config()))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert {"configuration_gigassl.py", "modeling_gigassl.py", "sparse_ops.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    register_auto_classes()
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, GigaSSLConfig) and config.auto_map["AutoModel"].endswith("GigaSSLModel")
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GigaSSLModel)
    generator = torch.Generator().manual_seed(10)
    features, coords = (
        torch.randn(3, 9, 8, generator=generator),
        torch.randint(0, 30, (3, 9, 2), generator=generator),
    )
    with torch.no_grad():
        assert torch.equal(
            model(features, coords * 224).slide_embedding, loaded(features, coords * 224).slide_embedding
        )


def test_encoder_loads_from_a_pretraining_checkpoint(tmp_path, tiny_config):
    pretraining = _trained_like(GigaSSLForContrastivePretraining(tiny_config()))
    pretraining.save_pretrained(tmp_path)
    encoder = GigaSSLModel.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(encoder.state_dict().items(), pretraining.gigassl.state_dict().items()):
        assert torch.equal(a, b), name


def test_remote_code_loads_without_the_package(tmp_path, tiny_config):
    model = _trained_like(GigaSSLModel(tiny_config()))
    model.save_pretrained(tmp_path / "model")
    generator = torch.Generator().manual_seed(11)
    features, coords = (
        torch.randn(2, 7, 8, generator=generator),
        torch.randint(0, 30, (2, 7, 2), generator=generator) * 224,
    )
    torch.save({"features": features, "coords": coords}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(features, coords, output_tile_embeddings=True)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["giga_ssl_hf"] = None  # any import of the package fails
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            out = model(inputs["features"], inputs["coords"], output_tile_embeddings=True)
        torch.save(dict(out), {str(tmp_path / "out.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=300)
    remote = torch.load(tmp_path / "out.pt")
    assert torch.equal(remote["slide_embedding"], expected.slide_embedding)
    assert remote["tile_embeddings"].shape == (2, 7, 16)
    assert torch.equal(remote["tile_embeddings"], expected.tile_embeddings)


@pytest.mark.parametrize("encoder_type", ["sparse_conv", "mlp"])
def test_bf16_autocast_training_step(encoder_type, tiny_config):
    """Mixed precision (accelerate --mixed_precision bf16) trains: fp32 gradients, a loss close to fp32's."""
    torch.manual_seed(0)
    model = GigaSSLForContrastivePretraining(tiny_config(encoder_type=encoder_type, temperature=0.5))
    features, coords = random_view_pairs(seed=12, batch=6, n_tiles=7, grid=9)
    reference = model(features, coords)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(features, coords)
    output.loss.backward()
    assert abs(output.loss.item() - reference.loss.item()) < 0.05 * abs(reference.loss.item())
    cosine = torch.nn.functional.cosine_similarity(
        output.slide_embedding.float().flatten(), reference.slide_embedding.detach().flatten(), dim=0
    )
    assert cosine > 0.999
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_saved_weights_get_the_umask_mode_like_the_other_files(tmp_path):
    umask = os.umask(0o022)
    try:
        GigaSSLModel(GigaSSLConfig(feature_dim=8, hidden_dim=16, projection_dims=[8])).save_pretrained(
            tmp_path
        )
    finally:
        os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


@pytest.mark.parametrize("model_class", [GigaSSLModel, GigaSSLForContrastivePretraining])
def test_a_misspelt_argument_is_refused(model_class, tiny_config):
    """`tile_masks=` for `tile_mask=` would leave the padding unmasked if it were ignored."""
    model = model_class(tiny_config()).eval()
    features, coords = torch.randn(1, 3, 8), torch.tensor([[[0, 0], [448, 0], [0, 448]]])
    with pytest.raises(TypeError, match="tile_masks"):
        model(features, coords, tile_masks=torch.tensor([[True, True, False]]))
