"""Parity with facebookresearch/SparseConvNet outputs recorded through the original Giga-SSL encoder."""

import numpy as np
import pytest
import torch

from giga_ssl_hf import GigaSSLConfig, GigaSSLModel
from giga_ssl_hf.models.gigassl.sparse_ops import (
    StridedConv2d,
    SubmanifoldConv2d,
    average_pool_3x3_stride2,
    input_layer,
)

OUTPUT_ATOL = 1e-5
GRAD_RTOL = 1e-4


@pytest.fixture(scope="module")
def reference(shared_dir):
    with np.load(shared_dir / "reference/sparseconvnet/scn_reference_small.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _cases(reference, prefix):
    return sorted({key.split("/")[0] for key in reference if key.startswith(prefix)})


def _sorted_sites(locs, feats):
    """Rows sorted by (batch, x, y) from SparseConvNet's [x, y, batch] locations."""
    order = np.lexsort((locs[:, 1], locs[:, 0], locs[:, 2]))
    return locs[order][:, [2, 0, 1]], feats[order]


def _ours(grid):
    return torch.cat([grid.batch[:, None], grid.xy], dim=1).numpy(), grid.features.detach().numpy()


def _dense_weight(sparse_weight):
    """(k*k, 1, C_in, C_out) SparseConvNet weights -> (C_out, C_in, k, k) with the first kernel axis along x."""
    k = int(round(sparse_weight.shape[0] ** 0.5))
    c_in, c_out = sparse_weight.shape[2:]
    return torch.from_numpy(sparse_weight[:, 0].reshape(k, k, c_in, c_out)).permute(3, 2, 0, 1).contiguous()


def _op_input(reference, case):
    coords = torch.from_numpy(reference[f"{case}/coords"])
    batch_size = int(coords[:, 2].max()) + 1
    spatial = torch.from_numpy(reference[f"{case}/spatial"]).expand(batch_size, 2)
    return input_layer(coords[:, 2], coords[:, :2], torch.from_numpy(reference[f"{case}/feats"]), spatial)


def _assert_sites(grid, locs, feats, atol=OUTPUT_ATOL):
    expected_sites, expected_feats = _sorted_sites(locs, feats)
    sites, values = _ours(grid)
    np.testing.assert_array_equal(sites, expected_sites)
    np.testing.assert_allclose(values, expected_feats, atol=atol, rtol=0)


def test_reference_has_cases(reference):
    assert len(_cases(reference, "op")) == 7 and len(_cases(reference, "e2e")) == 4


@pytest.mark.parametrize("case", [f"op{i}" for i in range(7)])
def test_op_level_parity(reference, case):
    grid = _op_input(reference, case)
    _assert_sites(grid, reference[f"{case}/in_locs"], reference[f"{case}/in_feats"])

    subm3 = SubmanifoldConv2d(4, 3, kernel_size=3)
    subm3.weight.data = _dense_weight(reference[f"{case}/subm3_w"])
    _assert_sites(subm3(grid), reference[f"{case}/in_locs"], reference[f"{case}/subm3_out"])

    subm1 = SubmanifoldConv2d(4, 3, kernel_size=1)
    subm1.weight.data = _dense_weight(reference[f"{case}/subm1_w"])
    _assert_sites(subm1(grid), reference[f"{case}/in_locs"], reference[f"{case}/subm1_out"])

    conv = StridedConv2d(4, 3)
    conv.weight.data = _dense_weight(reference[f"{case}/conv_w"])
    conv_out = conv(grid)
    _assert_sites(conv_out, reference[f"{case}/conv_locs"], reference[f"{case}/conv_out"])
    assert (conv_out.spatial_size == torch.from_numpy(reference[f"{case}/conv_spatial"])).all()

    _assert_sites(
        average_pool_3x3_stride2(grid), reference[f"{case}/pool_locs"], reference[f"{case}/pool_out"]
    )


@pytest.mark.parametrize("case", [f"op{i}" for i in range(7)])
def test_batch_norm_parity(reference, case):
    norm = torch.nn.BatchNorm1d(4, eps=1e-5, momentum=0.1)
    norm.weight.data = torch.from_numpy(reference[f"{case}/bn_weight"])
    norm.bias.data = torch.from_numpy(reference[f"{case}/bn_bias"])
    norm.running_mean.copy_(torch.from_numpy(reference[f"{case}/bn_rm"]))
    norm.running_var.copy_(torch.from_numpy(reference[f"{case}/bn_rv"]))
    _, feats = _sorted_sites(reference[f"{case}/in_locs"], reference[f"{case}/in_feats"])
    _, train_expected = _sorted_sites(reference[f"{case}/in_locs"], reference[f"{case}/bn_train_out"])
    _, eval_expected = _sorted_sites(reference[f"{case}/in_locs"], reference[f"{case}/bn_eval_out"])
    features = torch.from_numpy(feats)

    norm.eval()
    np.testing.assert_allclose(norm(features).detach().numpy(), eval_expected, atol=OUTPUT_ATOL, rtol=0)
    norm.train()
    np.testing.assert_allclose(norm(features).detach().numpy(), train_expected, atol=OUTPUT_ATOL, rtol=0)
    np.testing.assert_allclose(norm.running_mean.numpy(), reference[f"{case}/bn_rm_after"], atol=OUTPUT_ATOL)
    np.testing.assert_allclose(norm.running_var.numpy(), reference[f"{case}/bn_rv_after"], atol=OUTPUT_ATOL)


def _e2e_model(reference, case):
    config = GigaSSLConfig(feature_dim=8, hidden_dim=16, grid_size_mode="batch", grid_cell_size=224)
    model = GigaSSLModel(config)
    prefix = f"{case}/dense/"
    model.load_layer4_weights(
        {key[len(prefix) :]: torch.from_numpy(reference[key]) for key in reference if key.startswith(prefix)}
    )
    return model


def _e2e_inputs(reference, case):
    """Padded (B, N, ...) inputs with a mask from the reference's flat [x, y, batch] tiles."""
    pix, emb = reference[f"{case}/pix"], reference[f"{case}/emb"]
    batch_size = int(pix[:, 2].max()) + 1
    counts = np.bincount(pix[:, 2], minlength=batch_size)
    slot = np.concatenate([np.arange(c) for c in counts])
    features = torch.zeros(batch_size, counts.max(), emb.shape[1])
    coords = torch.zeros(batch_size, counts.max(), 2, dtype=torch.long)
    mask = torch.zeros(batch_size, counts.max(), dtype=torch.bool)
    features[pix[:, 2], slot] = torch.from_numpy(emb)
    coords[pix[:, 2], slot] = torch.from_numpy(pix[:, :2])
    mask[pix[:, 2], slot] = True
    return features, coords, mask, (pix[:, 2], slot)


@pytest.mark.parametrize("case", [f"e2e{i}" for i in range(4)])
def test_end_to_end_eval_parity(reference, case):
    model = _e2e_model(reference, case).eval()
    features, coords, mask, _ = _e2e_inputs(reference, case)
    cell = torch.full((features.shape[0],), 224)
    with torch.no_grad():
        grid = model.encoder.build_grid(features, coords, mask, cell)
        _assert_sites(grid, reference[f"{case}/in_locs"], reference[f"{case}/in_feats"])
        assert (grid.spatial_size == torch.from_numpy(reference[f"{case}/spatial"])).all()
        grid = model.encoder.layer4(grid)
        _assert_sites(grid, reference[f"{case}/eval_sites_locs"], reference[f"{case}/eval_sites_feats"])
        output = model(features, coords, tile_mask=mask).slide_embedding
    np.testing.assert_allclose(output.numpy(), reference[f"{case}/eval_out"], atol=OUTPUT_ATOL, rtol=0)


@pytest.mark.parametrize("case", [f"e2e{i}" for i in range(4)])
def test_end_to_end_train_parity(reference, case):
    model = _e2e_model(reference, case).train()
    features, coords, mask, (batch_of_tile, slot) = _e2e_inputs(reference, case)
    features.requires_grad_(True)
    output = model(features, coords, tile_mask=mask).slide_embedding
    np.testing.assert_allclose(
        output.detach().numpy(), reference[f"{case}/train_out"], atol=OUTPUT_ATOL, rtol=0
    )

    blocks = model.encoder.layer4
    norms = {
        "0.0.norm1": blocks[0].bn1,
        "0.0.norm2": blocks[0].bn2,
        "0.0.normd": blocks[0].downsample[1],
        "0.1.norm1": blocks[1].bn1,
        "0.1.norm2": blocks[1].bn2,
    }
    for name, norm in norms.items():
        np.testing.assert_allclose(
            norm.running_mean.numpy(), reference[f"{case}/train_rm_after/{name}"], atol=OUTPUT_ATOL
        )
        np.testing.assert_allclose(
            norm.running_var.numpy(), reference[f"{case}/train_rv_after/{name}"], atol=OUTPUT_ATOL
        )

    (output * torch.from_numpy(reference[f"{case}/train_gproj"])).sum().backward()
    grad_emb = features.grad[batch_of_tile, slot].numpy()
    expected_emb = reference[f"{case}/train_grad_emb"]
    expected_conv1 = reference[f"{case}/train_grad_conv1"]
    scale_emb, scale_conv1 = np.abs(expected_emb).max(), np.abs(expected_conv1).max()
    np.testing.assert_allclose(grad_emb, expected_emb, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale_emb)
    np.testing.assert_allclose(
        blocks[0].conv1.weight.grad.numpy(), expected_conv1, rtol=GRAD_RTOL, atol=GRAD_RTOL * scale_conv1
    )
