"""How each stage's cost grows with the cohort and with the slide: one command, two tables, the issue's checks.

- ``scale_cohort.py``: per-slide commit overhead and planning at 1k / 10k / 30k committed slides, view
  sampling from an augmented Dataset of 100 vs 5,000 slides, ``evaluate`` on 30,000 embeddings;
- ``scale_slide.py``: assembly time and peak RSS at 1k / 10k / 30k slides, one slide of 1k / 10k / 150k tiles
  at 256-d and 2,560-d through the store, assembly, ``embed`` and ``heatmap``, occlusion time per tile on
  slides of ~400 / ~4,000 / ~40,000 tiles.

Synthetic inputs, written to temporary folders. Under 30 minutes on a 2-core CPU; ``--quick`` in seconds.

    python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_cohort  # noqa: E402
import scale_slide  # noqa: E402
from table import text_table  # noqa: E402


def _one(rows: list[dict], key: str, value, size) -> dict:
    matches = [
        row for row in rows if row[key] == value and str(size) in str(row.get("size", row.get("slides")))
    ]
    if len(matches) != 1:
        raise LookupError(f"expected one row {value!r} at {size}, found {len(matches)}")
    return matches[0]


def checks(cohort: list[dict], slide: list[dict], quick: bool) -> list[dict]:
    """The issue's targets, each as measured in this run: ``{check, measured, target, passed}``."""
    small, large = (50, 200) if quick else (1_000, 30_000)
    commit = "commit + bookkeeping per slide"
    commit_small = _one(cohort, "measure", commit, small + (25 if quick else 205))["value"]
    commit_large = _one(cohort, "measure", commit, large + (25 if quick else 205))["value"]
    sizes = scale_slide.QUICK if quick else scale_slide.FULL
    first, last = sizes["assembly_slides"][0], sizes["assembly_slides"][-1]
    rss_small = _one(slide, "case", "assemble (per slide)", f"{first:,} slides")["peak RSS MiB"]
    rss_large = _one(slide, "case", "assemble (per slide)", f"{last:,} slides")["peak RSS MiB"]
    occlusion = [row for row in slide if row["case"].startswith("occlusion")]
    per_tile = [row["ms/unit"] for row in occlusion]
    huge = max(sizes["slides"])
    huge_size = f"{huge[0]:,} x {huge[1]:,}"
    embedded = [row for row in slide if row["case"].startswith("embed") and row["size"] == huge_size]
    return [
        {
            "check": f"commit overhead {large:,} vs {small:,} committed slides",
            "measured": commit_large / commit_small,
            "target": "<= 2x",
            "passed": commit_large <= 2 * commit_small,
        },
        {
            "check": f"assembly peak RSS {last:,} vs {first:,} slides",
            "measured": rss_large / rss_small,
            "target": "<= 1.5x",
            "passed": rss_large <= 1.5 * rss_small,
        },
        {
            "check": f"occlusion ms per tile, {occlusion[1]['size']} vs {occlusion[0]['size']}",
            "measured": per_tile[1] / per_tile[0],
            "target": "<= 2x",
            "passed": per_tile[1] <= 2 * per_tile[0],
        },
        {
            "check": f"occlusion map of {occlusion[-1]['size']}, seconds",
            "measured": occlusion[-1]["seconds"],
            "target": "< 900 s",
            "passed": occlusion[-1]["seconds"] < 900,
        },
        {
            "check": f"{huge_size} slide embedded (random, chunks, window)",
            "measured": float(len(embedded)),
            "target": "3",
            "passed": len(embedded) == 3,
        },
    ]


def run(quick: bool) -> tuple[list[dict], list[dict], list[dict]]:
    """Measure and print both benchmarks and the checks; returns ``(cohort rows, slide rows, checks)``."""
    start = time.perf_counter()
    cohort = scale_cohort.measure(quick)
    print(text_table(cohort, scale_cohort.COLUMNS), end="\n\n", flush=True)
    slide = scale_slide.measure(quick)
    print(text_table(slide, scale_slide.COLUMNS), end="\n\n", flush=True)
    results = checks(cohort, slide, quick)
    columns = [("check", "<60"), ("measured", ">9.2f"), ("target", "<8"), ("passed", "<6")]
    print(text_table(results, columns))
    print(f"\ntotal: {time.perf_counter() - start:.0f} s")
    return cohort, slide, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="test-sized inputs (seconds)")
    _, _, results = run(parser.parse_args(argv).quick)
    return 0 if all(row["passed"] for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
