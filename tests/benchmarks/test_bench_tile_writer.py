"""``benchmarks/bench_tile_writer.py --quick``: both writer routes assemble the same parts, the public one
through a cache folder it writes in full besides the output."""

import bench_tile_writer as bench
import pytest


@pytest.mark.slow
def test_quick_run_measures_both_routes_on_both_cohorts():
    rows = bench.measure(quick=True)
    keys = [key for key, _ in bench.COLUMNS]
    assert all(set(row) == set(keys) for row in rows)
    assert [row["route"] for row in rows] == list(bench.ROUTES) * 2
    for ours, public in zip(rows[::2], rows[1::2]):
        assert ours["size"] == public["size"] and ours["seconds"] > 0 and ours["peak RSS MiB"] > 0
        assert public["MB written"] >= 1.8 * ours["MB written"] > 0  # the cache, then the copy
        assert ours["largest chunk / MAX_BATCH_VALUES"] <= 1  # no slide at test size fills a batch
