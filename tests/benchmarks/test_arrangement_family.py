"""The arrangement family keeps its promise: equal composition in both classes, regions touching in class 1,
at least MIN_GAP cells apart in class 0, and the closeness member's B prototype moved onto A."""

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def family():
    sys.path.insert(0, str(BENCHMARKS))  # the family imports its sibling, as when the benchmarks run
    try:
        import arrangement_family
        import bench_representation

        yield arrangement_family, bench_representation
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("name", ["intermixed", "touching", "touching-small", "touching-close"])
def test_members_differ_in_arrangement_only(family, name):
    arrangement, bench = family
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


def test_closeness_moves_b_towards_a(family):
    arrangement, bench = family
    prototypes = np.random.default_rng(0).normal(size=(bench.TYPE_B + 1, 8))
    close = arrangement.MEMBERS["touching-close"].prototypes(prototypes)
    far = np.linalg.norm(prototypes[bench.TYPE_A] - prototypes[bench.TYPE_B])
    assert np.isclose(np.linalg.norm(close[bench.TYPE_A] - close[bench.TYPE_B]), 0.4 * far)
    assert np.array_equal(close[: bench.TYPE_B], prototypes[: bench.TYPE_B])
