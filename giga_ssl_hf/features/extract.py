"""`giga-ssl extract`: whole-slide images -> tile-feature Datasets (exhaustive and shared-augmentation passes).

The command line, generated from :class:`~giga_ssl_hf.features.extraction_settings.ExtractionRun` (which
slides, where to, how) and :class:`~giga_ssl_hf.features.extraction_settings.ExtractionConfig` (what determines
the features), calls :func:`~giga_ssl_hf.features.extraction.extract_slides` (the output folder it writes is
described there) and prints a summary.

Tiles come from the tissue mask (default), from TRIDENT / CLAM patch-coordinate h5 files (--coords-from) or
from GeoJSON tissue polygons (--tissue-geojson); see :mod:`giga_ssl_hf.wsi.tile_sources`. The datasets'
metadata records the tile encoder (``tile_encoder``: preset or id, revision or weights sha256, dim, input
size, µm/px, normalisation), which trained models carry and check.
"""

from __future__ import annotations

import sys

from giga_ssl_hf.features.assemble import assemble_datasets
from giga_ssl_hf.features.extraction import ExtractionSummary, extract_slides, run_extraction
from giga_ssl_hf.features.extraction_settings import ExtractionConfig, ExtractionRun
from giga_ssl_hf.settings import SettingsParser, fail, run_main

# torch, timm, datasets and OpenSlide are imported where they are used, so that `giga-ssl extract --help`
# prints at once.

# The library's extraction API, importable from the command's module as before the split.
__all__ = [
    "ExtractionConfig",
    "ExtractionRun",
    "ExtractionSummary",
    "extract_slides",
    "format_summary",
    "main",
]

PROG = "giga-ssl extract"

EPILOG = """\
examples:
  giga-ssl extract slides/ --out features/                     # both passes, paper defaults
  giga-ssl extract a.svs b.ndpi --out feats --no-aug --thumbnails
  giga-ssl extract slides/ --out feats --encoder uni                # a preset: see `giga-ssl encoders`
  giga-ssl extract slides/ --out feats --encoder hf-hub:bioptimus/H-optimus-0 --tile-size 224 --target-mpp 0.5
  giga-ssl extract slides/ --out feats --coords-from trident_job/20x_256px_0px_overlap/patches --no-aug
  giga-ssl extract slides/ --out feats --tissue-geojson qupath_annotations/ --thumbnails
  giga-ssl extract slides/ --out feats --encoder resnet18-layer3 --weights moco_tcga.pth.tar
  giga-ssl extract scans/ --out feats --mpp 0.5                # for scans that record no pixel size
  giga-ssl extract new_slides/ --out feats2 --config feats/extract_config.json   # an earlier run's settings

output (--out DIR): DIR/exhaustive/ and DIR/augmented/ (datasets.load_from_disk), DIR/manifest.jsonl (one
line per slide: slide_id, path, status ok|failed|empty, n_tiles, seconds, error), DIR/thumbnails/*.png.
Rerunning the same command resumes: finished slides are skipped, failed ones retried. The exit status
is 1 when a slide failed (see the summary and the manifest), 0 otherwise; 130 when interrupted (Ctrl-C).
Runs may share DIR: one whose settings differ from a live run's is refused; slides another live run holds
are waited for (and taken over if that run dies), so a run ends only with all its slides.
"""


def build_parser() -> SettingsParser:
    return SettingsParser(
        ExtractionRun,
        ExtractionConfig,
        config_file=True,
        prog=PROG,
        description="Tile whole-slide images at a target resolution and encode the tiles into tile-feature\n"
        "Datasets: an exhaustive pass (every tissue tile once, for embedding) and a shared-augmentation\n"
        "pass (n_aug views per slide, one random augmentation per view, for SSL training).",
        epilog=EPILOG,
    )


def run(options: ExtractionRun, config: ExtractionConfig) -> int:
    """Extract (or, with ``--assemble``, only assemble) and print the summary; 1 when a slide failed."""
    from giga_ssl_hf.features.store import DiskFullError

    if options.assemble is not None:
        built = assemble_datasets(options.assemble)
        print(f"assembled {', '.join(str(p) for p in built.values()) or 'nothing (no extracted slide)'}")
        return 0
    try:
        summary = run_extraction(options, config)
    except DiskFullError as error:
        return fail(PROG, f"{error.strerror}; free space and rerun to resume", 1)
    print(format_summary(summary))
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run_main(build_parser(), run, argv)
    except KeyboardInterrupt:
        # Every slide is committed atomically: what was finished is kept, and the next run removes the
        # interrupted slide's temporaries and resumes.
        return fail(PROG, "interrupted; rerun the same command to resume (finished slides are kept)", 130)


def format_summary(summary: ExtractionSummary) -> str:
    encoded = ", ".join(f"{count} {which}" for which, count in summary.n_encoded.items())
    lines = [
        f"{len(summary.ok)} ok, {len(summary.empty)} empty (no tissue tile), {len(summary.failed)} failed, "
        f"{len(summary.skipped)} already done; {summary.n_tiles} tissue tiles, {summary.n_views} augmented "
        f"views; {sum(summary.n_encoded.values())} tile images encoded ({encoded or 'none'}) in "
        f"{summary.seconds:.1f} s ({summary.tiles_per_second:.1f} tiles/s) -> {summary.out_dir}"
    ]
    lines += [f"  FAILED {slide_id}: {error}" for slide_id, error in summary.failed]
    if summary.busy:
        lines.append(
            f"  waited for {len(summary.busy)} slide(s) another process held: {', '.join(summary.busy)}"
        )
    if summary.waiting_for:
        share, count = summary.shard
        lines.append(
            f"share {share}/{count} done; the last share to finish assembles the Datasets (not finished: "
            f"{', '.join(f'{i}/{count}' for i in summary.waiting_for)}; or: giga-ssl extract --assemble "
            f"{summary.out_dir})"
        )
    if summary.unsupported_files:
        names = ", ".join(p.name for p in summary.unsupported_files)
        lines.append(f"  skipped {len(summary.unsupported_files)} file(s) of unknown type: {names}")
    return "\n".join(lines)


if __name__ == "__main__":  # `accelerate launch` / `torchrun` ... -m giga_ssl_hf.features.extract
    from giga_ssl_hf.cli import main as giga_ssl

    sys.exit(giga_ssl(["extract", *sys.argv[1:]]))  # starts as `giga-ssl extract` does (logging, OpenMP)
