"""The representation benchmark's cohort generator keeps its promises, and the benchmark runs end to end."""

import bench_representation as bench
import numpy as np
import pytest


def planted_types(signal, label, n=300, seed=0):
    rng = np.random.default_rng(seed)
    cells = bench.tissue_blob(n, rng)
    types = bench.background_types(cells, rng)
    bench.label_types(signal, label, cells, types, rng)
    return cells, types


def test_architecture_signal_has_equal_composition_and_differs_in_adjacency():
    def a_next_to_b(cells, types):
        where = {tuple(c): t for c, t in zip(cells.tolist(), types.tolist())}
        a_cells = [c for c, t in where.items() if t == bench.TYPE_A]
        steps = ((1, 0), (-1, 0), (0, 1), (0, -1))
        return np.mean(
            [any(where.get((x + dx, y + dy)) == bench.TYPE_B for dx, dy in steps) for x, y in a_cells]
        )

    for seed in range(5):
        counts, adjacency = [], []
        for label in (0, 1):
            cells, types = planted_types("architecture", label, seed=seed)
            counts.append((np.sum(types == bench.TYPE_A), np.sum(types == bench.TYPE_B)))
            adjacency.append(a_next_to_b(cells, types))
        assert counts[0][0] == counts[0][1] == counts[1][0] == counts[1][1]  # same composition exactly
        assert adjacency[1] > 0.6 and adjacency[0] < 0.2  # intermixed vs apart


@pytest.mark.parametrize(("signal", "low", "high"), [("rare", 0.03, 0.20), ("broad", 0.05, 0.30)])
def test_composition_signals_plant_one_contiguous_region_of_the_class_type(signal, low, high):
    for label, planted in ((1, bench.TYPE_A), (0, bench.TYPE_B)):
        cells, types = planted_types(signal, label, n=500, seed=label)
        region = cells[types == planted]
        assert low - 0.01 <= len(region) / len(cells) <= high + 0.01
        assert not np.any((types == bench.TYPE_A) & (types == bench.TYPE_B))
        spread = np.linalg.norm(region - region.mean(0), axis=1).max()
        assert spread <= np.sqrt(len(region) / np.pi) * 2 + 2  # a compact patch, not scattered tiles


@pytest.mark.slow
def test_quick_run_prints_the_table(capsys):
    bench.main(["--quick", "--signals", "architecture"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| architecture |")]
    assert [row.split("|")[2].strip() for row in rows] == [
        "paper",
        "window",
        "paper lr=0.002",
        "untrained",
        "mean-pool",
        "hybrid",
    ]
    for row in rows:
        assert all(0.0 <= float(v) <= 1.0 for v in row.strip("|").split("|")[2:])
    assert "chance log(2B-1)" in out
