"""``giga-ssl heatmap``: per-tile scores of a saved linear probe, drawn over each slide and saved as a table.

    giga-ssl evaluate --embeddings emb --labels labels.csv --save-probe probe
    giga-ssl heatmap --model runs/ssl/final --features out --probe probe --out heatmaps --slides-dir slides/

Writes ``OUT/<slide_id>.png`` (the scores as coloured tiles over the slide's thumbnail when its file is in
``--slides-dir``, else on the bare tile grid, with a colour bar naming the class) and ``OUT/tile_scores.parquet``
(``slide_id``, ``x``, ``y``: the tile's level-0 top-left corner, ``score``). Methods: see
:mod:`giga_ssl_hf.inference.tile_scores`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from giga_ssl_hf.contracts import NO_AUGMENTATION, TILE_SCORES_FILENAME
from giga_ssl_hf.files import atomic_file
from giga_ssl_hf.inference.embed import load_model, model_identity
from giga_ssl_hf.runtime import resolve_device

if TYPE_CHECKING:
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe

logger = logging.getLogger(__name__)

# Heavy libraries (torch, datasets, sklearn, matplotlib) are imported where used: `--help` stays fast.
METHODS = ("embedding", "occlusion")
COLOUR_MAP = "RdBu_r"  # red: for the class, blue: against it, white: neutral (0)


def score_label(method: str, class_name: str) -> str:
    if method == "occlusion":
        return f"drop in the slide's log-odds of '{class_name}' when removed"
    return f"tile log-odds of '{class_name}'"


def render_tile_scores(
    coords: np.ndarray,
    scores: np.ndarray,
    patch_size_level0: int,
    title: str,
    label: str,
    slide=None,
    max_size: int = 1024,
):
    """A matplotlib figure: tiles coloured by score (symmetric scale around 0) over the slide's thumbnail, or
    on white when ``slide`` is None; a colour bar with ``label``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from giga_ssl_hf.wsi.tissue import read_downsampled

    origin = coords.min(axis=0)
    cells = (coords - origin) // patch_size_level0  # (n, 2) x, y
    raster = np.full((cells[:, 1].max() + 1, cells[:, 0].max() + 1), np.nan)
    raster[cells[:, 1], cells[:, 0]] = scores
    grid_extent = (
        origin[0],
        origin[0] + raster.shape[1] * patch_size_level0,
        origin[1] + raster.shape[0] * patch_size_level0,
        origin[1],
    )
    if slide is not None:
        width0, height0 = slide.dimensions
    else:
        width0, height0 = grid_extent[1] - grid_extent[0], grid_extent[2] - grid_extent[3]
    aspect = height0 / max(width0, 1)
    figure, axes = plt.subplots(figsize=(8, max(2.5, min(16, 8 * aspect))), dpi=max_size / 8)
    if slide is not None:
        thumbnail = read_downsampled(slide, max(width0, height0) / max_size)
        axes.imshow(thumbnail, extent=(0, width0, height0, 0))
        axes.set_xlim(0, width0)
        axes.set_ylim(height0, 0)
    finite = np.abs(scores[np.isfinite(scores)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    image = axes.imshow(
        np.ma.masked_invalid(raster),
        extent=grid_extent,
        cmap=COLOUR_MAP,
        vmin=-limit,
        vmax=limit,
        alpha=0.55 if slide is not None else 1.0,
        interpolation="nearest",
    )
    axes.set_title(title)
    axes.set_xlabel("level-0 x (px)")
    axes.set_ylabel("level-0 y (px)")
    figure.colorbar(image, ax=axes, shrink=0.8).set_label(label)
    figure.tight_layout()
    return figure


def save_figure(figure, path: Path) -> Path:
    """Write a figure as PNG atomically (write, then rename) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path, "wb") as handle:
            figure.savefig(handle, format="png")
    finally:
        plt.close(figure)
    return path


def write_scores_table(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """``(slide_id, coords (n, 2), scores (n,))`` per slide -> a parquet table (atomically)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "slide_id": pa.array(
                [slide for slide, coords, _ in rows for _ in range(len(coords))], pa.string()
            ),
            "x": pa.array(np.concatenate([c[:, 0] for _, c, _ in rows]).astype(np.int64)),
            "y": pa.array(np.concatenate([c[:, 1] for _, c, _ in rows]).astype(np.int64)),
            "score": pa.array(np.concatenate([s for _, _, s in rows]).astype(np.float32)),
        }
    )
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle)
    return path


def find_slide_files(slides_dir: Path | None) -> dict[str, Path]:
    """Slide files of ``slides_dir`` by file stem (the slide_id of the tile features)."""
    if slides_dir is None:
        return {}
    from giga_ssl_hf.wsi.slide import find_slides

    return {path.stem: path for path in find_slides([slides_dir])}


def _open_for_thumbnail(path: Path | None, slide_id: str):
    if path is None:
        return None
    from giga_ssl_hf.wsi.slide import open_slide

    try:
        return open_slide(path, mpp=1.0)  # the pixel size does not matter for a thumbnail
    except Exception as error:  # OpenSlide / Pillow raise many types for unreadable files
        logger.warning("%s: cannot open %s (%s); drawing the bare tile grid", slide_id, path, error)
        return None


def check_probe_model(probe: SavedProbe, model, allow_mismatch: bool) -> None:
    """The probe must have been fit on embeddings of this model (same name or the same folder)."""
    if probe.embedding_dim != model.config.hidden_dim:
        raise ValueError(
            f"the probe takes {probe.embedding_dim}-d embeddings but the model's are {model.config.hidden_dim}-d"
        )
    recorded, given = probe.embedding_model, model_identity(model)["model"]
    if recorded is None:
        logger.warning("the probe does not record its embedding model: cannot check it matches %s", given)
        return
    same = recorded == given or (
        Path(recorded).is_dir() and Path(given).is_dir() and Path(recorded).samefile(given)
    )
    if not same and not allow_mismatch:
        raise ValueError(
            f"the probe was fit on embeddings of model {recorded!r}, not {given!r}: pass --allow-model-mismatch "
            "if they are the same model"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giga-ssl heatmap",
        description="Per-tile scores of a saved linear probe (giga-ssl evaluate --save-probe) on each slide: "
        "OUT/<slide_id>.png over the slide thumbnail (or the bare tile grid) and OUT/tile_scores.parquet "
        "(slide_id, x, y, score).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="methods:\n"
        "  embedding  each tile's output-site embedding in whole-slide context (L2-normalised), scored by the\n"
        "             probe: log-odds of the class\n"
        "  occlusion  drop of the slide's log-odds when the tiles within --occlusion-radius cells are removed\n"
        "             (model-agnostic; one forward pass per tile, or per block with --occlusion-stride)\n\n"
        "examples:\n"
        "  giga-ssl heatmap --model runs/ssl/final --features out --probe probe --out heatmaps --slides-dir slides\n"
        "  giga-ssl heatmap --model runs/ssl/final --features out --probe probe --out occ --method occlusion \\\n"
        "      --slide-ids slide_001 slide_007",
    )
    parser.add_argument("--model", required=True, help="trained model folder or Hub repo id")
    parser.add_argument(
        "--features", required=True, help="exhaustive tile-feature Dataset, or a giga-ssl extract folder"
    )
    parser.add_argument(
        "--probe", required=True, type=Path, help="saved probe folder (evaluate --save-probe)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--slides-dir", type=Path, default=None, help="folder of the slide files (file stem = slide_id)"
    )
    parser.add_argument("--slide-ids", nargs="+", default=None, help="slides to map (default: all)")
    parser.add_argument("--method", choices=METHODS, default="embedding", help="how tiles are scored")
    parser.add_argument(
        "--class", dest="class_name", default=None, help="class to score (default: the probe's last class)"
    )
    parser.add_argument("--occlusion-radius", type=int, default=1, help="cells removed around a tile")
    parser.add_argument(
        "--occlusion-stride", type=int, default=1, help="occlude blocks of this many cells (fewer passes)"
    )
    parser.add_argument(
        "--max-tiles-per-pass", type=int, default=20000, help="tiles per forward pass (larger slides: chunks)"
    )
    parser.add_argument("--thumbnail-size", type=int, default=1024, help="longer side of the PNGs in px")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="load Hub models with their own code"
    )
    parser.add_argument(
        "--allow-model-mismatch", action="store_true", help="use a probe recorded for another model name"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace heatmaps already in --out")
    return parser


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.max_tiles_per_pass < 1 or args.thumbnail_size < 64:
        parser.error("--max-tiles-per-pass must be positive and --thumbnail-size at least 64")
    if args.occlusion_radius < 0 or args.occlusion_stride < 1:
        parser.error("--occlusion-radius must be >= 0 and --occlusion-stride >= 1")
    if args.slides_dir is not None and not args.slides_dir.is_dir():
        parser.error(f"--slides-dir {args.slides_dir}: no such folder")


def run(args: argparse.Namespace) -> int:
    """Map the selected slides; returns the number of slides that failed."""
    from giga_ssl_hf.contracts.tile_features import (
        TileArrays,
        load_tile_dataset,
        resolve_tile_dataset_dir,
        without_indices_mapping,
    )
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe

    features_dir = resolve_tile_dataset_dir(args.features, "exhaustive")
    probe = SavedProbe.load(args.probe)
    class_name = args.class_name or probe.default_class
    probe.class_index(class_name)
    dataset = without_indices_mapping(load_tile_dataset(features_dir))
    if (np.asarray(dataset.data.column("aug_id").to_numpy()) != NO_AUGMENTATION).any():
        raise ValueError(
            f"{features_dir}: heatmaps need the exhaustive tile features (giga-ssl extract's exhaustive/)"
        )
    slide_ids = [str(s) for s in dataset.data.column("slide_id").to_pylist()]
    wanted = args.slide_ids or slide_ids
    unknown = sorted(set(wanted) - set(slide_ids))
    if unknown:
        raise ValueError(f"--slide-ids not in {features_dir}: {unknown}")
    targets = [args.out / TILE_SCORES_FILENAME] + [args.out / f"{slide}.png" for slide in wanted]
    if not args.overwrite and (existing := [p for p in targets if p.exists()]):
        raise FileExistsError(
            f"{existing[0]} exists (and {len(existing) - 1} more): pass --overwrite to replace"
        )
    slide_files = find_slide_files(args.slides_dir)
    model = load_model(args.model, resolve_device(args.device), args.trust_remote_code)
    check_probe_model(probe, model, args.allow_model_mismatch)
    args.out.mkdir(parents=True, exist_ok=True)

    arrays = TileArrays.from_dataset(dataset)
    patch_sizes = np.asarray(dataset.data.column("patch_size_level0").to_numpy())
    rows, failed = [], 0
    for slide_id in wanted:
        index = slide_ids.index(slide_id)
        features, coords = arrays.row(index)
        patch = int(patch_sizes[index])
        try:
            scores = score_slide(args, model, features, coords, patch, probe, class_name)
        except (ValueError, RuntimeError) as error:
            print(f"giga-ssl heatmap: {slide_id}: failed: {error}", file=sys.stderr)
            failed += 1
            continue
        slide = _open_for_thumbnail(slide_files.get(slide_id), slide_id)
        try:
            figure = render_tile_scores(
                coords, scores, patch, f"{slide_id} ({args.method})", score_label(args.method, class_name), slide,
                args.thumbnail_size,
            )  # fmt: skip
        finally:
            if slide is not None:
                slide.close()
        save_figure(figure, args.out / f"{slide_id}.png")
        rows.append((slide_id, np.asarray(coords), scores))
        print(f"{slide_id}: {len(scores)} tiles, scores {np.nanmin(scores):.3g} .. {np.nanmax(scores):.3g}, "
              f"{'over the slide' if slide is not None else 'bare tile grid'} -> {args.out / f'{slide_id}.png'}")  # fmt: skip
    if rows:
        write_scores_table(args.out / TILE_SCORES_FILENAME, rows)
        print(f"wrote {sum(len(r[1]) for r in rows)} tile scores of {len(rows)} slide(s) to "
              f"{args.out / TILE_SCORES_FILENAME}")  # fmt: skip
    return failed


def score_slide(args, model, features, coords, patch, probe, class_name) -> np.ndarray:
    from giga_ssl_hf.inference.tile_scores import embedding_scores, occlusion_scores

    if args.method == "occlusion":
        return occlusion_scores(
            model, features, coords, patch, probe, class_name, args.occlusion_radius, args.occlusion_stride,
            args.max_tiles_per_pass,
        )  # fmt: skip
    return embedding_scores(model, features, coords, patch, probe, class_name, args.max_tiles_per_pass)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    try:
        failed = run(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as error:
        print(f"giga-ssl heatmap: error: {error}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
