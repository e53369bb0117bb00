"""How the slide-sized steps scale: assembly over many slides, one huge slide end to end, occlusion per tile.

Each case runs in a fresh Python process that reports its own wall time and peak RSS (``VmHWM``), so no
case inherits another's memory; the libraries are imported before the clock starts, and the RSS they take alone
is the ``imports MiB`` column. Inputs are synthetic (random float16 features on a grid)
and written to a temporary folder; models are the default architecture (``layer4`` 512-d) at the features'
width, randomly initialised.

- ``assemble``: ``assemble_datasets`` of an extraction folder of N committed tiny slides (16 tiles, 64-d).
- ``store`` / ``assemble`` / ``embed <tile_sampling>`` / ``heatmap embedding``: one slide of T tiles x D features
  committed to a PartStore, assembled into its Dataset, embedded by ``giga-ssl embed`` (random, chunks,
  window) and mapped by ``giga-ssl heatmap --method embedding``.
- ``assemble cohort`` / ``embed cohort random``: several such slides in one Dataset (per slide).
- ``occlusion``: ``occlusion_scores`` (radius 1, stride 1) of a square slide of T tiles (256-d); the unit time is
  per tile.

    python benchmarks/scale_slide.py            # about 15 minutes on 2 CPU cores
    python benchmarks/scale_slide.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # table.py and scale_cohort.py, beside this file
COLUMNS = [
    ("case", "<22"),
    ("size", "<22"),
    ("seconds", ">8.1f"),
    ("ms/unit", ">9.3f"),
    ("peak RSS MiB", ">12.0f"),
    ("imports MiB", ">11.0f"),
]
FULL = {
    "assembly_slides": (1_000, 10_000, 30_000),
    "slides": (
        (1_000, 256),
        (10_000, 256),
        (150_000, 256),
        (1_000, 2_560),
        (10_000, 2_560),
        (150_000, 2_560),
    ),
    "cohort": (3, 150_000, 2_560),  # several foundation-model slides in one Dataset
    "occlusion_tiles": (400, 4_000, 40_000),
    "hidden_dim": 512,
}
QUICK = {
    "assembly_slides": (20, 60),
    "slides": ((300, 16),),
    "cohort": (2, 300, 16),
    "occlusion_tiles": (64, 256),
    "hidden_dim": 32,
}
TINY_SLIDE = (16, 64)  # tiles, features of each slide in the assembly case
PATCH = 448
BASE_RSS_MIB = 0.0  # a case's peak RSS once the libraries are imported, before it starts


def measure(quick: bool) -> list[dict]:
    """Rows ``case, size, seconds, ms/unit, peak RSS MiB`` (see the module docstring)."""
    sizes = QUICK if quick else FULL
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="scale_slide_") as tmp:
        root = Path(tmp)
        rows += _assembly_rows(root / "cohort", sizes["assembly_slides"])
        for n_tiles, dim in sizes["slides"]:
            rows += _slide_rows(root / f"slide_{n_tiles}x{dim}", n_tiles, dim, sizes["hidden_dim"])
        rows += _cohort_rows(root / "cohort_of_large_slides", *sizes["cohort"], sizes["hidden_dim"])
        for n_tiles in sizes["occlusion_tiles"]:
            result = _in_fresh_process("occlusion", n_tiles=n_tiles, hidden_dim=sizes["hidden_dim"])
            rows.append(_row("occlusion r=1", f"{n_tiles:,} tiles x 256", result, n_tiles))
    return rows


def _row(case: str, size: str, result: dict, units: int) -> dict:
    return {
        "case": case,
        "size": size,
        "seconds": result["seconds"],
        "ms/unit": 1000 * result["seconds"] / units,
        "peak RSS MiB": result["peak_rss_mib"],
        "imports MiB": result["base_rss_mib"],
    }


def _in_fresh_process(case: str, **arguments) -> dict:
    """Run ``case`` in a new interpreter; its ``{"seconds", "peak_rss_mib"}``."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--case",
        json.dumps({"case": case, **arguments}),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise RuntimeError(f"case {case} {arguments} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assembly_rows(folder: Path, counts: tuple[int, ...]) -> list[dict]:
    """Commit the largest cohort once; smaller ones are hard links to its first parts."""
    _write_parts(folder / "all", max(counts), *TINY_SLIDE)
    rows = []
    for count in counts:
        target = folder / f"n{count}"
        _link_parts(folder / "all", target, count)
        result = _in_fresh_process("assemble", folder=str(target))
        rows.append(_row("assemble (per slide)", f"{count:,} slides", result, count))
    return rows


def _slide_rows(folder: Path, n_tiles: int, dim: int, hidden_dim: int) -> list[dict]:
    size = f"{n_tiles:,} x {dim:,}"
    rows = [
        _row(
            "store (commit)",
            size,
            _in_fresh_process("store", folder=str(folder), n_tiles=n_tiles, dim=dim),
            1,
        )
    ]
    rows.append(_row("assemble", size, _in_fresh_process("assemble", folder=str(folder)), 1))
    _in_fresh_process("model", folder=str(folder), dim=dim, hidden_dim=hidden_dim)
    for tile_sampling in ("random", "chunks", "window"):
        result = _in_fresh_process("embed", folder=str(folder), tile_sampling=tile_sampling)
        rows.append(_row(f"embed {tile_sampling}", size, result, 1))
    result = _in_fresh_process("heatmap", folder=str(folder))
    rows.append(_row("heatmap embedding", size, result, n_tiles))
    return rows


def _cohort_rows(folder: Path, n_slides: int, n_tiles: int, dim: int, hidden_dim: int) -> list[dict]:
    """Several large slides assembled into one Dataset (the record batches keep each in a chunk of its own),
    then embedded."""
    _write_parts(folder, n_slides, n_tiles, dim)
    size = f"{n_slides} x {n_tiles:,} x {dim:,}"
    rows = [_row("assemble cohort", size, _in_fresh_process("assemble", folder=str(folder)), n_slides)]
    _in_fresh_process("model", folder=str(folder), dim=dim, hidden_dim=hidden_dim)
    result = _in_fresh_process("embed", folder=str(folder), tile_sampling="random")
    rows.append(_row("embed cohort random", size, result, n_slides))
    return rows


def _grid_coords(n_tiles: int) -> np.ndarray:
    """Level-0 coords of ``n_tiles`` tiles filling a square, row by row."""
    side = int(np.ceil(np.sqrt(n_tiles)))
    cells = np.stack([np.arange(n_tiles) % side, np.arange(n_tiles) // side], axis=1)
    return (cells * PATCH).astype(np.int64)


def _part_store(folder: Path):
    """The PartStore of a new extraction folder (default settings)."""
    from giga_ssl_hf.contracts.extraction_folder import CONFIG_FILENAME, PARTS_DIRNAME
    from giga_ssl_hf.features.extraction_settings import ExtractionConfig
    from giga_ssl_hf.features.store import PartStore

    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILENAME).write_text(json.dumps(asdict(ExtractionConfig())))
    return PartStore(folder / PARTS_DIRNAME)


def _part(index: int, features: np.ndarray, coords: np.ndarray) -> tuple[dict, dict]:
    record = {
        "slide_id": f"slide_{index:06d}", "path": f"slide_{index:06d}.svs", "status": "ok", "n_tiles": len(features),
        "passes": ["exhaustive"], "patch_size_level0": PATCH, "mpp": 0.25, "magnification": 40.0,
    }  # fmt: skip
    return record, {"exhaustive_features": features, "exhaustive_coords": coords}


def _random_features(n_tiles: int, dim: int, seed: int = 0) -> np.ndarray:
    """float16 features drawn in blocks, so that a case's peak RSS is not that of a float32 copy."""
    rng = np.random.default_rng(seed)
    features = np.empty((n_tiles, dim), dtype=np.float16)
    for start in range(0, n_tiles, 8192):
        block = features[start : start + 8192]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
    return features


def _write_parts(folder: Path, n_slides: int, n_tiles: int, dim: int) -> None:
    from scale_cohort import write_parts_unsynced

    coords = _grid_coords(n_tiles)
    parts = (_part(index, _random_features(n_tiles, dim, seed=index), coords) for index in range(n_slides))
    write_parts_unsynced(_part_store(folder), parts)


def _link_parts(source: Path, target: Path, count: int) -> None:
    from giga_ssl_hf.contracts.extraction_folder import CONFIG_FILENAME, PARTS_DIRNAME

    (target / PARTS_DIRNAME).mkdir(parents=True)
    os.link(source / CONFIG_FILENAME, target / CONFIG_FILENAME)
    for index in range(count):
        for suffix in (".npz", ".json"):
            name = f"slide_{index:06d}{suffix}"
            os.link(source / PARTS_DIRNAME / name, target / PARTS_DIRNAME / name)


# Imported before a case's clock starts, so that its time is the work, not the lazy imports of the commands.
PRELOADED = (
    "torch", "transformers", "datasets", "sklearn.linear_model", "matplotlib.pyplot", "giga_ssl_hf.cli",
    "giga_ssl_hf.features.assemble", "giga_ssl_hf.features.augment", "giga_ssl_hf.features.store",
    "giga_ssl_hf.inference.embed_folder", "giga_ssl_hf.inference.heatmap", "giga_ssl_hf.inference.heatmap_plot",
    "giga_ssl_hf.inference.tile_scores", "giga_ssl_hf.evaluation.saved_probe",
)  # fmt: skip


def _run_case(arguments: dict) -> None:
    """One case in this process: its setup untimed, then the timed step; prints its JSON result."""
    import importlib

    global BASE_RSS_MIB
    for module in PRELOADED:
        importlib.import_module(module)
    BASE_RSS_MIB = _peak_rss_mib()
    case, folder = arguments["case"], Path(arguments.get("folder", "."))
    if case == "store":
        store = _part_store(folder)
        features = _random_features(arguments["n_tiles"], arguments["dim"])
        start = time.perf_counter()
        store.commit(*_part(0, features, _grid_coords(len(features))))
        _report(time.perf_counter() - start)
    elif case == "assemble":
        from giga_ssl_hf.features.assemble import assemble_datasets

        start = time.perf_counter()
        assemble_datasets(folder, passes=["exhaustive"])
        _report(time.perf_counter() - start)
    elif case == "model":
        _save_model_and_probe(folder, arguments["dim"], arguments["hidden_dim"])
        _report(0.0)
    elif case in ("embed", "heatmap"):
        from giga_ssl_hf.cli import main

        if case == "embed":
            out = folder / f"embeddings_{arguments['tile_sampling']}"
            argv = ["embed", "--model", str(folder / "model"), "--features", str(folder), "--out", str(out)]
            argv += ["--tile_sampling", arguments["tile_sampling"], "--device", "cpu", "--overwrite"]
        else:
            argv = ["heatmap", "--model", str(folder / "model"), "--features", str(folder), "--out"]
            argv += [
                str(folder / "heatmap"),
                "--probe",
                str(folder / "probe"),
                "--device",
                "cpu",
                "--overwrite",
                "--slide-embedding",
                "one-pass",  # the probe is fit on random vectors, not on embeddings made by embed
            ]
        start = time.perf_counter()
        status = main(argv)
        if status != 0:
            raise SystemExit(f"giga-ssl {case} exited {status}")
        _report(time.perf_counter() - start)
    elif case == "occlusion":
        _time_occlusion(arguments["n_tiles"], arguments["hidden_dim"])


def _save_model_and_probe(folder: Path, dim: int, hidden_dim: int) -> None:
    import torch

    from giga_ssl_hf import GigaSSLConfig, GigaSSLModel
    from giga_ssl_hf.weight_files import weights_sha256

    torch.manual_seed(0)
    GigaSSLModel(GigaSSLConfig(feature_dim=dim, hidden_dim=hidden_dim)).save_pretrained(folder / "model")
    _probe(hidden_dim, weights_sha256(folder / "model")).save(folder / "probe", overwrite=True)


def _probe(hidden_dim: int, model_sha256: str | None = None):
    """A probe fit on random embeddings, recorded as fit on the model whose weights hash is ``model_sha256``."""
    import pandas as pd

    from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe

    rng = np.random.default_rng(0)
    ids = np.array([f"s{index}" for index in range(8)])
    labels = pd.Series({slide: str(index % 2) for index, slide in enumerate(ids)})
    metadata = {"model_sha256": model_sha256}
    return fit_saved_probe(ids, rng.standard_normal((8, hidden_dim)), labels, embeddings_metadata=metadata)


def _time_occlusion(n_tiles: int, hidden_dim: int) -> None:
    import torch

    from giga_ssl_hf import GigaSSLConfig, GigaSSLModel
    from giga_ssl_hf.inference.tile_scores import occlusion_scores

    torch.manual_seed(0)
    model = GigaSSLModel(GigaSSLConfig(feature_dim=256, hidden_dim=hidden_dim)).eval()
    features = _random_features(n_tiles, 256)
    probe = _probe(hidden_dim)
    start = time.perf_counter()
    scores = occlusion_scores(model, features, _grid_coords(n_tiles), PATCH, probe, probe.default_class)
    seconds = time.perf_counter() - start
    if not np.isfinite(scores).all():
        raise SystemExit("occlusion left tiles without a score")
    _report(seconds)


def _peak_rss_mib() -> float:
    """This process's peak RSS. Linux's ``ru_maxrss`` starts a child at its parent's peak (it survives fork and
    exec), so a case started by a large parent would report the parent's memory; ``VmHWM`` belongs to the
    process's own address space."""
    status = Path("/proc/self/status")
    if status.is_file():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: ru_maxrss, in KiB on BSDs


def _report(seconds: float) -> None:
    print(json.dumps({"seconds": seconds, "peak_rss_mib": _peak_rss_mib(), "base_rss_mib": BASE_RSS_MIB}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="test-sized inputs")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in the process the benchmark starts
    args = parser.parse_args(argv)
    if args.case:
        _run_case(json.loads(args.case))
        return
    from table import text_table

    print(text_table(measure(args.quick), COLUMNS))


if __name__ == "__main__":
    main()
