"""The arrangement family keeps its promise: equal composition in both classes, regions touching in class 1,
at least MIN_GAP cells apart in class 0, and the closeness member's B prototype moved onto A."""

import arrangement_family as arrangement
import bench_representation as bench
import numpy as np
import pytest


@pytest.mark.parametrize("name", ["intermixed", "touching", "touching-small", "touching-close"])
def test_members_differ_in_arrangement_only(name):
    member = arrangement.MEMBERS[name]
    for seed in range(4):
        counts = []
        for label in (0, 1):
            rng = np.random.default_rng([seed, label])
            cells = bench.tissue_blob(300, rng)
            types = bench.background_types(cells, rng)
            rng_label = np.random.default_rng(seed)  # the same draw of region sizes for both classes
            member.plant(label, cells, types, rng_label)
            a, b = np.flatnonzero(types == bench.TYPE_A), np.flatnonzero(types == bench.TYPE_B)
            counts.append((len(a), len(b)))
            gap = arrangement.cell_gap(cells, a, b)
            assert gap == 1 if label else gap >= arrangement.MIN_GAP
        assert counts[0] == counts[1] and counts[0][0] == counts[0][1]


def test_closeness_moves_b_towards_a():
    prototypes = np.random.default_rng(0).normal(size=(bench.TYPE_B + 1, 8))
    close = arrangement.MEMBERS["touching-close"].prototypes(prototypes)
    far = np.linalg.norm(prototypes[bench.TYPE_A] - prototypes[bench.TYPE_B])
    assert np.isclose(np.linalg.norm(close[bench.TYPE_A] - close[bench.TYPE_B]), 0.4 * far)
    assert np.array_equal(close[: bench.TYPE_B], prototypes[: bench.TYPE_B])
