"""``benchmarks/bench_pooling.py`` on a small slide: one row per pooling, all on the same output sites."""

import bench_pooling as bench


def test_every_pooling_is_timed_on_the_same_sites(capsys):
    rows = bench.main(["--tiles", "300", "--repeats", "1"])
    assert [row["pooling"] for row in rows] == [*bench.POOLINGS, "scales"]
    assert len({row["sites"] for row in rows}) == 1 and 0 < rows[0]["sites"] <= 300
    assert all(row["forward s"] > 0 and row["pooling / forward"] > 0 for row in rows)
    assert "pooling / forward" in capsys.readouterr().out
