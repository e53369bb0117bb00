"""The MIL benchmark runs end to end and prints one row per cohort and method."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_quick_run_prints_the_table(capsys, monkeypatch):
    monkeypatch.syspath_prepend(
        str(BENCHMARKS)
    )  # the benchmark imports its siblings, as when run as a script
    spec = importlib.util.spec_from_file_location("bench_mil", BENCHMARKS / "bench_mil.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    module.main(["--quick", "--signals", "architecture"])
    lines = [
        line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("architecture")
    ]
    assert [cells[1].strip() for cells in lines] == ["mean-pool", "abmil", "graph-mil"]
    for cells in lines:
        assert all(0.0 <= float(cell) <= 1.0 for cell in cells[2:4])
    assert [cells[4].strip() == "-" for cells in lines] == [True, False, False]
