"""The scale benchmark runs end to end on a small cohort, and its rows say what they measured."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "scale_cohort.py"


@pytest.mark.slow
def test_measure_quick_gives_every_row_at_every_size():
    spec = importlib.util.spec_from_file_location("scale_cohort", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    rows = module.measure(quick=True)
    keys = [key for key, _ in module.COLUMNS]
    assert all(set(row) == set(keys) and row["value"] > 0 for row in rows)
    by_measure = {}
    for row in rows:
        by_measure.setdefault(row["measure"], []).append(row["slides"])
    # the store really holds the slides of each size (plus the commits measured so far)
    assert by_measure["commit + bookkeeping per slide"] == [75, 225]
    assert by_measure["planning (which slides are done)"] == [75, 225]
    assert by_measure["view sampling (augmented Dataset)"] == [20, 200]
    assert by_measure["evaluate (linear probe, 5 folds)"] == [200]
