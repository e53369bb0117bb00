"""The MIL benchmark runs end to end and prints one row per cohort and method."""

import bench_mil
import pytest


@pytest.mark.slow
def test_quick_run_prints_the_table(capsys):
    bench_mil.main(["--quick", "--signals", "architecture"])
    lines = [
        line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("architecture")
    ]
    assert [cells[1].strip() for cells in lines] == ["mean-pool", "abmil", "graph-mil"]
    for cells in lines:
        assert all(0.0 <= float(cell) <= 1.0 for cell in cells[2:4])
    assert [cells[4].strip() == "-" for cells in lines] == [True, False, False]
