import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from giga_ssl_hf.models.gigassl.sparse_ops import (
    StridedConv2d,
    SubmanifoldConv2d,
    average_pool_3x3_stride2,
    input_layer,
    segment_reduce,
)


def _full_grid(batch_size, size, channels, generator):
    """Every site of `batch_size` size x size maps active: the dense image and the equivalent SparseGrid."""
    image = torch.randn(batch_size, channels, size, size, generator=generator, dtype=torch.float64)
    b, x, y = torch.meshgrid(torch.arange(batch_size), torch.arange(size), torch.arange(size), indexing="ij")
    batch, xy = b.flatten(), torch.stack([x.flatten(), y.flatten()], 1)
    features = image.permute(0, 2, 3, 1).reshape(-1, channels)
    grid = input_layer(batch, xy, features, torch.full((batch_size, 2), size))
    return image, grid


def _dense_at_sites(dense, grid):
    return dense[grid.batch, :, grid.xy[:, 0], grid.xy[:, 1]]


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch_size=st.integers(1, 3),
    size_index=st.integers(0, 3),
    c_in=st.integers(1, 6),
    c_out=st.integers(1, 6),
)
def test_dense_equivalence_on_full_grid(seed, batch_size, size_index, c_in, c_out):
    generator = torch.Generator().manual_seed(seed)
    size = 7 + 4 * size_index  # SparseConvNet map sizes are 3 mod 4
    image, grid = _full_grid(batch_size, size, c_in, generator)

    submanifold = SubmanifoldConv2d(c_in, c_out, kernel_size=3).double()
    torch.nn.init.normal_(submanifold.weight, generator=generator)
    expected = F.conv2d(image, submanifold.weight, padding=1)
    torch.testing.assert_close(submanifold(grid).features, _dense_at_sites(expected, grid))

    strided = StridedConv2d(c_in, c_out).double()
    torch.nn.init.normal_(strided.weight, generator=generator)
    out = strided(grid)
    expected = F.conv2d(image, strided.weight, stride=2)
    assert out.features.shape[0] == batch_size * expected.shape[2] * expected.shape[3]
    torch.testing.assert_close(out.features, _dense_at_sites(expected, out))

    pooled = average_pool_3x3_stride2(grid)
    torch.testing.assert_close(pooled.features, _dense_at_sites(F.avg_pool2d(image, 3, stride=2), pooled))


def test_isolated_tiles_pay_only_for_existing_pairs():
    # Three far-apart tiles: the only submanifold neighbour pairs are the centre ones (no gather at all).
    xy = torch.tensor([[0, 0], [4, 4], [8, 0]])
    grid = input_layer(torch.zeros(3, dtype=torch.long), xy, torch.randn(3, 2), torch.tensor([[11, 11]]))
    pairs = grid.submanifold_pairs(3)
    assert pairs[4] is None
    assert sum(p[0].numel() for p in pairs if p is not None) == 0
    # Two adjacent tiles: exactly one pair each way.
    grid = input_layer(
        torch.zeros(2, dtype=torch.long),
        torch.tensor([[2, 2], [3, 2]]),
        torch.randn(2, 2),
        torch.tensor([[7, 7]]),
    )
    assert sum(p[0].numel() for p in grid.submanifold_pairs(3) if p is not None) == 2


def test_neighbours_do_not_leak_across_slides_or_rows():
    # Slide 0 has a tile on its last row, slide 1 on its first: packed keys must not make them neighbours.
    batch = torch.tensor([0, 1])
    xy = torch.tensor([[6, 6], [0, 0]])
    grid = input_layer(batch, xy, torch.ones(2, 1), torch.tensor([[7, 7], [7, 7]]))
    conv = SubmanifoldConv2d(1, 1, kernel_size=3)
    torch.nn.init.ones_(conv.weight)
    torch.testing.assert_close(conv(grid).features, torch.ones(2, 1))


def test_input_layer_averages_duplicates():
    batch = torch.tensor([0, 0, 0, 1])
    xy = torch.tensor([[1, 1], [1, 1], [2, 1], [1, 1]])
    features = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    grid = input_layer(batch, xy, features, torch.tensor([[7, 7], [7, 7]]))
    assert grid.batch.tolist() == [0, 0, 1]
    assert grid.xy.tolist() == [[1, 1], [2, 1], [1, 1]]
    assert grid.features.flatten().tolist() == [2.0, 5.0, 7.0]


def test_segment_reduce_over_unsorted_segments():
    values, segments = torch.arange(6.0)[:, None], torch.tensor([1, 0, 1, 0, 2, 2])
    assert segment_reduce(values, segments, 3).flatten().tolist() == [2.0, 1.0, 4.5]
    assert segment_reduce(values, segments, 3, "max").flatten().tolist() == [3.0, 2.0, 5.0]


@pytest.mark.parametrize("op", ["submanifold", "strided", "pool"])
def test_ops_under_bf16_autocast_match_float32(op):
    generator = torch.Generator().manual_seed(3)
    xy = torch.randint(0, 6, (40, 2), generator=generator)
    batch = torch.randint(0, 2, (40,), generator=generator)
    torch.manual_seed(
        3
    )  # the conv's initial weights: the test's outcome must not depend on the tests before it
    conv = {"submanifold": SubmanifoldConv2d(8, 4, 3), "strided": StridedConv2d(8, 4), "pool": None}[op]
    weight = torch.sin(torch.arange(4 * 64.0)).reshape(-1, 4)  # fixed output projection for the loss

    def loss_and_grads():
        features = torch.randn(40, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
        grid = input_layer(batch, xy, features, torch.full((2, 2), 7))
        out = average_pool_3x3_stride2(grid) if conv is None else conv(grid)
        loss = (out.features.float()[:, :4] * weight[: out.features.shape[0]]).sum()
        params = [features] + ([] if conv is None else [conv.weight])
        return loss, torch.autograd.grad(loss, params)

    loss, grads = loss_and_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16, grads_bf16 = loss_and_grads()
    assert abs(loss_bf16.item() - loss.item()) < 0.02 * abs(loss.item()) + 1e-2
    for exact, mixed in zip(grads, grads_bf16):
        assert mixed.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(exact.flatten(), mixed.flatten(), dim=0) > 0.999
