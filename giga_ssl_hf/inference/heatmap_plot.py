"""Drawing and writing heatmaps: per-tile scores as coloured tiles over a slide (PNG) and as a table (parquet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from giga_ssl_hf.files import atomic_file

COLOUR_MAP = "RdBu_r"  # red: for the class, blue: against it, white: neutral (0)


def scores_schema():
    """The columns of ``tile_scores.parquet`` (a function: pyarrow is imported where used)."""
    import pyarrow as pa

    return pa.schema(
        [("slide_id", pa.string()), ("x", pa.int64()), ("y", pa.int64()), ("score", pa.float32())]
    )


def score_label(method: str, class_name: str) -> str:
    if method == "occlusion":
        return f"drop in the slide's log-odds of '{class_name}' when removed"
    if method == "integrated-gradients":
        return f"contribution to the slide's log-odds of '{class_name}' (from its mean tile)"
    return f"contribution to the slide's log-odds of '{class_name}'"


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


def save_figure(figure, path: Path, dpi: float | None = None) -> Path:
    """Write a figure as PNG atomically (write, then rename: a failed drawing leaves the previous file and no
    temporary) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return path


def write_scores_table(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray]], previous=None) -> Path:
    """``(slide_id, coords (n, 2), scores (n,))`` per slide -> a parquet table (atomically), after the rows of
    ``previous`` (a table of :func:`scores_schema`) whose slides are not among ``rows``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "slide_id": pa.array([slide for slide, coords, _ in rows for _ in range(len(coords))]),
            "x": pa.array(np.concatenate([c[:, 0] for _, c, _ in rows]).astype(np.int64)),
            "y": pa.array(np.concatenate([c[:, 1] for _, c, _ in rows]).astype(np.int64)),
            "score": pa.array(np.concatenate([s for _, _, s in rows]).astype(np.float32)),
        },
        schema=scores_schema(),
    )
    if previous is not None:
        redone = pa.array([slide for slide, _, _ in rows], pa.string())
        kept = previous.filter(pc.invert(pc.is_in(previous["slide_id"], value_set=redone)))
        table = pa.concat_tables([kept, table])
    with atomic_file(path, "wb") as handle:
        pq.write_table(table, handle)
    return path
