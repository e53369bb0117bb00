"""Costs that could grow with the cohort, at 1,000 to 30,000 slides, on synthetic inputs written in a temp dir.

- per-slide commit overhead of extraction (the part files of one slide with tiny arrays, plus the bookkeeping
  that follows it) with 1k / 10k / 30k slides already committed, beside the manifest rewrite every slide paid
  before issue 20 (measured on fewer commits: it grows with the store);
- the planning step of a run (which slides are done) over the whole store;
- SimCLR view sampling (views/s) from an augmented Dataset of 100 vs 5,000 slides (memory-mapped: flat);
- ``giga-ssl evaluate`` (the linear probe, 5-fold) on 30,000 synthetic slide embeddings.

The stores really hold that many committed slides: they are filled with the files a commit writes, without
the per-file fsync a real commit pays (filling 30,000 slides that way would take minutes); the measured window
of commits goes through :meth:`PartStore.commit` itself.

    python benchmarks/scale_cohort.py            # 1k / 10k / 30k slides (a few minutes)
    python benchmarks/scale_cohort.py --quick    # 50 / 200 slides (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

COLUMNS = [("measure", "<46"), ("slides", ">7d"), ("value", ">10.3f"), ("unit", "<12")]
_RECORD = {"status": "ok", "n_tiles": 8, "seconds": 0.1, "error": None, "passes": ["exhaustive"], "mpp": 0.5}


def _arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "exhaustive_features": rng.standard_normal((8, 16)).astype(np.float16),
        "exhaustive_coords": rng.integers(0, 10_000, (8, 2)),
    }


def write_parts_unsynced(store, parts) -> None:
    """Committed slides from ``(record, arrays)`` pairs: the files :meth:`PartStore.commit` writes, without its
    fsyncs (filling a store of 30,000 slides with real commits would take minutes)."""
    store.directory.mkdir(parents=True, exist_ok=True)
    for record, arrays in parts:
        with open(store.directory / f"{record['slide_id']}.npz", "wb") as handle:
            np.savez(handle, **arrays)
        (store.directory / f"{record['slide_id']}.json").write_text(
            json.dumps(record, sort_keys=True, indent=1)
        )


def fill_store(store, start: int, stop: int, rng: np.random.Generator) -> None:
    """Committed slides ``start..stop-1`` (tiny records and arrays)."""
    records = (
        {**_RECORD, "slide_id": f"slide{i:06d}", "path": f"/data/slide{i:06d}.svs"}
        for i in range(start, stop)
    )
    write_parts_unsynced(store, ((record, _arrays(rng)) for record in records))


def _commit_window(store, first: int, count: int, rng, bookkeeping) -> float:
    """Mean seconds of ``count`` commits (new slides) each followed by ``bookkeeping()``."""
    start = time.perf_counter()
    for index in range(first, first + count):
        slide_id = f"new{index:06d}"
        store.commit({**_RECORD, "slide_id": slide_id, "path": f"/data/{slide_id}.svs"}, _arrays(rng))
        bookkeeping()
    return (time.perf_counter() - start) / count


def measure_store(sizes: tuple[int, ...], window: int, before_window: int) -> list[dict]:
    """Commit overhead (now and before issue 20) and planning time at each store size."""
    from giga_ssl_hf.features.assemble import write_manifest
    from giga_ssl_hf.features.cohort import SlideEntry
    from giga_ssl_hf.features.extraction import _plan
    from giga_ssl_hf.features.store import PartStore

    rows, rng = [], np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        store, filled, extra = PartStore(out / "parts"), 0, 0
        for size in sizes:
            fill_store(store, filled, size - extra, rng)
            filled = size - extra
            now = _commit_window(store, extra, window, rng, lambda: None)
            before = _commit_window(
                store, extra + window, before_window, rng, lambda: write_manifest(store.records(), out)
            )
            extra += window + before_window
            entries = [SlideEntry(Path(f"/data/slide{i:06d}.svs"), f"slide{i:06d}") for i in range(filled)]
            start = time.perf_counter()
            todo, done = _plan(entries, store, ("exhaustive",), redo_all=False)
            planning = time.perf_counter() - start
            assert not todo and len(done) == filled
            held = len(store.committed_ids())
            rows += [
                {
                    "measure": "commit + bookkeeping per slide",
                    "slides": held,
                    "value": 1e3 * now,
                    "unit": "ms",
                },
                {
                    "measure": "  before: + manifest rewrite",
                    "slides": held,
                    "value": 1e3 * before,
                    "unit": "ms",
                },
                {
                    "measure": "planning (which slides are done)",
                    "slides": held,
                    "value": planning,
                    "unit": "s",
                },
            ]
    return rows


def measure_views(slide_counts: tuple[int, ...], seconds: float) -> list[dict]:
    """Two-view, 5-tile samples per second from an on-disk augmented Dataset of each size."""
    import datasets

    from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
    from giga_ssl_hf.training.views import SlideViews

    rows = []
    for n_slides in slide_counts:
        with tempfile.TemporaryDirectory() as tmp:
            dataset, _ = synthetic_tile_dataset(
                n_slides=n_slides, n_aug=4, tiles_per_slide=64, feature_dim=64
            )
            dataset.save_to_disk(tmp)
            views = SlideViews(datasets.load_from_disk(tmp), n_tiles=5)
            rng, count, epoch = np.random.default_rng(0), 0, 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                views.sample(rng.integers(0, len(views), 256), epoch=epoch)
                count, epoch = count + 2 * 256, epoch + 1
            rate = count / (time.perf_counter() - start)
            del views
        rows.append(
            {
                "measure": "view sampling (augmented Dataset)",
                "slides": n_slides,
                "value": rate,
                "unit": "views/s",
            }
        )
    return rows


def _evaluate_seconds(n_slides: int) -> float:
    """Seconds of ``evaluate`` (5-fold linear probe) on ``n_slides`` 64-d embeddings of two classes."""
    from giga_ssl_hf.evaluation.evaluate_command import EvaluateSettings, evaluate

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n_slides)
    embeddings = rng.standard_normal((n_slides, 64)).astype(np.float32) + labels[:, None] * 0.3
    ids = np.array([f"slide{i:06d}" for i in range(n_slides)])
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "embeddings.npy", embeddings)
        np.save(Path(tmp) / "ids.npy", ids)
        table = Path(tmp) / "label.csv"
        table.write_text("ID,label\n" + "".join(f"{i},{y}\n" for i, y in zip(ids, labels)))
        settings = EvaluateSettings(embeddings=tmp, labels=(str(table),), folds=5)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            evaluate(settings)
        return time.perf_counter() - start


def measure_evaluate(n_slides: int) -> dict:
    _evaluate_seconds(50)  # the first call imports the probe's libraries (seconds): not a cost of the cohort
    seconds = _evaluate_seconds(n_slides)
    return {"measure": "evaluate (linear probe, 5 folds)", "slides": n_slides, "value": seconds, "unit": "s"}


def measure(quick: bool) -> list[dict]:
    """Every row of this benchmark (:data:`COLUMNS`); ``quick`` sizes it for a test."""
    if quick:
        rows = measure_store((50, 200), window=20, before_window=5)
        return rows + measure_views((20, 200), seconds=0.3) + [measure_evaluate(200)]
    rows = measure_store((1_000, 10_000, 30_000), window=200, before_window=5)
    return rows + measure_views((100, 5_000), seconds=3.0) + [measure_evaluate(30_000)]


def main() -> None:
    from table import text_table

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="50 / 200 slides: seconds, for a test")
    print(text_table(measure(parser.parse_args().quick), COLUMNS))


if __name__ == "__main__":
    main()
