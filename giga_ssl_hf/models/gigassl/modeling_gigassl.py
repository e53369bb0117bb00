"""Giga-SSL slide encoders (SparseConvMIL and the light MLP variant) and the SimCLR pretraining model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_gigassl import GigaSSLConfig
from .sparse_ops import (
    SparseGrid,
    StridedConv2d,
    SubmanifoldConv2d,
    average_pool_3x3_stride2,
    downsampled_site,
    input_layer,
    segment_reduce,
    sparse_batch_norm,
    sparse_relu,
)


@dataclass
class GigaSSLModelOutput(ModelOutput):
    """
    Args:
        slide_embedding (`torch.FloatTensor` of shape `(batch_size, hidden_dim)`):
            One embedding per slide (not normalised; inference L2-normalises the mean over views).
        tile_embeddings (`torch.FloatTensor` of shape `(batch_size, n_tiles, hidden_dim)`, *optional*):
            With `output_tile_embeddings=True`: for each input tile, the embedding of the output site its grid
            cell falls in after `layer4`'s stride 2 (cell `(x, y)` -> site `(x // 2, y // 2)`), so tiles sharing
            a site share a row; for the `"mlp"` encoder, the tile's own row before the mean. Padded tiles get
            zeros. The slide embedding pools the output *sites* (`config.slide_pooling`): when every site holds a
            tile's cell (always for `"mlp"`; for a sparse map whenever no site is reached only through its
            window's far edge, e.g. a full rectangle of tiles), it pools the distinct tile embeddings alike.
    """

    slide_embedding: torch.FloatTensor | None = None
    tile_embeddings: torch.FloatTensor | None = None


@dataclass
class GigaSSLContrastiveOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            NT-Xent loss between the two views of each slide, when two views were given.
        slide_embedding (`torch.FloatTensor` of shape `(batch_size, n_views, hidden_dim)` or `(batch_size, hidden_dim)`):
            Encoder output for each view.
        projection (`torch.FloatTensor` of shape `(batch_size, n_views, projection_dims[-1])` or `(batch_size, projection_dims[-1])`):
            Projection-head output for each view (the space the loss is computed in).
    """

    loss: torch.FloatTensor | None = None
    slide_embedding: torch.FloatTensor | None = None
    projection: torch.FloatTensor | None = None


def pool_sites(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, pooling: str, top_fraction: float
) -> torch.Tensor:
    """`(num_segments, C)` slide embeddings from the `(N, C)` site (or tile) rows of each slide (``segment_ids``:
    `(N,)`, every slide non-empty): their ``"mean"``, ``"max"``, or with ``"top"`` the mean of each channel's
    ``k = max(1, round(top_fraction * n_sites))`` largest values (a slide of few sites is max-pooled)."""
    if pooling != "top":
        return segment_reduce(values, segment_ids, num_segments, pooling)
    return top_site_means(values, segment_ids, num_segments, [top_fraction])[:, 0]


def top_site_means(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, fractions: Sequence[float]
) -> torch.Tensor:
    """`(num_segments, len(fractions), C)`: for each fraction q, the mean of each channel's
    ``max(1, round(q * n_sites))`` largest values of each slide, all from one sort."""
    lengths = torch.bincount(segment_ids, minlength=num_segments)  # (S,)
    order = torch.argsort(segment_ids, stable=True)
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.empty_like(segment_ids)  # each row's rank within its slide
    position[order] = torch.arange(len(order), device=values.device) - starts.repeat_interleave(lengths)
    padded = values.new_full((num_segments, int(lengths.max()), values.shape[1]), float("-inf"))
    padded[segment_ids, position] = values  # (S, longest slide, C)
    # k rounded in the default float dtype, as a single fraction always was (float64 would move k by one for some
    # sizes, and MPS has none).
    k = torch.stack([(q * lengths).round() for q in fractions], dim=-1).long().clamp(min=1)  # (S, F)
    largest = padded.topk(int(k.max()), dim=1).values  # (S, k_max, C), descending; -inf past a slide's sites
    # Running sums in float32 whatever the autocast dtype (a bf16 / fp16 sum of thousands of sites drifts or
    # overflows), read at k - 1: always within the slide, so the padding is never read.
    running = largest.float().cumsum(dim=1)  # (S, k_max, C)
    sums = running.gather(1, (k - 1)[..., None].expand(-1, -1, running.shape[2]))  # (S, F, C)
    return (sums / k[..., None]).to(values.dtype)


def check_top_site_fractions(config: GigaSSLConfig, fractions: Sequence[float]) -> None:
    """Refuse fractions that a model cannot pool at: a model that is not top-pooled, or values outside (0, 1]."""
    if config.slide_pooling != "top":
        raise ValueError(
            f"top_site_fractions needs a model with slide_pooling='top', this one pools by {config.slide_pooling!r}"
        )
    if not fractions or not all(0 < q <= 1 for q in fractions):
        raise ValueError(
            f"top_site_fractions must be a non-empty list of values in (0, 1], got {list(fractions)!r}"
        )


def pool_slides(
    values: torch.Tensor,
    segment_ids: torch.Tensor,
    num_segments: int,
    config: GigaSSLConfig,
    top_site_fractions: Sequence[float] | None,
) -> torch.Tensor:
    """The model's slide pooling of `(N, C)` site rows: `(num_segments, C)`, or with ``top_site_fractions`` (top
    pooling only) `(num_segments, len(top_site_fractions), C)`, one slide embedding per fraction."""
    if top_site_fractions is None:
        return pool_sites(values, segment_ids, num_segments, config.slide_pooling, config.top_site_fraction)
    return top_site_means(values, segment_ids, num_segments, top_site_fractions)


def nt_xent_loss(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss: view ``i`` of ``first`` is the positive of row ``i`` of ``second``.

    Args:
        first, second: `(batch, dim)` projections of the two views.
    Returns:
        The mean over the `2 * batch` anchors of the cross-entropy against the other `2 * batch - 1` rows.
    """
    batch = first.shape[0]
    z = F.normalize(torch.cat([first, second]).float(), dim=1)  # (2B, dim)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z.device)
    return F.cross_entropy(logits, targets)


def _sparse_map_size(extent: torch.Tensor) -> torch.Tensor:
    """SparseConvNet's spatial size correction: ``S >= 5``, odd, and ``S // 2`` odd (so ``S = 3 mod 4``, S >= 7)."""
    size = extent.clamp(min=5)
    size = size + (size % 2 == 0).long()
    return size + 2 * ((size // 2) % 2 == 0).long()


class SparseBasicBlock(nn.Module):
    """ResNet BasicBlock on a :class:`SparseGrid`; with ``downsample`` it halves the map (stride 2).

    The downsampling shortcut is SparseConvNet's: 3x3/2 average pooling then a 1x1 submanifold conv (torchvision's
    1x1 stride-2 conv weight loads into it unchanged). Parameter names follow torchvision's ``BasicBlock``.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, eps: float, momentum: float):
        super().__init__()
        self.conv1 = (
            StridedConv2d(in_channels, out_channels)
            if downsample
            else SubmanifoldConv2d(in_channels, out_channels, kernel_size=3)
        )
        self.bn1 = nn.BatchNorm1d(out_channels, eps=eps, momentum=momentum)
        self.conv2 = SubmanifoldConv2d(out_channels, out_channels, kernel_size=3)
        self.bn2 = nn.BatchNorm1d(out_channels, eps=eps, momentum=momentum)
        self.downsample = (
            nn.ModuleList(
                [
                    SubmanifoldConv2d(in_channels, out_channels, kernel_size=1),
                    nn.BatchNorm1d(out_channels, eps=eps, momentum=momentum),
                ]
            )
            if downsample
            else None
        )

    def forward(self, grid: SparseGrid) -> SparseGrid:
        out = sparse_relu(sparse_batch_norm(self.bn1, self.conv1(grid)))
        out = sparse_batch_norm(self.bn2, self.conv2(out))
        if self.downsample is None:
            shortcut = grid.features
        else:
            conv, norm = self.downsample
            shortcut = sparse_batch_norm(norm, conv(average_pool_3x3_stride2(grid))).features
        return out.with_features(torch.relu(out.features + shortcut))


class SparseConvMILEncoder(nn.Module):
    """Tiles placed on their slide's grid, ResNet18 ``layer4`` as a sparse CNN, pooled over the output
    sites."""

    def __init__(self, config: GigaSSLConfig):
        super().__init__()
        self.config = config
        eps, momentum = config.batch_norm_eps, config.batch_norm_momentum
        self.layer4 = nn.Sequential(  # SparseGrid in, SparseGrid out
            SparseBasicBlock(config.feature_dim, config.hidden_dim, True, eps, momentum),
            SparseBasicBlock(config.hidden_dim, config.hidden_dim, False, eps, momentum),
        )

    @staticmethod
    def tile_cells(
        tile_coords: torch.Tensor, tile_mask: torch.Tensor, cell_size: torch.Tensor
    ) -> torch.Tensor:
        """`(B, N, 2)` int64 grid cell of every tile, each slide anchored at its minimum (masked tiles at 0)."""
        # float32 as in the original, and the slide's minimum is removed *before* truncation, so shifting a
        # slide by whole cells leaves its grid unchanged.
        scaled = tile_coords.float() / cell_size.float()[:, None, None]  # (B, N, 2)
        lowest = scaled.masked_fill(~tile_mask[..., None], float("inf")).amin(
            dim=1, keepdim=True
        )  # (B, 1, 2)
        return (scaled - lowest).masked_fill(~tile_mask[..., None], 0).trunc().long()  # (B, N, 2)

    def build_grid(
        self,
        tile_features: torch.Tensor,
        tile_coords: torch.Tensor,
        tile_mask: torch.Tensor,
        cell_size: torch.Tensor,
    ) -> SparseGrid:
        """Place the unmasked tiles on per-slide integer grids (SparseConvNet's InputLayer, mode 4).

        Args:
            tile_features: `(B, N, D)`; tile_coords: `(B, N, 2)` level-0 px; tile_mask: `(B, N)` bool;
            cell_size: `(B,)` level-0 px per grid cell.
        """
        grid_xy = self.tile_cells(tile_coords, tile_mask, cell_size)  # (B, N, 2)
        extent = grid_xy.amax(dim=1) + 1  # (B, 2): masked tiles sit at 0 and never raise it
        if self.config.grid_size_mode == "batch":
            extent = extent.amax(dim=0, keepdim=True).expand_as(extent)
        batch_index, tile_index = tile_mask.nonzero(as_tuple=True)
        return input_layer(
            batch_index,
            grid_xy[batch_index, tile_index],
            tile_features[batch_index, tile_index],
            _sparse_map_size(extent),
        )

    def forward(
        self,
        tile_features,
        tile_coords,
        tile_mask,
        cell_size,
        output_tile_embeddings=False,
        top_site_fractions=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, hidden_dim)` (or `(B, F, hidden_dim)`) slide embeddings and, on request, `(B, N, hidden_dim)` tile
        embeddings."""
        input_grid = self.build_grid(tile_features, tile_coords, tile_mask, cell_size)
        grid = self.layer4(input_grid)
        slide_embedding = pool_slides(
            grid.features, grid.batch, grid.batch_size, self.config, top_site_fractions
        )
        if not output_tile_embeddings:
            return slide_embedding, None
        batch_index, tile_index = tile_mask.nonzero(as_tuple=True)
        cells = self.tile_cells(tile_coords, tile_mask, cell_size)[batch_index, tile_index]  # (T, 2)
        sites = downsampled_site(cells, input_grid.spatial_size[batch_index])  # (T, 2) of each unmasked tile
        tile_embeddings = grid.features.new_zeros(*tile_mask.shape, grid.features.shape[1])  # (B, N, hidden)
        tile_embeddings[batch_index, tile_index] = grid.features[grid.rows_of(batch_index, sites)]
        return slide_embedding, tile_embeddings


class LinearBatchNorm(nn.Module):
    """``BatchNorm(Dropout(ReLU?(Linear(x))))`` on each tile (the successor's ``LinearBatchNorm``)."""

    def __init__(self, in_dim: int, out_dim: int, relu: bool, dropout: float, eps: float, momentum: float):
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(in_dim, out_dim), nn.ReLU() if relu else nn.Identity(), nn.Dropout(dropout)
        )
        self.norm = nn.BatchNorm1d(out_dim, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(x))


class ResidualMLPBlock(nn.Module):
    """``relu(LBN(relu LBN(x)) + shortcut(x))``; the shortcut is a LinearBatchNorm when the width changes."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float, eps: float, momentum: float):
        super().__init__()
        self.residual_lin = (
            nn.Identity()
            if in_dim == out_dim
            else LinearBatchNorm(in_dim, out_dim, False, dropout, eps, momentum)
        )
        self.block = nn.Sequential(
            LinearBatchNorm(in_dim, out_dim, True, dropout, eps, momentum),
            LinearBatchNorm(out_dim, out_dim, False, dropout, eps, momentum),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.block(x) + self.residual_lin(x))


class MLPEncoder(nn.Module):
    """The light variant (the successor's ResidualMLP): residual MLP blocks on each tile, pooled over
    the tiles.

    Parameter names follow trislaz/Democratizing_WSI's ``ResidualMLP.tile_encoder`` so its checkpoints convert.
    """

    def __init__(self, config: GigaSSLConfig):
        super().__init__()
        args = (config.mlp_dropout, config.batch_norm_eps, config.batch_norm_momentum)
        dims = [config.feature_dim] + [config.hidden_dim] * config.mlp_num_blocks
        self.config = config
        self.tile_encoder = nn.Sequential(
            *(ResidualMLPBlock(dims[i], dims[i + 1], *args) for i in range(len(dims) - 1))
        )

    def forward(
        self,
        tile_features,
        tile_coords,
        tile_mask,
        cell_size,
        output_tile_embeddings=False,
        top_site_fractions=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, hidden_dim)` (or `(B, F, hidden_dim)`) slide embeddings and, on request, `(B, N, hidden_dim)` tile
        embeddings."""
        batch_index, tile_index = tile_mask.nonzero(as_tuple=True)
        tiles = self.tile_encoder(tile_features[batch_index, tile_index])  # (T, hidden_dim)
        slide_embedding = pool_slides(
            tiles, batch_index, tile_features.shape[0], self.config, top_site_fractions
        )
        if not output_tile_embeddings:
            return slide_embedding, None
        tile_embeddings = tiles.new_zeros(*tile_mask.shape, tiles.shape[1])  # (B, N, hidden_dim)
        tile_embeddings[batch_index, tile_index] = tiles
        return slide_embedding, tile_embeddings


class GigaSSLPreTrainedModel(PreTrainedModel):
    config_class = GigaSSLConfig
    base_model_prefix = "gigassl"
    main_input_name = "tile_features"

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, (SubmanifoldConv2d, StridedConv2d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        # The weights are written through a private temporary file (mode 0600): give them the mode the
        # user's umask gives every other file of the folder, so that a shared model folder is readable.
        umask = os.umask(0)
        os.umask(umask)
        for weights in Path(save_directory).glob("*.safetensors"):
            weights.chmod(0o666 & ~umask)


class GigaSSLModel(GigaSSLPreTrainedModel):
    """Giga-SSL slide encoder: a bag of tile features with their positions -> one slide embedding."""

    # A pretraining checkpoint also holds the SimCLR head, which the encoder does not use.
    _keys_to_ignore_on_load_unexpected = [r"^projection_head\."]

    def __init__(self, config: GigaSSLConfig):
        super().__init__(config)
        self.encoder = (
            SparseConvMILEncoder(config) if config.encoder_type == "sparse_conv" else MLPEncoder(config)
        )
        self.post_init()

    def load_layer4_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Initialise the sparse ``layer4`` from a torchvision / timm ResNet18 ``layer4`` state_dict.

        Keys as in ``resnet18().layer4.state_dict()`` (``0.conv1.weight``, ``0.downsample.0.weight``, ...), or a
        whole ResNet state_dict whose ``layer4.`` entries are taken.
        """
        if self.config.encoder_type != "sparse_conv":
            raise ValueError("load_layer4_weights needs encoder_type='sparse_conv'")
        if any(key.startswith("layer4.") for key in state_dict):
            state_dict = {
                key[len("layer4.") :]: value for key, value in state_dict.items() if key.startswith("layer4.")
            }
        self.encoder.layer4.load_state_dict(state_dict, strict=True)

    def _validate(self, tile_features, tile_coords, tile_mask, patch_size_level0):
        if tile_features.dim() != 3:
            raise ValueError(
                f"tile_features must be (batch, n_tiles, feature_dim), got shape {tuple(tile_features.shape)}"
            )
        batch, n_tiles, dim = tile_features.shape
        if dim != self.config.feature_dim:
            raise ValueError(
                f"tile_features have {dim} features per tile but config.feature_dim is {self.config.feature_dim}"
            )
        if tile_coords.shape != (batch, n_tiles, 2):
            raise ValueError(
                f"tile_coords must be (batch, n_tiles, 2) = {(batch, n_tiles, 2)} level-0 (x, y) pixels, "
                f"got shape {tuple(tile_coords.shape)}"
            )
        if tile_mask is None:
            tile_mask = torch.ones(batch, n_tiles, dtype=torch.bool, device=tile_features.device)
        elif tile_mask.shape != (batch, n_tiles):
            raise ValueError(
                f"tile_mask must be (batch, n_tiles) = {(batch, n_tiles)}, got {tuple(tile_mask.shape)}"
            )
        tile_mask = tile_mask.bool()
        empty = (~tile_mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"every tile of slide(s) at batch index {empty} is masked: a slide needs at least one tile"
            )
        if self.config.fixed_grid_cell_size or patch_size_level0 is None:
            cell_size = torch.full((batch,), self.config.grid_cell_size, device=tile_features.device)
        else:
            cell_size = (
                torch.as_tensor(patch_size_level0, device=tile_features.device).reshape(-1).expand(batch)
            )
            if (cell_size <= 0).any():
                raise ValueError(f"patch_size_level0 must be positive, got {patch_size_level0!r}")
        return tile_mask, cell_size

    def forward(
        self,
        tile_features: torch.Tensor,
        tile_coords: torch.Tensor,
        tile_mask: torch.Tensor | None = None,
        patch_size_level0: int | torch.Tensor | None = None,
        output_tile_embeddings: bool = False,
        top_site_fractions: Sequence[float] | None = None,
        return_dict: bool | None = None,
    ) -> GigaSSLModelOutput | tuple:
        r"""
        Args:
            tile_features (`torch.Tensor` of shape `(batch_size, n_tiles, feature_dim)`):
                Tile features from the frozen tile encoder.
            tile_coords (`torch.Tensor` of shape `(batch_size, n_tiles, 2)`):
                Level-0 pixel (x, y) of each tile's top-left corner (integer or, after coordinate
                augmentation, float).
            tile_mask (`torch.BoolTensor` of shape `(batch_size, n_tiles)`, *optional*):
                `False` marks padding; padded tiles have no effect at all.
            patch_size_level0 (`int` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Tile side in level-0 pixels: the grid cell size, so that adjacent tiles are one cell apart.
                Defaults to `config.grid_cell_size`; ignored when `config.fixed_grid_cell_size` is set.
            output_tile_embeddings (`bool`, *optional*, defaults to `False`):
                Also return `tile_embeddings` `(batch_size, n_tiles, hidden_dim)`: each tile's output site (see
                `GigaSSLModelOutput`), for tile-level maps such as heatmaps.
            top_site_fractions (`Sequence[float]`, *optional*):
                For a `slide_pooling="top"` model: pool the sites at each of these fractions (in (0, 1]) instead of
                `config.top_site_fraction`, all from one pass; `slide_embedding` is then
                `(batch_size, len(top_site_fractions), hidden_dim)`, one embedding per fraction.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        tile_mask, cell_size = self._validate(tile_features, tile_coords, tile_mask, patch_size_level0)
        if top_site_fractions is not None:
            check_top_site_fractions(self.config, top_site_fractions)
        tile_features = tile_features.to(self.dtype)
        slide_embedding, tile_embeddings = self.encoder(
            tile_features, tile_coords, tile_mask, cell_size, output_tile_embeddings, top_site_fractions
        )  # (batch, hidden_dim) or (batch, F, hidden_dim), (batch, n_tiles, hidden_dim) or None
        if not return_dict:
            return (slide_embedding,) if tile_embeddings is None else (slide_embedding, tile_embeddings)
        return GigaSSLModelOutput(slide_embedding=slide_embedding, tile_embeddings=tile_embeddings)


class GigaSSLProjectionHead(nn.Sequential):
    """SimCLR projection: (Linear, ReLU, BatchNorm1d) for every size but the last, then a Linear."""

    def __init__(self, config: GigaSSLConfig):
        layers: list[nn.Module] = []
        in_dim = config.hidden_dim
        for out_dim in config.projection_dims[:-1]:
            layers += [
                nn.Linear(in_dim, out_dim),
                nn.ReLU(),
                nn.BatchNorm1d(out_dim, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum),
            ]
            in_dim = out_dim
        layers.append(nn.Linear(in_dim, config.projection_dims[-1]))
        super().__init__(*layers)


class GigaSSLForContrastivePretraining(GigaSSLPreTrainedModel):
    """Slide encoder + SimCLR projection head; computes the NT-Xent loss when given two views of each slide."""

    def __init__(self, config: GigaSSLConfig):
        super().__init__(config)
        self.gigassl = GigaSSLModel(config)
        self.projection_head = GigaSSLProjectionHead(config)
        self.post_init()

    @staticmethod
    def _check_views(
        tile_coords: torch.Tensor, shape: tuple[int, int, int], return_loss: bool | None
    ) -> bool:
        """Whether to compute the loss (by default: with two views); raises on shapes that do not fit."""
        batch, n_views, n_tiles = shape
        if return_loss is None:
            return_loss = n_views == 2
        if return_loss and n_views != 2:
            raise ValueError(f"the contrastive loss needs exactly 2 views per slide, got {n_views}")
        if tile_coords.shape[:3] != shape:
            raise ValueError(
                f"tile_coords must be (batch, n_views, n_tiles, 2) = {(batch, n_views, n_tiles, 2)}, "
                f"got {tuple(tile_coords.shape)}"
            )
        return return_loss

    def forward(
        self,
        tile_features: torch.Tensor,
        tile_coords: torch.Tensor,
        tile_mask: torch.Tensor | None = None,
        patch_size_level0: int | torch.Tensor | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
    ) -> GigaSSLContrastiveOutput | tuple:
        r"""
        Args:
            tile_features (`torch.Tensor` of shape `(batch_size, n_views, n_tiles, feature_dim)` or `(batch_size, n_tiles, feature_dim)`):
                Tile features of each view. With `n_views == 2` the NT-Xent loss between the two views is returned.
            tile_coords (`torch.Tensor` of shape `(batch_size, n_views, n_tiles, 2)` or `(batch_size, n_tiles, 2)`):
                Level-0 pixel (x, y) of each tile (after the view's coordinate augmentation).
            tile_mask (`torch.BoolTensor` with the leading shape of `tile_coords`, *optional*):
                `False` marks padding.
            patch_size_level0 (`int` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Tile side in level-0 pixels, per slide (shared by its views).
            return_loss (`bool`, *optional*):
                Defaults to `True` when two views are given.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        has_views = tile_features.dim() == 4
        if not has_views:
            tile_features, tile_coords = tile_features[:, None], tile_coords[:, None]
            tile_mask = None if tile_mask is None else tile_mask[:, None]
        batch, n_views, n_tiles = tile_features.shape[:3]
        return_loss = self._check_views(tile_coords, (batch, n_views, n_tiles), return_loss)
        if patch_size_level0 is not None:
            patch_size_level0 = torch.as_tensor(patch_size_level0, device=tile_features.device).reshape(-1)
            patch_size_level0 = patch_size_level0.expand(batch).repeat_interleave(n_views)

        # All views go through the encoder as one batch (one sparse map build, batch-wide BatchNorm).
        embeddings = self.gigassl(
            tile_features=tile_features.flatten(0, 1),  # (batch * n_views, n_tiles, feature_dim)
            tile_coords=tile_coords.flatten(0, 1),
            tile_mask=None if tile_mask is None else tile_mask.flatten(0, 1),
            patch_size_level0=patch_size_level0,
        ).slide_embedding  # (batch * n_views, hidden_dim)
        projections = self.projection_head(embeddings)  # (batch * n_views, projection_dims[-1])
        embeddings = embeddings.unflatten(0, (batch, n_views))
        projections = projections.unflatten(0, (batch, n_views))
        loss = (
            nt_xent_loss(projections[:, 0], projections[:, 1], self.config.temperature)
            if return_loss
            else None
        )
        if not has_views:
            embeddings, projections = embeddings[:, 0], projections[:, 0]
        if not return_dict:
            return tuple(value for value in (loss, embeddings, projections) if value is not None)
        return GigaSSLContrastiveOutput(loss=loss, slide_embedding=embeddings, projection=projections)


# Saving writes `auto_map` and copies this code, so a saved encoder loads with trust_remote_code=True anywhere.
GigaSSLModel.register_for_auto_class("AutoModel")
