"""Occlusion drops by local recomputation: the cost per occluded block does not grow with the slide.

Removing the tiles of a cell box ``[low, high]`` changes ``layer4``'s first (stride-2) outputs only at the sites
``q`` whose window ``[2q, 2q + 2]`` meets the box, and each of the three 3x3 submanifold convolutions after it
spreads the change by one site. Everything else keeps its whole-slide value, so an occluded copy's slide
embedding is ``(S + local_new - local_old) / (count + new_sites - old_sites)``, with ``S`` the whole-slide sum
over output sites and the local terms computed on a small window around the box. That window is computed
densely (``conv2d`` on a batch of copies): a submanifold convolution equals a dense one on zero-filled
inactive sites, read at the active sites only; BatchNorm in eval mode is per site.

This holds while the slide keeps its grid: the encoder anchors the grid at the slide's lowest coordinates and
sizes the map from its highest cell, so a block that removes every tile at the minimum (or at the maximum cell)
of an axis can shift every site; those blocks get a whole-slide pass, as does every block of a model this
does not cover (MLP encoder, batch-wide grid size, any pooling but the mean, training mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from giga_ssl_hf.models.gigassl.sparse_ops import (
    average_pool_3x3_stride2,
    segment_reduce,
    sparse_batch_norm,
    sparse_relu,
)

# Output sites of the stride-2 conv whose value changes reach, through the three 3x3 convolutions after it.
_SPREAD = 3
# Memory for the dense windows of one batch of occluded copies.
_BATCH_BYTES = 256 * 2**20


def supports_local_occlusion(model) -> bool:
    """Whether :func:`local_slide_embeddings` reproduces this model's whole-slide passes."""
    config = model.config
    return (
        config.encoder_type == "sparse_conv"
        and config.grid_size_mode == "per_slide"
        and config.slide_pooling == "mean"  # the update of the sum over output sites holds for the mean only
        and not model.training
    )


def grid_changing_blocks(
    model, coords: np.ndarray, cells: np.ndarray, low: np.ndarray, high: np.ndarray, cell_size: int
) -> np.ndarray:
    """`(k,)` bool: whether removing the cells ``[low[k], high[k]]`` moves the slide's grid anchor or map size.

    The anchor moves when every tile at an axis's lowest coordinate goes; the map size can change when every
    tile on an axis's highest cell goes.
    """
    scaled = (torch.from_numpy(np.asarray(coords, dtype=np.int64)).float() / float(cell_size)).numpy()
    groups = [scaled[:, axis] == scaled[:, axis].min() for axis in (0, 1)]
    groups += [cells[:, axis] == cells[:, axis].max() for axis in (0, 1)]
    changing = np.zeros(len(low), dtype=bool)
    for members in groups:
        group_low, group_high = cells[members].min(axis=0), cells[members].max(axis=0)
        changing |= ((low <= group_low) & (group_high <= high)).all(axis=1)
    return changing


def _padded_index(xy: np.ndarray, size: np.ndarray, pad: int) -> torch.Tensor:
    """`(size + 2 pad)` int64 map from a site (shifted by ``pad``) to its row; -1 where no site is."""
    index = np.full(tuple(size + 2 * pad), -1, dtype=np.int64)
    index[xy[:, 0] + pad, xy[:, 1] + pad] = np.arange(len(xy))
    return torch.from_numpy(index)


def _batch_norm(norm, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


def _crop(x: torch.Tensor, margin: int) -> torch.Tensor:
    return x[..., margin : x.shape[-2] - margin, margin : x.shape[-1] - margin]


@dataclass
class WholeSlide:
    """The whole-slide pass's site features at every stage that a local recomputation reads."""

    input_features: torch.Tensor  # (sites, D) the input grid, plus a zero row for absent sites
    input_index: torch.Tensor  # padded map cell -> row of input_features
    output_index: torch.Tensor  # padded map output site -> row of the stage features below
    input_present: torch.Tensor  # padded map: 1 at the cells that hold tiles
    output_present: torch.Tensor  # padded map: 1 at the output sites
    output_in_map: torch.Tensor  # padded map: 1 where an output site may exist (within the map)
    stages: dict[str, torch.Tensor]  # (sites + 1, hidden) each: h1, shortcut, out1, g1, out2; zero last row
    pad: int
    output_sum: torch.Tensor  # (hidden,) float64
    output_count: int
    slide_embedding: torch.Tensor  # (hidden,)

    @classmethod
    @torch.no_grad()
    def run(cls, model, features: np.ndarray, coords: np.ndarray, cell_size: int, pad: int) -> WholeSlide:
        encoder = model.encoder
        device = next(model.parameters()).device
        features_t = torch.from_numpy(np.array(features)).to(device, model.dtype)[None]
        coords_t = torch.from_numpy(np.array(coords, dtype=np.int64)).to(device)[None]
        mask = torch.ones(coords_t.shape[:2], dtype=torch.bool, device=device)
        grid = encoder.build_grid(features_t, coords_t, mask, torch.tensor([cell_size], device=device))
        first, second = encoder.layer4
        h1 = sparse_relu(sparse_batch_norm(first.bn1, first.conv1(grid)))
        conv, norm = first.downsample
        shortcut = sparse_batch_norm(norm, conv(average_pool_3x3_stride2(grid)))
        out1 = torch.relu(sparse_batch_norm(first.bn2, first.conv2(h1)).features + shortcut.features)
        g1 = sparse_relu(sparse_batch_norm(second.bn1, second.conv1(h1.with_features(out1))))
        out2 = torch.relu(sparse_batch_norm(second.bn2, second.conv2(g1)).features + out1)
        spatial = grid.spatial_size[0].cpu().numpy()
        output_size = (spatial - 3) // 2 + 1
        in_map = torch.zeros(tuple(output_size + 2 * pad), dtype=model.dtype)
        in_map[pad : pad + output_size[0], pad : pad + output_size[1]] = 1

        def with_zero_row(values: torch.Tensor) -> torch.Tensor:
            return torch.cat([values, values.new_zeros(1, values.shape[1])])

        input_index = _padded_index(grid.xy.cpu().numpy(), spatial, pad).to(device)
        output_index = _padded_index(h1.xy.cpu().numpy(), output_size, pad).to(device)
        return cls(
            input_features=with_zero_row(grid.features),
            input_index=input_index,
            output_index=output_index,
            input_present=input_index.ge(0).to(model.dtype),
            output_present=output_index.ge(0).to(model.dtype),
            output_in_map=in_map.to(device),
            stages={
                name: with_zero_row(values)
                for name, values in dict(
                    h1=h1.features, shortcut=shortcut.features, out1=out1, g1=g1.features, out2=out2
                ).items()
            },
            pad=pad,
            output_sum=out2.double().sum(dim=0),
            output_count=len(out2),
            slide_embedding=segment_reduce(out2, h1.batch, 1)[0],
        )

    def _window_cells(self, origin: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        span = torch.arange(width, device=origin.device)
        x = (origin[:, 0, None, None] + self.pad + span[None, :, None]).expand(-1, width, width)
        y = (origin[:, 1, None, None] + self.pad + span[None, None, :]).expand(-1, width, width)
        return x, y

    def sites(
        self, values: torch.Tensor, index: torch.Tensor, origin: torch.Tensor, width: int
    ) -> torch.Tensor:
        """`(B, C, width, width)` site features in the windows starting at ``origin`` `(B, 2)` (0 where no site)."""
        return values[index[self._window_cells(origin, width)]].permute(0, 3, 1, 2)

    def stage(self, name: str, origin: torch.Tensor, width: int, inset: int = 0) -> torch.Tensor:
        """:meth:`sites` of an output stage, in the windows shrunk by ``inset`` sites on every side."""
        return self.sites(self.stages[name], self.output_index, origin + inset, width - 2 * inset)

    def map(self, values: torch.Tensor, origin: torch.Tensor, width: int) -> torch.Tensor:
        """`(B, 1, width, width)` of a padded map in the windows starting at ``origin``."""
        return values[self._window_cells(origin, width)][:, None]


@torch.no_grad()
def local_slide_embeddings(model, whole: WholeSlide, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """`(B, hidden)` slide embeddings with the cells ``[low[b], high[b]]`` `(B, 2)` removed (same-size boxes)."""
    first, second = model.encoder.layer4
    changed = changed_sites(int(high[0, 0] - low[0, 0]))
    q0 = torch.div(low - 1, 2, rounding_mode="floor")  # first of them
    margin = _SPREAD + 1
    out_origin, out_width = q0 - margin, changed + 2 * margin
    in_origin, in_width = 2 * q0, 2 * changed + 1
    # The occluded input: the whole-slide grid with the box's cells emptied.
    inputs = whole.sites(whole.input_features, whole.input_index, in_origin, in_width)
    span = torch.arange(in_width, device=low.device)
    cell_x, cell_y = in_origin[:, 0, None] + span[None], in_origin[:, 1, None] + span[None]  # (B, in_width)
    x_in_box = (cell_x >= low[:, :1]) & (cell_x <= high[:, :1])
    y_in_box = (cell_y >= low[:, 1:]) & (cell_y <= high[:, 1:])
    kept = ~(x_in_box[:, :, None] & y_in_box[:, None, :])  # (B, in_width, in_width)
    active = whole.map(whole.input_present, in_origin, in_width) * kept[:, None]
    inputs = inputs * active
    # Block 1 at the changed sites: strided conv and the pooled shortcut.
    centre = slice(margin, margin + changed)
    new_sites = (F.max_pool2d(active, 3, 2) > 0).to(inputs.dtype)
    new_sites = new_sites * whole.map(whole.output_in_map, out_origin, out_width)[..., centre, centre]
    sites = whole.map(whole.output_present, out_origin, out_width)
    base_sites = sites.clone()
    sites[..., centre, centre] = new_sites
    # Each 3x3 convolution reads one site further than it writes, so each stage is read only where needed.
    h1 = whole.stage("h1", out_origin, out_width, inset=2)
    h1[..., 2:-2, 2:-2] = torch.relu(_batch_norm(first.bn1, _conv(inputs, first.conv1, stride=2))) * new_sites
    conv, norm = first.downsample
    shortcut = whole.stage("shortcut", out_origin, out_width, inset=3)
    shortcut[..., 1:-1, 1:-1] = _batch_norm(norm, _conv(F.avg_pool2d(inputs, 3, 2), conv))
    out1 = whole.stage("out1", out_origin, out_width, inset=1)
    conv2 = _batch_norm(first.bn2, _conv(h1, first.conv2))
    out1[..., 2:-2, 2:-2] = torch.relu(conv2 + shortcut) * _crop(sites, 3)
    g1 = whole.stage("g1", out_origin, out_width)
    g1[..., 2:-2, 2:-2] = torch.relu(_batch_norm(second.bn1, _conv(out1, second.conv1))) * _crop(sites, 2)
    out2 = torch.relu(_batch_norm(second.bn2, _conv(g1, second.conv2)) + out1) * _crop(sites, 1)
    old = whole.stage("out2", out_origin, out_width, inset=1)
    change = (out2.sum(dim=(2, 3)) - old.sum(dim=(2, 3))).double()
    total = whole.output_sum + change
    count = whole.output_count + (_crop(sites, 1) - _crop(base_sites, 1)).sum(dim=(1, 2, 3)).double()
    return (total / count[:, None]).to(inputs.dtype)


def _conv(x: torch.Tensor, conv, stride: int = 1) -> torch.Tensor:
    """A sparse conv's dense equivalent without padding: the output shrinks by one site per side."""
    return F.conv2d(x, conv.weight, stride=stride)


def changed_sites(box_span: int) -> int:
    """Stride-2 output sites per axis that removing cells ``[low, low + box_span]`` can change (any ``low``)."""
    return box_span // 2 + 2


def copies_per_batch(model, box_span: int) -> int:
    """How many occluded copies of a box of ``box_span + 1`` cells fit :data:`_BATCH_BYTES` together."""
    changed = changed_sites(box_span)
    config = model.config
    values = (
        config.feature_dim * (2 * changed + 1) ** 2 + 8 * config.hidden_dim * (changed + 2 * _SPREAD + 2) ** 2
    )
    return max(1, _BATCH_BYTES // (4 * values))
