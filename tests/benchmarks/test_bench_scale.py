"""``benchmarks/bench_scale.py --quick``: both scale benchmarks run end to end at test size, every row says what
it measured, and the issue's checks are computed from them."""

import bench_scale
import pytest


@pytest.mark.slow
def test_quick_run_gives_every_row_and_every_check(capsys):
    cohort, slide, checks = bench_scale.run(quick=True)
    printed = capsys.readouterr().out
    cohort_module, slide_module = bench_scale.scale_cohort, bench_scale.scale_slide

    keys = [key for key, _ in cohort_module.COLUMNS]
    assert all(set(row) == set(keys) and row["value"] > 0 for row in cohort)
    by_measure = {}
    for row in cohort:
        by_measure.setdefault(row["measure"], []).append(row["slides"])
    # the store really holds the slides of each size (plus the commits measured so far)
    assert by_measure["commit + bookkeeping per slide"] == [75, 225]
    assert by_measure["planning (which slides are done)"] == [75, 225]
    assert by_measure["view sampling (augmented Dataset)"] == [20, 200]
    assert by_measure["evaluate (linear probe, 5 folds)"] == [200]

    cases = [row["case"] for row in slide]
    assert cases.count("assemble (per slide)") == len(slide_module.QUICK["assembly_slides"])
    for case in ("store (commit)", "embed random", "embed chunks", "embed window", "heatmap embedding"):
        assert cases.count(case) == len(slide_module.QUICK["slides"])
    assert cases.count("occlusion r=1") == len(slide_module.QUICK["occlusion_tiles"])
    assert cases.count("assemble cohort") == cases.count("embed cohort random") == 1
    for row in slide:
        assert row["seconds"] >= 0 and row["peak RSS MiB"] >= row["imports MiB"] > 0

    assert len(checks) == 5 and all(row["measured"] > 0 for row in checks)
    assert printed.count(" | True") + printed.count(" | False") == 5
