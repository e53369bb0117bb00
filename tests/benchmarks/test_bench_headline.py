"""The headline benchmark runs end to end: every method on the same splits, and the claim table per size."""

import bench_headline
import pytest


@pytest.mark.slow
def test_quick_run_prints_every_method_and_the_claim(capsys):
    bench_headline.main(["--quick", "--cohorts", "touching"])
    out, halves = capsys.readouterr().out.split("The hybrids against their better half")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("touching")]
    methods = [cells[1].strip() for cells in rows if len(cells) == 5]  # cohort, method, @5, @20, s
    assert methods == [m for m in bench_headline.METHODS if m != "kmeans-adjacency"]
    for cells in rows[: len(methods)]:
        for cell in cells[2:4]:
            mean, spread = (float(part) for part in cell.split("±"))
            assert 0.0 <= mean <= 1.0 and spread >= 0.0
    claims = [cells for cells in rows if len(cells) > 5]
    assert [cells[1].strip() for cells in claims] == ["5", "20"]
    assert all(cells[5].strip() in ("yes", "no") for cells in claims)
    halves = [line.split("|") for line in halves.splitlines() if line.startswith("touching")]
    assert sorted(cells[1].strip() for cells in halves) == ["20", "5"]
    for cells in halves:  # select - better is the hybrid-select AUC less the better half's
        better = float(cells[2].split()[-1])
        assert float(cells[5]) == pytest.approx(float(cells[4]) - better, abs=2e-3)


@pytest.mark.slow
def test_window_pair_at_several_top_site_fractions_reports_the_scale_chosen(capsys):
    argv = ["--quick", "--cohorts", "touching-close", "--methods", "window-pair", "--pair-pooling", "top"]
    bench_headline.main([*argv, "--pair-whole-slide", "--pair-embed-fractions", "0.03", "0.1"])
    out = capsys.readouterr().out.split("the top-site fraction chosen per split")[1]
    rows = [line.split("|") for line in out.splitlines() if line.startswith("touching-close")]
    assert [cells[1].strip() for cells in rows] == ["5", "20"]
    for cells in rows:  # 3 splits per size, each choosing top-3%, top-10% or both
        counts = [choice.split() for choice in cells[2].split(",")]
        assert sum(int(n) for _, n in counts) == 3
        assert {block for block, _ in counts} <= {"top-3%", "top-10%", "top-10%+top-3%", "top-3%+top-10%"}
    with pytest.raises(SystemExit):
        bench_headline.main([*argv[:-2], "--pair-embed-fractions", "0.1"])  # needs top pooling, whole slides
