"""Conversion of original Giga-SSL checkpoints, built here in the original module layouts (trislaz/gigassl
``networks.py`` / ``simclr.py``, trislaz/Democratizing_WSI ``networks.py``) with the weights of the
SparseConvNet reference cases, to models that reproduce the reference outputs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from giga_ssl_hf import GigaSSLForContrastivePretraining, GigaSSLModel
from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.hub.convert import convert_checkpoint, write_converted

OUTPUT_ATOL = 1e-5


# --- stand-ins for the original modules: only their parameter / buffer names matter --------------------
class ScnConv(nn.Module):
    """sparseconvnet.(Submanifold)Convolution: one weight (k*k, 1, C_in, C_out), no bias."""

    def __init__(self, dense: torch.Tensor):
        super().__init__()
        c_out, c_in, k, _ = dense.shape
        # As networks.py SparseBasicBlock.load_conv_layer_weights_from.
        self.weight = nn.Parameter(dense.permute(2, 3, 1, 0).reshape(k * k, 1, c_in, c_out).clone())


class ScnBatchNorm(nn.Module):
    """sparseconvnet.BatchNormalization: weight, bias, running_mean, running_var (no update count)."""

    def __init__(self, dense: dict[str, torch.Tensor]):
        super().__init__()
        self.weight = nn.Parameter(dense["weight"].clone())
        self.bias = nn.Parameter(dense["bias"].clone())
        self.register_buffer("running_mean", dense["running_mean"].clone())
        self.register_buffer("running_var", dense["running_var"].clone())


class SparseBasicBlock(nn.Module):
    def __init__(self, dense: dict[str, torch.Tensor], downsample: bool):
        super().__init__()

        def norm(name):
            return ScnBatchNorm(
                {p: dense[f"{name}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")}
            )

        self.conv1, self.norm1 = ScnConv(dense["conv1.weight"]), norm("bn1")
        self.conv2, self.norm2 = ScnConv(dense["conv2.weight"]), norm("bn2")
        if downsample:
            self.convd, self.normd = ScnConv(dense["downsample.0.weight"]), norm("downsample.1")


def sparse_layer4(dense: dict[str, torch.Tensor]) -> nn.Module:
    """cut_resnet_dense_sparse(resnet18, 4): torch Sequential of one sparseconvnet.Sequential of 2 blocks."""
    blocks = [
        SparseBasicBlock({k[2:]: v for k, v in dense.items() if k.startswith(f"{i}.")}, downsample=i == 0)
        for i in range(2)
    ]
    return nn.Sequential(nn.Sequential(*blocks))


class ProjectionMLP(nn.Module):
    """simclr.py projection_MLP."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.BatchNorm1d(dim))
        self.layer2 = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.BatchNorm1d(dim))
        self.layer3 = nn.Linear(dim, out_dim)

    def forward(self, x):
        return self.layer3(self.layer2(self.layer1(x)))


def _holder(**children) -> nn.Module:
    module = nn.Module()
    for name, child in children.items():
        setattr(module, name, child)
    return module


def original_simclrmil(dense, with_projector: bool = True) -> nn.Module:
    """SimCLRMIL(FullSparseConvMIL): backbone.net.{mil_model.sparse_pooling, linear_classifier=Identity}."""
    mil_model = _holder(sparse_pooling=sparse_layer4(dense))
    backbone = _holder(net=_holder(mil_model=mil_model, linear_classifier=nn.Identity()))
    if not with_projector:
        return _holder(backbone=backbone)
    projector = _trained(ProjectionMLP(16, 8))
    # SimCLRMIL.encoder registers backbone and projector a second time.
    return _holder(backbone=backbone, projector=projector, encoder=nn.Sequential(backbone, projector))


def successor_scm(dense) -> nn.Module:
    """Democratizing_WSI: FullSparseConvMIL under backbone.mil, with its linear_classifier (bias-free)."""
    mil_model = _holder(sparse_pooling=sparse_layer4(dense))
    net = _holder(mil_model=mil_model, linear_classifier=nn.Linear(16, 16, bias=False))
    return _holder(backbone=_holder(mil=_holder(net=net)))


def _trained(module: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(5)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)
            m.num_batches_tracked.fill_(7)
    return module.eval()


# --- the original argparse config (arguments.py: argparse.Namespace of arguments.Namespace sections) -------
class ArgumentsNamespace:
    """trislaz/gigassl arguments.Namespace, pickled as ``arguments.Namespace``."""

    def __init__(self, somedict):
        for key, value in somedict.items():
            self.__dict__[key] = ArgumentsNamespace(value) if isinstance(value, dict) else value

    def __getattr__(self, attribute):
        raise AttributeError(attribute)


ArgumentsNamespace.__module__, ArgumentsNamespace.__qualname__ = "arguments", "Namespace"


def original_config(downmap: int = 224) -> argparse.Namespace:
    sections = {
        "name": "tcgamoco",
        "dataset": {"nb_tiles": 5, "feature_depth": 256, "Naug": 50},
        "model": {"name": "simclrmil", "downmap": downmap, "temperature_xent": 0.05, "num_class": 512},
        "train": {"optimizer": {"name": "adam", "weight_decay": 0.0005}, "base_lr": 0.03, "batch_size": 256},
    }
    config = argparse.Namespace(config_file="simclr_mil_scm.yaml", seed=None)
    for key, value in sections.items():
        setattr(config, key, ArgumentsNamespace(value) if isinstance(value, dict) else value)
    return config


def save_original(path, state_dict, config, monkeypatch, epoch: int = 1001):
    """torch.save as main_sharedaug.py does; `arguments` importable only while pickling."""
    with monkeypatch.context() as patch:
        module = types.ModuleType("arguments")
        module.Namespace = ArgumentsNamespace
        patch.setitem(sys.modules, "arguments", module)
        torch.save({"epoch": epoch, "state_dict": state_dict, "config": config}, path)
    return path


# --- reference cases -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(shared_dir):
    with np.load(shared_dir / "reference/sparseconvnet/scn_reference_small.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _dense(reference, case):
    prefix = f"{case}/dense/"
    return {k[len(prefix) :]: torch.from_numpy(v) for k, v in reference.items() if k.startswith(prefix)}


def _inputs(reference, case):
    """Padded (B, N, ...) inputs and mask from the reference's flat [x, y, batch] tiles."""
    pix, emb = reference[f"{case}/pix"], reference[f"{case}/emb"]
    counts = np.bincount(pix[:, 2])
    slot = np.concatenate([np.arange(c) for c in counts])
    shape = (len(counts), counts.max())
    features, coords = torch.zeros(*shape, emb.shape[1]), torch.zeros(*shape, 2, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.bool)
    features[pix[:, 2], slot], coords[pix[:, 2], slot] = torch.from_numpy(emb), torch.from_numpy(pix[:, :2])
    mask[pix[:, 2], slot] = True
    return features, coords, mask


@pytest.mark.parametrize("case", [f"e2e{i}" for i in range(4)])
def test_original_simclrmil_reproduces_the_reference(reference, case, tmp_path, monkeypatch):
    original = original_simclrmil(_dense(reference, case))
    path = save_original(tmp_path / "gigassl.pth", original.state_dict(), original_config(), monkeypatch)
    model, summary = convert_checkpoint(path)

    assert isinstance(model, GigaSSLForContrastivePretraining)
    config = model.config
    assert (config.grid_size_mode, config.fixed_grid_cell_size, config.grid_cell_size) == ("batch", True, 224)
    assert (config.feature_dim, config.hidden_dim, config.projection_dims, config.n_tiles) == (
        8,
        16,
        [16, 16, 8],
        5,
    )
    features, coords, mask = _inputs(reference, case)
    with torch.no_grad():
        # patch_size_level0 is ignored: the original divided level-0 px by 224 whatever the tile size.
        output = model.gigassl(features, coords, tile_mask=mask, patch_size_level0=896).slide_embedding
        np.testing.assert_allclose(output.numpy(), reference[f"{case}/eval_out"], atol=OUTPUT_ATOL, rtol=0)
        projected = model.projection_head(output)
        np.testing.assert_allclose(projected.numpy(), original.projector(output).numpy(), atol=1e-6, rtol=0)
    assert model.projection_head[2].num_batches_tracked.item() == 7
    assert summary["epoch_saved"] == 1001 and summary["tiles_per_view"] == 5
    assert summary["original_layout"].startswith("gigassl")


def test_successor_scm_with_dict_config_converts(reference, tmp_path):
    dense = _dense(reference, "e2e1")
    path = tmp_path / "gigassl-scm-moco.pth.tar"
    torch.save(
        {"state_dict": successor_scm(dense).state_dict(), "config": {"downmap": 224, "num_class": 16}}, path
    )
    model, summary = convert_checkpoint(path)

    assert isinstance(model, GigaSSLModel)
    features, coords, mask = _inputs(reference, "e2e1")
    with torch.no_grad():
        output = model(features, coords, tile_mask=mask).slide_embedding
    np.testing.assert_allclose(output.numpy(), reference["e2e1/eval_out"], atol=OUTPUT_ATOL, rtol=0)
    assert summary["original_layout"].startswith("successor-scm")


def test_cli_writes_a_folder_that_loads_and_pushes(reference, tmp_path, monkeypatch):
    original = original_simclrmil(_dense(reference, "e2e2"), with_projector=False)
    path = save_original(tmp_path / "gigassl.pth", original.state_dict(), original_config(), monkeypatch)
    assert cli_main(["convert", str(path), "--out", str(tmp_path / "hf")]) == 0
    assert {"config.json", "model.safetensors", "training_summary.json"} <= set(os.listdir(tmp_path / "hf"))
    summary = json.loads((tmp_path / "hf" / "training_summary.json").read_text())
    assert summary["original_config"]["model.downmap"] == 224

    assert (
        cli_main(
            [
                "push-model",
                str(tmp_path / "hf"),
                "--repo-id",
                "org/gigassl",
                "--dry-run",
                str(tmp_path / "hub"),
            ]
        )
        == 0
    )
    model = GigaSSLModel.from_pretrained(tmp_path / "hub").eval()
    features, coords, mask = _inputs(reference, "e2e2")
    with torch.no_grad():
        output = model(features, coords, tile_mask=mask).slide_embedding
    np.testing.assert_allclose(output.numpy(), reference["e2e2/eval_out"], atol=OUTPUT_ATOL, rtol=0)
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "gigassl.pth" in card and "level-0 coordinates / 224 px" in card


class Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickled_object_off_the_allow_list_is_refused(reference, tmp_path):
    marker = tmp_path / "code-ran"
    original = original_simclrmil(_dense(reference, "e2e0"))
    torch.save({"state_dict": original.state_dict(), "config": Malicious(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refused to load.*posix.mkdir|refused to load.*mkdir"):
        convert_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    assert cli_main(["convert", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_unknown_layouts_and_unexpected_keys_are_clear_errors(reference, tmp_path, monkeypatch):
    torch.save({"state_dict": {"net.fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"unknown checkpoint layout(.|\n)*net\.fc\.weight"):
        convert_checkpoint(tmp_path / "other.pth")

    state_dict = original_simclrmil(_dense(reference, "e2e0")).state_dict()
    state_dict["backbone.net.mil_model.attention.weight"] = torch.zeros(3)
    save_original(tmp_path / "extra.pth", state_dict, original_config(), monkeypatch)
    with pytest.raises(
        ValueError, match=r"1 unexpected key\(s\).*backbone\.net\.mil_model\.attention\.weight"
    ):
        convert_checkpoint(tmp_path / "extra.pth")


class LinearBatchNorm(nn.Module):
    def __init__(self, n_in, n_out, relu):
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(n_in, n_out), nn.ReLU() if relu else nn.Identity(), nn.Dropout(0)
        )
        self.norm = nn.BatchNorm1d(n_out)

    def forward(self, x):
        return self.norm(self.block(x))


class ResidualMLPBlock(nn.Module):
    def __init__(self, n_in, n_out=None):
        super().__init__()
        self.residual_lin = nn.Identity() if n_out is None else LinearBatchNorm(n_in, n_out, relu=False)
        n_out = n_out or n_in
        self.block = nn.Sequential(LinearBatchNorm(n_in, n_out, True), LinearBatchNorm(n_out, n_out, False))

    def forward(self, x):
        return torch.relu(self.block(x) + self.residual_lin(x))


class SuccessorResidualMLP(nn.Module):
    """trislaz/Democratizing_WSI ResidualMLP: tile encoder blocks, mean over tiles, then a classifier."""

    def __init__(self, n_in, n_hidden, n_classes=2):
        super().__init__()
        self.tile_encoder = nn.Sequential(ResidualMLPBlock(n_in, n_hidden), ResidualMLPBlock(n_hidden))
        self.classifier = nn.Linear(n_hidden, n_classes)

    def embed(self, x):  # (B, N, D) -> (B, hidden): the slide embedding before the classifier
        return self.tile_encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2]).mean(1)


def test_the_successors_mlp_converts_and_reproduces_its_embeddings(tmp_path):
    torch.manual_seed(0)
    mlp = SuccessorResidualMLP(8, 16)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in mlp.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    mlp.eval()
    torch.save(
        {"state_dict": _holder(backbone=_holder(mil=mlp)).state_dict(), "config": {"dropout": 0.1}},
        tmp_path / "m.pth",
    )
    converted, _ = convert_checkpoint(tmp_path / "m.pth")
    assert isinstance(converted, GigaSSLModel)
    assert (converted.config.encoder_type, converted.config.mlp_num_blocks) == ("mlp", 2)
    assert converted.config.mlp_dropout == 0.1
    tiles = torch.randn(3, 7, 8)
    with torch.no_grad():
        expected = mlp.embed(tiles)
        ours = converted(tiles, torch.zeros(3, 7, 2)).slide_embedding
    torch.testing.assert_close(ours, expected, atol=OUTPUT_ATOL, rtol=0)


def test_write_converted_round_trips_through_save_pretrained(reference, tmp_path, monkeypatch):
    original = original_simclrmil(_dense(reference, "e2e3"))
    path = save_original(
        tmp_path / "gigassl.pth", original.state_dict(), original_config(downmap=448), monkeypatch
    )
    write_converted(path, tmp_path / "hf")
    model = GigaSSLForContrastivePretraining.from_pretrained(tmp_path / "hf")
    assert model.config.grid_cell_size == 448
    converted, _ = convert_checkpoint(path)
    for (name, saved), kept in zip(model.state_dict().items(), converted.state_dict().values()):
        assert torch.equal(saved, kept), name
