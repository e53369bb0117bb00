"""The tile-feature writer (``datasets``' ArrowWriter) against the public route, ``Dataset.from_generator``
into a cache folder then ``save_to_disk``: assembly time, peak RSS and bytes written on large slides, and the
largest record batch of a cohort that mixes one large slide with small ones.

    python benchmarks/bench_tile_writer.py            # 3 slides x 150,000 tiles x 2,560 features (2.3 GB)
    python benchmarks/bench_tile_writer.py --quick

Each route assembles the same committed parts (``scale_slide``'s synthetic slides) in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_slide  # noqa: E402

COLUMNS = [
    ("route", "<30"),
    ("size", "<26"),
    ("seconds", ">8.1f"),
    ("peak RSS MiB", ">12.0f"),
    ("MB written", ">10.1f"),
    ("largest chunk / MAX_BATCH_VALUES", ">32.2fx"),
]
FULL = {"slides": (3, 150_000, 2_560), "mixed": (200, 100, 140_000, 256)}
QUICK = {"slides": (2, 3_000, 64), "mixed": (20, 10, 4_000, 16)}
ROUTES = ("ArrowWriter (ours)", "from_generator + save_to_disk")


def _bytes_under(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def write_with_generator(rows, dataset_dir, feature_dim, dtype, metadata, written: list[int]):
    """``write_tile_dataset`` through public ``datasets`` calls only; appends the bytes it wrote to ``written``."""
    import datasets

    from giga_ssl_hf.contracts import write_metadata
    from giga_ssl_hf.contracts.tile_features import check_row_size, tile_features_schema
    from giga_ssl_hf.files import staged_directory

    def checked(rows):
        for row in rows:
            check_row_size(row)
            yield row

    with staged_directory(dataset_dir) as tmp:
        cache = tmp.parent / (tmp.name + ".cache")
        try:
            dataset = datasets.Dataset.from_generator(
                checked,
                features=tile_features_schema(feature_dim, dtype),
                cache_dir=str(cache),
                gen_kwargs={"rows": rows},
                writer_batch_size=1,  # one slide per record batch in the cache
                fingerprint=f"bench-{time.time_ns()}",
            )
            dataset.save_to_disk(str(tmp))
            write_metadata(tmp, metadata)
            written.append(_bytes_under(cache) + _bytes_under(tmp))
            del dataset
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return Path(dataset_dir)


def _install_route(route: str) -> list[int]:
    """Make the assembly write through ``route``; the list that receives the bytes each write wrote."""
    from giga_ssl_hf.features import store

    written: list[int] = []
    if route == ROUTES[1]:
        store.write_tile_dataset = lambda *args: write_with_generator(*args, written=written)
    else:
        ours = store.write_tile_dataset

        def counted(*args):
            path = ours(*args)
            written.append(_bytes_under(path))
            return path

        store.write_tile_dataset = counted
    return written


def _largest_chunk_ratio(dataset_dir: Path) -> float:
    """Feature values of the dataset's largest record batch, over :data:`MAX_BATCH_VALUES`."""
    from giga_ssl_hf.contracts.tile_features import MAX_BATCH_VALUES, load_tile_dataset

    dataset = load_tile_dataset(dataset_dir)
    chunks, dim = dataset.data.column("features").chunks, dataset.features["features"].shape[1]
    return (
        max(int(chunk.storage.value_lengths().to_numpy().sum()) * dim for chunk in chunks) / MAX_BATCH_VALUES
    )


def _run_case(route: str, folder: Path) -> None:
    """Assemble ``folder``'s parts through ``route`` in this process; prints its JSON result."""
    import datasets

    from giga_ssl_hf.features.assemble import assemble_datasets

    datasets.disable_progress_bars()
    written = _install_route(route)
    start = time.perf_counter()
    assemble_datasets(folder, passes=["exhaustive"])
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak RSS MiB": scale_slide._peak_rss_mib(),
                "MB written": sum(written) / 1e6,
                "largest chunk / MAX_BATCH_VALUES": _largest_chunk_ratio(folder / "exhaustive"),
            }
        )
    )


def _in_fresh_process(route: str, folder: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps([route, str(folder)])]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(scale_slide.REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"{route} on {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_mixed_parts(folder: Path, n_small: int, small_tiles: int, large_tiles: int, dim: int) -> None:
    """``n_small`` small slides, then one large one, then ``n_small`` small ones again."""
    from scale_cohort import write_parts_unsynced

    counts = [small_tiles] * n_small + [large_tiles] + [small_tiles] * n_small
    parts = (
        scale_slide._part(index, np.ones((count, dim), np.float16), scale_slide._grid_coords(count))
        for index, count in enumerate(counts)
    )
    write_parts_unsynced(scale_slide._part_store(folder), parts)


def measure(quick: bool) -> list[dict]:
    sizes = QUICK if quick else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tile_writer_") as tmp:
        n_slides, n_tiles, dim = sizes["slides"]
        large = Path(tmp) / "large"
        scale_slide._write_parts(large, n_slides, n_tiles, dim)
        mixed = Path(tmp) / "mixed"
        _write_mixed_parts(mixed, *sizes["mixed"])
        n_small, small_tiles, large_tiles, mixed_dim = sizes["mixed"]
        cases = [
            (large, f"{n_slides} x {n_tiles:,} x {dim:,}"),
            (mixed, f"{2 * n_small} x {small_tiles} + {large_tiles:,} x {mixed_dim}"),
        ]
        for folder, size in cases:
            for route in ROUTES:
                rows.append({"route": route, "size": size, **_in_fresh_process(route, folder)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="test-sized inputs")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one route, in the process the benchmark starts
    args = parser.parse_args(argv)
    if args.case:
        route, folder = json.loads(args.case)
        _run_case(route, Path(folder))
        return 0
    from table import text_table

    print(text_table(measure(args.quick), COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
