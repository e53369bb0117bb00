"""``giga-ssl heatmap``: per-tile scores of a saved linear probe, drawn over each slide and saved as a table.

    giga-ssl evaluate --embeddings emb --labels labels.csv --save-probe probe
    giga-ssl heatmap --model runs/ssl/final --features out --probe probe --out heatmaps --slides-dir slides/

Writes ``OUT/<slide_id>.png`` (the scores as coloured tiles over the slide's thumbnail when its file is in
``--slides-dir``, else on the bare tile grid, with a colour bar naming the class), ``OUT/tile_scores.parquet``
(``slide_id``, ``x``, ``y``: the tile's level-0 top-left corner, ``score``) and, with ``--geojson``,
``OUT/<slide_id>.geojson`` for QuPath (:mod:`giga_ssl_hf.inference.heatmap_geojson`). Methods: see
:mod:`giga_ssl_hf.inference.own_tiles` (the default), :mod:`giga_ssl_hf.inference.tile_scores`,
:mod:`giga_ssl_hf.inference.input_attributions`; hybrid probes: :mod:`giga_ssl_hf.inference.hybrid_scores`; drawing: :mod:`giga_ssl_hf.inference.heatmap_plot`. The settings are
:class:`HeatmapSettings`, from which the command line is generated; :func:`write_heatmaps` does the work.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from giga_ssl_hf.contracts import NO_AUGMENTATION, TILE_SCORES_FILENAME
from giga_ssl_hf.contracts.extraction_folder import EXHAUSTIVE
from giga_ssl_hf.inference.embed import FEATURES_HELP, MODEL_HELP
from giga_ssl_hf.inference.embed_folder import load_model
from giga_ssl_hf.inference.heatmap_plot import (
    render_tile_scores,
    save_figure,
    score_label,
    scores_schema,
    write_scores_table,
)
from giga_ssl_hf.inference.hybrid_scores import HybridProbe, is_hybrid
from giga_ssl_hf.runtime import resolve_device
from giga_ssl_hf.settings import SettingsParser, option, run_main

if TYPE_CHECKING:
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe

logger = logging.getLogger(__name__)

# Heavy libraries (torch, datasets, sklearn, matplotlib) are imported where used: `--help` stays fast.


@dataclass
class HeatmapSettings:
    """giga-ssl heatmap's settings."""

    model: str | None = option(None, MODEL_HELP, required=True)
    features: str | None = option(None, FEATURES_HELP, required=True)
    probe: Path | None = option(None, "Saved probe folder (evaluate --save-probe).", required=True)
    out: Path | None = option(None, "Output folder.", required=True)
    slides_dir: Path | None = option(None, "Folder of the slide files (file stem = slide_id).")
    slide_ids: tuple[str, ...] | None = option(None, "Slides to map (default: all).")
    method: Literal["tiles", "embedding", "integrated-gradients", "occlusion"] = option(
        "tiles", "How tiles are scored (see below)."
    )
    slide_embedding: Literal["views", "one-pass"] = option(
        "views",
        "What the scores of tiles, embedding and integrated-gradients add up to: the slide embedding the probe "
        "scores (the views recorded in the probe: tile_sampling, n_views, n_tiles, seed) or one pass of all the "
        "tiles.",
    )
    ig_steps: int = option(32, "Integrated gradients: points on the path from the baseline.")
    class_name: str | None = option(
        None, "Class to score (default: the probe's last class).", flag="--class", metavar="CLASS_NAME"
    )
    occlusion_radius: int = option(1, "Cells removed around a tile.")
    occlusion_stride: int = option(1, "Occlude blocks of this many cells (fewer passes).")
    max_tiles_per_pass: int = option(20000, "Tiles per forward pass (larger slides: chunks).")
    thumbnail_size: int = option(1024, "Longer side of the PNGs in px.")
    geojson: bool = option(
        False, "Also write OUT/<slide_id>.geojson (tile squares with their score) for QuPath."
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    trust_remote_code: bool = option(False, "Load Hub models with their own code.")
    allow_model_mismatch: bool = option(
        False, "Use a probe fit on embeddings of other weights (or that records none) with this model."
    )
    overwrite: bool = option(
        False, "Replace the heatmaps of these slides in --out (the other slides' PNGs and score rows stay)."
    )

    def __post_init__(self):
        self.probe, self.out = Path(self.probe), Path(self.out)
        if self.max_tiles_per_pass < 1 or self.thumbnail_size < 64:
            raise ValueError("--max-tiles-per-pass must be positive and --thumbnail-size at least 64")
        if self.occlusion_radius < 0 or self.occlusion_stride < 1:
            raise ValueError("--occlusion-radius must be >= 0 and --occlusion-stride >= 1")
        if self.ig_steps < 1:
            raise ValueError("--ig-steps must be positive")
        if self.slides_dir is not None and not Path(self.slides_dir).is_dir():
            raise ValueError(f"--slides-dir {self.slides_dir}: no such folder")


DESCRIPTION = """Per-tile scores of a saved linear probe (giga-ssl evaluate --save-probe) on each slide:
OUT/<slide_id>.png over the slide thumbnail (or the bare tile grid) and OUT/tile_scores.parquet
(slide_id, x, y, score)."""

EPILOG = """methods:
  tiles      each tile's own embedding (the tile through the encoder alone), plus an equal share of
             what the slide embedding's context adds, through the probe: the probe's intercept plus
             the mean of the slide's tile scores is its log-odds of the class (--slide-embedding: of
             the embedding the probe scores, or of one pass of all tiles); 0 is neutral
  embedding  the same additivity from the encoder's output sites, each shared by the tiles in its
             window (only the tiles that the views drew get a share: blurred, partial maps)
  integrated-gradients
             integrated gradients of the slide's log-odds w.r.t. each tile's feature vector, from a
             baseline where every tile is the slide's mean tile: the baseline's log-odds plus the mean
             of the tile scores is the slide's (up to the path's quadrature error, logged)
  occlusion  drop of the slide's log-odds when the tiles within --occlusion-radius cells are removed
             (model-agnostic; one forward pass per tile, or per block with --occlusion-stride)

A probe of hybrid embeddings (embed --concat-mean-pool) is decomposed by tiles and embedding: the
encoder half as above plus the mean-pool half's weights on each tile's own feature.

examples:
  giga-ssl heatmap --model runs/ssl/final --features out --probe probe --out heatmaps --slides-dir slides
  giga-ssl heatmap --model runs/ssl/final --features out --probe probe --out occ --method occlusion \\
      --slide-ids slide_001 slide_007
  giga-ssl heatmap --model runs/ssl/final --features out --probe probe --out heatmaps --geojson

QuPath: open the slide, then File > Import objects from file (or drag OUT/<slide_id>.geojson onto it):
one detection per tile, its score under Measurements (Measure > Show measurement maps colours it)."""


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


def check_probe_model(probe: SavedProbe, model: str, allow_mismatch: bool) -> None:
    """The probe must have been fit on embeddings of this model: the same weights (sha256 of the weight files,
    recorded by embed and carried by evaluate --save-probe), wherever the model now lies. Read from the files,
    before any weight is loaded, so that a mismatch is refused at once."""
    from giga_ssl_hf.contracts.slide_embeddings import pooled_top_site_fraction
    from giga_ssl_hf.weight_files import model_folder, weights_sha256

    folder = model_folder(model)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--model {model}: no config.json there (not a saved model folder)")
    hidden_dim = json.loads((folder / "config.json").read_text()).get("hidden_dim")
    pooled_top_site_fraction(probe.embeddings_metadata, "heatmap")  # several fractions are refused
    if is_hybrid(probe):
        HybridProbe.split(probe, hidden_dim)  # refuses other dimensions, or no recorded mean-pool statistics
    elif probe.embedding_dim != hidden_dim:
        raise ValueError(
            f"the probe takes {probe.embedding_dim}-d embeddings but the model's are {hidden_dim}-d"
        )
    if allow_mismatch:
        return
    recorded, given = probe.embedding_model_sha256, weights_sha256(folder)
    if recorded is None:
        # Embeddings of a model built in memory, or not written by giga-ssl embed, record no hash. Matching
        # by path instead would let a model retrained in place meet its stale probe.
        raise ValueError(
            "the probe records no hash of its model's weights (its embeddings were not made by giga-ssl embed "
            "from a saved model): embed with --model and re-save it with giga-ssl evaluate --save-probe, or "
            "pass --allow-model-mismatch"
        )
    if recorded != given:
        raise ValueError(
            f"the probe was fit on embeddings of other weights (sha256 {recorded[:12]}, model "
            f"{probe.embedding_model!r}) than --model {model}'s ({(given or 'none')[:12]}): embed with this "
            "model and re-save the probe, or pass --allow-model-mismatch if they are the same model"
        )


def previous_scores(out: Path, overwrite: bool):
    """With ``overwrite``, the score table already in ``out`` (its rows of the slides not redone are kept),
    read before any work so that an unreadable one is refused at once; else None."""
    import pyarrow.parquet as pq

    path = out / TILE_SCORES_FILENAME
    if not overwrite or not path.exists():
        return None
    try:
        return pq.read_table(path).select(scores_schema().names).cast(scores_schema())
    except Exception as error:  # pyarrow raises many types for a foreign or broken file
        raise ValueError(f"{path}: unreadable score table ({error}): move it away, then run again") from error


def _exhaustive_features(settings: HeatmapSettings):
    """The exhaustive tile-feature Dataset (its rows in order), its slide ids, and the slides to map."""
    from giga_ssl_hf.contracts.tile_features import (
        load_tile_dataset,
        resolve_tile_dataset_dir,
        without_indices_mapping,
    )

    features_dir = resolve_tile_dataset_dir(settings.features, EXHAUSTIVE)
    dataset = without_indices_mapping(load_tile_dataset(features_dir))
    if (np.asarray(dataset.data.column("aug_id").to_numpy()) != NO_AUGMENTATION).any():
        raise ValueError(
            f"{features_dir}: heatmaps need the exhaustive tile features (giga-ssl extract's exhaustive/)"
        )
    slide_ids = [str(s) for s in dataset.data.column("slide_id").to_pylist()]
    wanted = list(settings.slide_ids or slide_ids)
    unknown = sorted(set(wanted) - set(slide_ids))
    if unknown:
        raise ValueError(f"--slide-ids not in {features_dir}: {unknown}")
    return dataset, slide_ids, wanted


def _refuse_existing(out: Path, wanted: list[str], overwrite: bool, geojson: bool) -> None:
    suffixes = (".png", ".geojson") if geojson else (".png",)
    targets = [out / TILE_SCORES_FILENAME] + [
        out / f"{slide}{suffix}" for slide in wanted for suffix in suffixes
    ]
    if not overwrite and (existing := [p for p in targets if p.exists()]):
        raise FileExistsError(
            f"{existing[0]} exists (and {len(existing) - 1} more): pass --overwrite to replace"
        )


def recorded_views(probe: SavedProbe) -> dict:
    """How the embeddings ``probe`` was fit on were made (``giga-ssl embed``'s settings, from its metadata)."""
    recorded = (probe.info.get("embeddings") or {}).get("metadata", {})
    if missing := [
        key for key in ("tile_sampling", "n_views", "n_tiles", "seed") if recorded.get(key) is None
    ]:
        raise ValueError(
            f"the probe does not record how its embeddings were made ({', '.join(missing)}): pass "
            "--slide-embedding one-pass"
        )
    return recorded


def probe_views(probe: SavedProbe, slide_id: str, coords: np.ndarray, patch: int):
    """The views of one slide's embedding as the probe's embeddings were made (see :func:`recorded_views`)."""
    from giga_ssl_hf.inference.views import slide_views

    recorded = recorded_views(probe)
    return slide_views(
        len(coords), np.asarray(coords) // patch, slide_id, recorded["tile_sampling"], int(recorded["n_views"]),
        int(recorded["n_tiles"]), int(recorded["seed"]),
    )  # fmt: skip


def score_slide(
    settings: HeatmapSettings, slide_id: str, model, features, coords, patch, probe, class_name
) -> np.ndarray:
    from giga_ssl_hf.inference.own_tiles import own_tile_scores
    from giga_ssl_hf.inference.tile_scores import embedding_scores, occlusion_scores

    if settings.method == "occlusion":
        return occlusion_scores(
            model, features, coords, patch, probe, class_name, settings.occlusion_radius,
            settings.occlusion_stride, settings.max_tiles_per_pass,
        )  # fmt: skip
    views = probe_views(probe, slide_id, coords, patch) if settings.slide_embedding == "views" else None
    if settings.method == "integrated-gradients":
        from giga_ssl_hf.inference.input_attributions import integrated_gradient_scores

        return integrated_gradient_scores(
            model, np.asarray(features), coords, patch, probe, class_name, views, settings.ig_steps
        )[0]
    hybrid = HybridProbe.split(probe, model.config.hidden_dim) if is_hybrid(probe) else None
    scorer = own_tile_scores if settings.method == "tiles" else embedding_scores
    scores = scorer(
        model, features, coords, patch, hybrid.encoder_half if hybrid else probe, class_name,
        settings.max_tiles_per_pass, views,
    )  # fmt: skip
    return scores if hybrid is None else scores + hybrid.mean_pool_scores(features, class_name)


def _draw(settings: HeatmapSettings, slide_id, slide_file, coords, scores, patch, class_name) -> None:
    """Draw one slide's scores to ``OUT/<slide_id>.png`` (over its thumbnail when its file opens)."""
    slide = _open_for_thumbnail(slide_file, slide_id)
    try:
        figure = render_tile_scores(
            coords, scores, patch, f"{slide_id} ({settings.method})", score_label(settings.method, class_name),
            slide, settings.thumbnail_size,
        )  # fmt: skip
    finally:
        if slide is not None:
            slide.close()
    path = save_figure(figure, settings.out / f"{slide_id}.png")
    print(f"{slide_id}: {len(scores)} tiles, scores {np.nanmin(scores):.3g} .. {np.nanmax(scores):.3g}, "
          f"{'over the slide' if slide is not None else 'bare tile grid'} -> {path}")  # fmt: skip


def write_heatmaps(settings: HeatmapSettings) -> int:
    """Map the selected slides; returns the number of slides that failed."""
    from giga_ssl_hf.contracts.slide_embeddings import pooled_top_site_fraction
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe

    probe = SavedProbe.load(settings.probe)
    class_name = settings.class_name or probe.default_class
    probe.class_index(class_name)
    check_probe_model(probe, settings.model, settings.allow_model_mismatch)  # before datasets and torch load
    from giga_ssl_hf.contracts.tile_features import TileArrays

    dataset, slide_ids, wanted = _exhaustive_features(settings)
    _refuse_existing(settings.out, wanted, settings.overwrite, settings.geojson)
    previous = previous_scores(settings.out, settings.overwrite)
    if settings.method != "occlusion" and settings.slide_embedding == "views":
        recorded_views(probe)
    if is_hybrid(probe) and settings.method not in ("tiles", "embedding"):
        raise ValueError(
            "a probe of hybrid embeddings (--concat-mean-pool) is decomposed by --method tiles or embedding only"
        )  # a usage error before any work
    slide_files = find_slide_files(settings.slides_dir)
    model = load_model(settings.model, resolve_device(settings.device), settings.trust_remote_code)
    # The probe's embeddings may have been pooled at a fraction of their own: the maps' slides are pooled so too.
    fraction = pooled_top_site_fraction(probe.embeddings_metadata, "heatmap")
    if fraction is not None:
        model.config.top_site_fraction = fraction
    pooling = getattr(model.config, "slide_pooling", "mean")
    if settings.method in ("tiles", "embedding") and pooling != "mean":  # once, not once per slide
        raise ValueError(
            f"--method {settings.method} splits a mean-pooled slide embedding into tile shares; this model's slide "
            f"pooling is {pooling!r}: use --method occlusion or integrated-gradients"
        )
    settings.out.mkdir(parents=True, exist_ok=True)
    arrays = TileArrays.from_dataset(dataset)
    patch_sizes = np.asarray(dataset.data.column("patch_size_level0").to_numpy())
    rows, failed = [], 0
    for slide_id in wanted:
        index = slide_ids.index(slide_id)
        features, coords = arrays.row(index)
        patch = int(patch_sizes[index])
        try:
            scores = score_slide(settings, slide_id, model, features, coords, patch, probe, class_name)
        except (ValueError, RuntimeError) as error:
            print(f"giga-ssl heatmap: {slide_id}: failed: {error}", file=sys.stderr)
            failed += 1
            continue
        _draw(settings, slide_id, slide_files.get(slide_id), coords, scores, patch, class_name)
        if settings.geojson:
            from giga_ssl_hf.inference.heatmap_geojson import write_tile_scores_geojson

            path = settings.out / f"{slide_id}.geojson"
            write_tile_scores_geojson(path, np.asarray(coords), scores, patch, class_name, settings.method)
        rows.append((slide_id, np.asarray(coords), scores))
    if rows:
        table = write_scores_table(settings.out / TILE_SCORES_FILENAME, rows, previous)
        print(f"wrote {sum(len(r[1]) for r in rows)} tile scores of {len(rows)} slide(s) to {table}")
    return failed


def build_parser() -> SettingsParser:
    return SettingsParser(HeatmapSettings, prog="giga-ssl heatmap", description=DESCRIPTION, epilog=EPILOG)


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), lambda settings: 1 if write_heatmaps(settings) else 0, argv)


if __name__ == "__main__":
    sys.exit(main())
