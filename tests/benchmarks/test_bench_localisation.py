"""The localisation and retrieval benchmarks run end to end; the cohort generator exposes its region masks."""

import bench_localisation
import bench_representation as bench
import bench_retrieval
import numpy as np
import pytest


def table_rows(out: str, first: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")] for line in out.splitlines() if line.startswith(first)]


def test_region_masks_are_the_label_tissue_of_each_slide():
    settings = bench.CohortSettings(n_slides=6, min_tiles=60, max_tiles=120)
    for signal in ("rare", "broad"):
        masks = {}
        _, exhaustive, labels = bench.make_cohort(signal, settings, masks)
        assert sorted(masks) == sorted(labels.index)
        for slide_id, features in zip(exhaustive["slide_id"], exhaustive["features"]):
            mask = masks[slide_id]
            assert mask.shape == (len(features),) and 0.02 < mask.mean() < 0.32
            # the region's tiles are one tissue type: closer to each other than to the rest
            features = np.asarray(features, dtype=np.float64)
            inside = np.linalg.norm(features[mask] - features[mask].mean(0), axis=1).mean()
            assert inside < np.linalg.norm(features[~mask] - features[mask].mean(0), axis=1).mean()


@pytest.mark.slow
def test_quick_localisation_run_prints_every_method(capsys):
    bench_localisation.main(["--quick", "--cohorts", "region"])
    rows = table_rows(capsys.readouterr().out, "region")
    methods = [row[1] for row in rows if len(row) == 5]
    assert {"tiles (the default)", "embedding (views)", "IG (one pass)", "hybrid, tiles",
            "ABMIL attention", "raw-feature probe", "oracle tile probe"} <= set(methods)  # fmt: skip
    assert all(0.0 <= float(row[2]) <= 1.0 for row in rows)


@pytest.mark.slow
def test_quick_retrieval_run_prints_each_embedding(capsys):
    bench_retrieval.main(["--quick", "--signals", "architecture"])
    rows = table_rows(capsys.readouterr().out, "architecture")
    assert [row[1] for row in rows] == ["paper", "window", "hybrid", "mean-pool", "mean-pool, standardised"]
    assert all(0.0 <= float(value) <= 1.0 for row in rows for value in row[2:])
