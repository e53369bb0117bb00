"""The scale benchmark runs end to end at test size and reports every case."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "scale_slide.py"


@pytest.mark.slow
def test_quick_measure_reports_every_case():
    spec = importlib.util.spec_from_file_location("scale_slide", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    rows = module.measure(quick=True)
    cases = [row["case"] for row in rows]
    assert cases.count("assemble (per slide)") == len(module.QUICK["assembly_slides"])
    for case in ("store (commit)", "embed random", "embed chunks", "embed window", "heatmap embedding"):
        assert cases.count(case) == len(module.QUICK["slides"])
    assert cases.count("occlusion r=1") == len(module.QUICK["occlusion_tiles"])
    for row in rows:
        assert row["seconds"] >= 0 and row["peak RSS MiB"] >= row["imports MiB"] > 0
