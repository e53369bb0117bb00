"""Pure-PyTorch sparse 2-D convolutions on tile grids: the operations of SparseConvMIL's ResNet ``layer4``.

A :class:`SparseGrid` holds the active sites of a batch of slides: ``(batch, x, y)`` integer sites kept
sorted and unique by a packed int64 key, with a feature row per site. Every operation is vectorised over
the whole batch: neighbour maps come from ``torch.searchsorted`` on the sorted keys (built once per grid,
with a Python loop over the 9 kernel offsets), and a convolution computes only the neighbour pairs that
exist (an isolated tile costs one row, never nine): the centre offset as one matmul, the other offsets
together as one gather -> batched matmul -> scatter-add over a padded :class:`PairTable`.

Within one kernel offset every output site receives at most one input row and every input row feeds at
most one output site, so the scatter-adds are deterministic on CPU and CUDA, forward and backward alike
(:func:`_scatter_rows` says how).

Semantics follow facebookresearch/SparseConvNet as used by the original Giga-SSL (2-D, no bias):

- input layer (mode 4): tiles landing on the same site are averaged;
- submanifold convolution: a dense ``conv2d(padding=k // 2)`` evaluated only at the active sites;
- strided convolution (3x3, stride 2, no padding): output site ``o`` exists iff an active input ``x``
  has ``2o <= x <= 2o + 2`` on both axes and ``o <= (S - 3) // 2`` for the slide's spatial size ``S``;
- average pooling (3x3, stride 2): the same sites, the window's sum divided by 9 (not by the count).

Weights are kept in the dense torch layout ``(C_out, C_in, k, k)`` with the first kernel axis along
``x``, so torchvision / timm ResNet weights load unchanged; SparseConvNet's ``(k*k, 1, C_in, C_out)``
layout is ``W_sparse[a * k + b, 0] == W_dense[:, :, a, b].T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


def segment_reduce(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int, reduce: str = "mean"
) -> torch.Tensor:
    """`(num_segments, C)`: the ``reduce`` (``"mean"`` or ``"max"``) of the `(N, C)` ``values`` rows per segment
    (``segment_ids``: `(N,)` int64 in ``[0, num_segments)``, every segment non-empty); deterministic on CPU and
    CUDA."""
    order = torch.argsort(segment_ids, stable=True)
    lengths = torch.bincount(segment_ids, minlength=num_segments)
    return torch.segment_reduce(values[order], reduce, lengths=lengths)


def _key_strides(spatial_size: torch.Tensor) -> tuple[int, int]:
    # A margin of one cell on each side keeps the key of an out-of-map neighbour (x - 1 = -1 or
    # x + 1 = S) from aliasing a site of the next row or slide.
    height, width = (int(v) + 2 for v in spatial_size.max(dim=0).values.tolist())
    return height, width


def _pack_keys(batch: torch.Tensor, xy: torch.Tensor, spatial_size: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering sites by ``(batch, x, y)``."""
    height, width = _key_strides(spatial_size)
    return (batch * height + xy[:, 0] + 1) * width + xy[:, 1] + 1


def _unique_sites(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted unique keys, the unique index of every key, and the first row holding each unique key."""
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((unique_keys.numel(),), keys.numel(), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(keys.numel(), device=keys.device), "amin")
    return unique_keys, inverse, first


@dataclass
class SparseGrid:
    """Active sites of a batch of sparse 2-D maps, sorted by ``(batch, x, y)``, one feature row per site.

    Attributes:
        batch: `(N,)` int64, the slide of each site.
        xy: `(N, 2)` int64, the site's grid position.
        features: `(N, C)`.
        spatial_size: `(B, 2)` int64, the spatial size of each slide's map (sites lie in ``[0, S)``).
    """

    batch: torch.Tensor
    xy: torch.Tensor
    features: torch.Tensor
    spatial_size: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.spatial_size.shape[0]

    def with_features(self, features: torch.Tensor) -> SparseGrid:
        """The same sites (and cached neighbour maps) carrying new features."""
        return SparseGrid(self.batch, self.xy, features, self.spatial_size, self._cache)

    def keys(self) -> torch.Tensor:
        """`(N,)` sorted int64 keys packing ``(batch, x, y)``."""
        if "keys" not in self._cache:
            self._cache["keys"] = _pack_keys(self.batch, self.xy, self.spatial_size)
        return self._cache["keys"]

    def submanifold_pairs(self, kernel_size: int) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per kernel offset ``a * k + b``: ``(input rows, output rows)`` of the existing neighbour pairs.

        The centre offset is ``None``: it pairs every site with itself, so it needs no gather.
        """
        cache_key = ("submanifold", kernel_size)
        if cache_key not in self._cache:
            keys = self.keys()
            _, width = _key_strides(self.spatial_size)
            radius = kernel_size // 2
            pairs: list[tuple[torch.Tensor, torch.Tensor] | None] = []
            for a in range(kernel_size):
                for b in range(kernel_size):
                    dx, dy = a - radius, b - radius
                    if dx == 0 and dy == 0:
                        pairs.append(None)
                        continue
                    target = keys + dx * width + dy
                    position = torch.searchsorted(keys, target).clamp_(max=keys.numel() - 1)
                    found = keys[position] == target
                    output_rows = found.nonzero().squeeze(1)
                    pairs.append((position[output_rows], output_rows))
            self._cache[cache_key] = pairs
        return self._cache[cache_key]

    def rows_of(self, batch: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """`(T,)` row of each site ``(batch[t], xy[t])`` of this grid; every site must be active."""
        keys = self.keys()
        target = _pack_keys(batch, xy, self.spatial_size)
        rows = torch.searchsorted(keys, target).clamp_(max=keys.numel() - 1)
        if not torch.equal(keys[rows], target):
            raise ValueError("rows_of: some sites are not active in this grid")
        return rows

    def submanifold_table(self, kernel_size: int) -> PairTable:
        """:meth:`submanifold_pairs` as one padded :class:`PairTable` (cached)."""
        cache_key = ("submanifold_table", kernel_size)
        if cache_key not in self._cache:
            pairs = self.submanifold_pairs(kernel_size)
            self._cache[cache_key] = PairTable.from_pairs(pairs, self.batch.numel(), self.batch.device)
        return self._cache[cache_key]

    def downsample_table(self) -> tuple[SparseGrid, PairTable]:
        """:meth:`downsample` with its pairs as one padded :class:`PairTable` (cached)."""
        if "downsample_table" not in self._cache:
            out_grid, pairs = self.downsample()
            table = PairTable.from_pairs(pairs, out_grid.batch.numel(), self.batch.device)
            self._cache["downsample_table"] = (out_grid, table)
        return self._cache["downsample_table"]

    def downsample(self) -> tuple[SparseGrid, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The output sites of a 3x3 / stride-2 convolution (or pooling) and its per-offset pairs.

        Returns the output grid (features unset: an empty tensor) and, per offset ``a * 3 + b``,
        ``(input rows, output rows)``.
        """
        if "downsample" in self._cache:
            return self._cache["downsample"]
        limit = (self.spatial_size[self.batch] - 3) // 2  # (N, 2) largest output index per slide
        # Input x is covered by outputs (x - 1) // 2 and x // 2 (the same one when x is odd).
        low, high = torch.div(self.xy - 1, 2, rounding_mode="floor"), self.xy // 2
        candidates, sources, offsets = [], [], []
        for use_high_x in (False, True):
            for use_high_y in (False, True):
                ox = high[:, 0] if use_high_x else low[:, 0]
                oy = high[:, 1] if use_high_y else low[:, 1]
                valid = (ox >= 0) & (oy >= 0) & (ox <= limit[:, 0]) & (oy <= limit[:, 1])
                if use_high_x:
                    valid &= high[:, 0] != low[:, 0]
                if use_high_y:
                    valid &= high[:, 1] != low[:, 1]
                rows = valid.nonzero().squeeze(1)
                candidates.append(torch.stack([self.batch[rows], ox[rows], oy[rows]], dim=1))
                sources.append(rows)
                offsets.append((self.xy[rows, 0] - 2 * ox[rows]) * 3 + self.xy[rows, 1] - 2 * oy[rows])
        candidates_t = torch.cat(candidates)
        sources_t, offsets_t = torch.cat(sources), torch.cat(offsets)
        out_spatial = (self.spatial_size - 3) // 2 + 1
        out_keys = _pack_keys(candidates_t[:, 0], candidates_t[:, 1:], out_spatial)
        unique_keys, output_rows, first = _unique_sites(out_keys)
        sites = candidates_t[first]
        out_grid = SparseGrid(sites[:, 0], sites[:, 1:], self.features.new_empty((0,)), out_spatial)
        out_grid._cache["keys"] = unique_keys
        order = torch.argsort(offsets_t, stable=True)
        counts = torch.bincount(offsets_t, minlength=9).tolist()
        pairs = list(zip(sources_t[order].split(counts), output_rows[order].split(counts)))
        self._cache["downsample"] = (out_grid, pairs)
        return out_grid, pairs


def downsampled_site(xy: torch.Tensor, spatial_size: torch.Tensor) -> torch.Tensor:
    """The output site of a 3x3 / stride-2 convolution that input site ``xy`` falls in: ``xy // 2``.

    Windows overlap (input ``x`` is also in output ``x // 2 - 1``'s window when ``x`` is even); ``x // 2`` is the
    window whose stride cell holds ``x``. On the map's last index, where ``x // 2`` is cut off by the map
    size, it is the window ending at ``x``. The returned site is active whenever ``xy`` is.

    Args:
        xy: `(T, 2)` int64 input sites; spatial_size: `(T, 2)` int64 map size of each site's slide.
    Returns:
        `(T, 2)` int64 output sites.
    """
    return torch.minimum(xy // 2, (spatial_size - 3) // 2)


def input_layer(
    batch: torch.Tensor, xy: torch.Tensor, features: torch.Tensor, spatial_size: torch.Tensor
) -> SparseGrid:
    """Build a :class:`SparseGrid` from tiles, averaging tiles that land on the same site.

    Args:
        batch: `(T,)` int64 slide index of each tile.
        xy: `(T, 2)` int64 grid position, within ``[0, spatial_size)`` of its slide.
        features: `(T, C)`.
        spatial_size: `(B, 2)` int64.
    """
    unique_keys, site_of_tile, first = _unique_sites(_pack_keys(batch, xy, spatial_size))
    site_features = segment_reduce(features, site_of_tile, unique_keys.numel())
    grid = SparseGrid(batch[first], xy[first], site_features, spatial_size)
    grid._cache["keys"] = unique_keys
    return grid


def _offset_weights(weight: torch.Tensor) -> torch.Tensor:
    """Dense ``(C_out, C_in, k, k)`` -> per-offset ``(k * k, C_in, C_out)``, offset index ``a * k + b``."""
    out_channels, in_channels = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(-1, in_channels, out_channels)


@dataclass
class PairTable:
    """The neighbour pairs of a convolution's non-centre kernel offsets, padded into one rectangle.

    Attributes:
        offsets: `(K,)` int64, the kernel offsets (``a * k + b``) that have at least one pair.
        inputs: `(K, P)` int64 input rows; padding points at row 0 (its products are masked or discarded).
        outputs: `(K, P)` int64 output rows; padding points at row ``n_out``, one spare row of the output.
        valid: `(K, P, 1)` bool, False at padding.
    """

    offsets: torch.Tensor
    inputs: torch.Tensor
    outputs: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_pairs(cls, pairs: list, n_out: int, device: torch.device) -> PairTable:
        kept = [(k, pair) for k, pair in enumerate(pairs) if pair is not None and pair[0].numel()]
        width = max((pair[0].numel() for _, pair in kept), default=0)
        inputs = torch.zeros(len(kept), width, dtype=torch.long, device=device)
        outputs = torch.full((len(kept), width), n_out, dtype=torch.long, device=device)
        for row, (_, (input_rows, output_rows)) in enumerate(kept):
            inputs[row, : input_rows.numel()] = input_rows
            outputs[row, : output_rows.numel()] = output_rows
        offsets = torch.tensor([k for k, _ in kept], dtype=torch.long, device=device)
        return cls(offsets, inputs, outputs, (outputs < n_out).unsqueeze(-1))


def _scatter_rows(target: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """``target[rows[k, p]] += values[k, p]`` for all (k, p): rows `(K, P)`, values `(K, P, C)`.

    On CPU one ``index_add_`` (sequential, so deterministic). On CUDA one per offset: within an offset the
    rows are distinct, so atomic additions never race and the result is deterministic too.
    """
    if target.device.type == "cpu":
        target.index_add_(0, rows.reshape(-1), values.reshape(-1, values.shape[-1]))
    else:
        for offset_rows, offset_values in zip(rows, values):
            target.index_add_(0, offset_rows, offset_values)


class _PairwiseConv(torch.autograd.Function):
    """``out[o] = sum over pairs (i, o) of offset k: x[i] @ W[k]`` (``W`` = identity when ``weights`` is None).

    ``table`` holds the pairs of every non-centre offset; ``centre`` (submanifold convs) is the offset that
    pairs every site with itself, computed without a gather. All offsets run together: one gather, one
    batched matmul and one scatter-add per direction, instead of one of each per offset. The ops are few
    and large, which matters on a CPU shared with other work: every multi-threaded op waits for all its
    threads, and with a busy core each wait can cost a scheduler time slice, so the step time grows with
    the number of ops far more than with their size.

    A hand-written backward: autograd's own would allocate and sum a zero-filled input gradient per offset; here
    one buffer takes every offset's contribution, and the weight gradients are one batched matmul.
    """

    @staticmethod
    def forward(ctx, features, weights, table: PairTable, n_out, centre):
        # features: (N_in, C_in); weights: (K_all, C_in, C_out) or None
        device_type = features.device.type
        # Under autocast every product runs in the autocast dtype; the output buffer must match it, and the
        # backward (which autocast does not cover) reuses the same dtype.
        autocast = torch.is_autocast_enabled(device_type)
        compute_dtype = torch.get_autocast_dtype(device_type) if autocast else features.dtype
        ctx.dtypes = (features.dtype, None if weights is None else weights.dtype)
        features = features.to(compute_dtype)
        weights = None if weights is None else weights.to(compute_dtype)
        ctx.save_for_backward(features, weights)
        ctx.table, ctx.centre = table, centre
        out_channels = features.shape[1] if weights is None else weights.shape[2]
        with torch.autocast(device_type, enabled=False):
            # One spare row takes the padding of the pair table.
            output = features.new_empty(n_out + 1, out_channels)
            if centre is not None:  # submanifold: every site is its own centre neighbour, no gather needed
                torch.mm(features, weights[centre], out=output[:n_out])
                output[n_out].zero_()
            else:
                output.zero_()
            if table.offsets.numel():
                gathered = features[table.inputs]  # (K, P, C_in)
                if weights is not None:
                    gathered = torch.bmm(gathered, weights[table.offsets])  # (K, P, C_out)
                _scatter_rows(output, table.outputs, gathered)
        return output[:n_out]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        features, weights = ctx.saved_tensors
        table, centre = ctx.table, ctx.centre
        need_features, need_weights = ctx.needs_input_grad[:2]
        grad_output = grad_output.to(features.dtype)
        grad_features = grad_weights = None
        if need_features:
            grad_features = (
                features.new_zeros(features.shape) if centre is None else grad_output @ weights[centre].T
            )
        if need_weights:
            grad_weights = weights.new_zeros(weights.shape)
            if centre is not None:
                grad_weights[centre] = features.T @ grad_output
        if table.offsets.numel():
            # (K, P, C_out), zero at padding (whose output row does not exist in grad_output)
            grad_rows = grad_output[table.outputs.clamp(max=grad_output.shape[0] - 1)] * table.valid
            if need_weights:
                offset_grads = torch.bmm(features[table.inputs].transpose(1, 2), grad_rows)
                grad_weights.index_copy_(0, table.offsets, offset_grads)
            if need_features:
                if weights is not None:
                    grad_rows = torch.bmm(grad_rows, weights[table.offsets].transpose(1, 2))
                _scatter_rows(grad_features, table.inputs, grad_rows)  # padding adds zeros to row 0
        features_dtype, weights_dtype = ctx.dtypes
        if grad_features is not None:
            grad_features = grad_features.to(features_dtype)
        if grad_weights is not None:
            grad_weights = grad_weights.to(weights_dtype)
        return grad_features, grad_weights, None, None, None


class _SparseConvBase(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class SubmanifoldConv2d(_SparseConvBase):
    """Submanifold convolution: output sites = input sites, ``conv2d(padding=k // 2)`` at those sites."""

    def forward(self, grid: SparseGrid) -> SparseGrid:
        weights = _offset_weights(self.weight)  # (k*k, C_in, C_out)
        centre = (self.kernel_size * self.kernel_size) // 2
        table = grid.submanifold_table(self.kernel_size)  # 1x1: the centre alone, an empty table
        output = _PairwiseConv.apply(grid.features, weights, table, grid.batch.numel(), centre)
        return grid.with_features(output)


class StridedConv2d(_SparseConvBase):
    """3x3 convolution with stride 2 and no padding, over the active sites only."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3)

    def forward(self, grid: SparseGrid) -> SparseGrid:
        out_grid, table = grid.downsample_table()
        output = _PairwiseConv.apply(
            grid.features, _offset_weights(self.weight), table, out_grid.batch.numel(), None
        )
        return out_grid.with_features(output)


def average_pool_3x3_stride2(grid: SparseGrid) -> SparseGrid:
    """SparseConvNet ``AveragePooling(2, 3, 2)``: sites of the strided conv, window sum divided by 9."""
    out_grid, table = grid.downsample_table()
    output = _PairwiseConv.apply(grid.features, None, table, out_grid.batch.numel(), None)
    return out_grid.with_features(output / 9.0)


def sparse_batch_norm(norm: nn.BatchNorm1d, grid: SparseGrid) -> SparseGrid:
    """BatchNorm over all active sites of the batch (``nn.BatchNorm1d`` on the site features)."""
    return grid.with_features(norm(grid.features))


def sparse_relu(grid: SparseGrid) -> SparseGrid:
    return grid.with_features(torch.relu(grid.features))
