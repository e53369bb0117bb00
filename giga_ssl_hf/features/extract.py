"""`giga-ssl extract`: whole-slide images -> tile-feature Datasets (exhaustive and shared-augmentation passes).

Output folder (a contract later stages rely on)::

    OUT/exhaustive/       every kept tile once per slide (aug_id = -1); datasets.load_from_disk
    OUT/augmented/        n_aug rows per slide of n_tiles_per_aug sampled tiles, one augmentation per row
    OUT/manifest.jsonl    one JSON object per slide: slide_id, path, status (ok|failed|empty), n_tiles,
                          seconds, error (+ patch_size_level0, mpp, level, ...)
    OUT/parts/            committed per-slide results (what makes reruns resume)
    OUT/thumbnails/       with --thumbnails: <slide_id>.png, tissue outline (green) and kept tiles (blue)

Tiles come from the tissue mask (default), from TRIDENT / CLAM patch-coordinate h5 files (--coords-from) or
from GeoJSON tissue polygons (--tissue-geojson); see :mod:`giga_ssl_hf.wsi.tile_sources`. The datasets'
metadata records the tile encoder (``tile_encoder``: preset or id, revision or weights sha256, dim, input
size, µm/px, normalisation), which trained models carry and check.
    OUT/extract_config.json  the settings that determine the features (a rerun must use the same)
    OUT/locks/            a lock per slide being processed (several processes can share OUT)
    OUT/shares/           with --shard or a launcher: I-of-N.json once share I of N is done

Several processes (``accelerate launch``, ``torchrun``, ``--shard I/N``) split the slides between them and the
last to finish assembles the Datasets; :mod:`giga_ssl_hf.features.sharding` tells how.

Each slide is read once: every kept tile region is decoded at most once, then encoded as-is for the
exhaustive pass and through the augmentations of the views that sampled it. Augmentation draws are seeded
from ``--seed`` and the slide id, so results do not depend on the order slides are processed in, and a
run killed at any point then rerun gives the same Datasets as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import math
import socket
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import giga_ssl_hf
from giga_ssl_hf.contracts import TILE_DECODERS
from giga_ssl_hf.features import sharding
from giga_ssl_hf.features.cohort import SlideEntry, collect_slides
from giga_ssl_hf.files import (
    dumps_strict,
    remove_stale_temporaries,
    write_jsonl,
    write_text_atomic,
)

if TYPE_CHECKING:
    import torch
    from tqdm.auto import tqdm

    from giga_ssl_hf.features.encoders import EncoderRunner
    from giga_ssl_hf.features.store import PartStore
    from giga_ssl_hf.wsi.tiling import ReadBlock, TileGrid

# torch, timm, datasets and OpenSlide are imported where they are used, so that `giga-ssl extract --help`
# prints at once.

logger = logging.getLogger(__name__)

EXHAUSTIVE, AUGMENTED = "exhaustive", "augmented"
CONFIG_FILENAME = "extract_config.json"
# The tile encoder's provenance record, saved by every process that builds the encoder, so that whichever
# process assembles the Datasets (the last share, --assemble) records it even without building it.
ENCODER_FILENAME = "tile_encoder.json"


class DiskFullError(OSError):
    """The output's file system ran out of space; what was being written has been removed."""


@dataclass
class ExtractionConfig:
    """The settings that determine the extracted features (a rerun into the same folder must match)."""

    encoder: str = "resnet18-layer3"
    pretrained: bool = True
    weights: str | None = None
    tile_size: int = 224
    target_mpp: float = 1.0
    min_tissue: float = 0.5
    mask_mpp: float = 8.0
    saturation_threshold: float | None = None
    min_saturation: float = 0.05
    n_aug: int = 50
    n_tiles_per_aug: int = 256
    aug_sampling: str = "random"  # random (the paper), window (contiguous tiles) or all (every tissue tile)
    seed: int = 0
    dtype: str = "float16"
    precision: str = "auto"
    coords_from: str | None = None  # folder of TRIDENT / CLAM patch-coordinate h5 files (instead of the mask)
    tissue_geojson: str | None = (
        None  # folder of per-slide GeoJSON tissue polygons (instead of the Otsu mask)
    )


@dataclass
class ExtractionSummary:
    """What :func:`extract_slides` did; ``failed`` lists ``(slide_id, error)``."""

    out_dir: Path
    ok: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # being extracted by another live process: left to it
    share: tuple[int, int] | None = None  # (I, N) when this process ran share I of N
    waiting_for: list[int] = field(default_factory=list)  # shares not done yet: the last one assembles
    unsupported_files: list[Path] = field(default_factory=list)  # in the input folders, not slide formats
    n_tiles: int = 0  # tissue tiles of the slides done by this run
    n_views: int = 0  # augmented views written by this run
    n_encoded: dict[str, int] = field(default_factory=dict)  # images encoded per pass
    seconds: float = 0.0
    datasets: dict[str, Path] = field(default_factory=dict)

    @property
    def tiles_per_second(self) -> float:
        """Encoded images per second, both passes together."""
        return sum(self.n_encoded.values()) / self.seconds if self.seconds > 0 else 0.0


class PassProgress:
    """A progress bar per pass, counting encoded images (the augmented pass: one per (tile, view) pair)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.encoded: dict[str, int] = {}
        self.bars: dict[str, tqdm] = {}

    def update(self, which: str, count: int) -> None:
        from tqdm.auto import tqdm

        if which not in self.bars:
            # A slide redone for one pass also recomputes the pass it keeps: bars appear as passes run.
            self.bars[which] = tqdm(
                desc=f"{which} tiles", unit="tile", disable=not self.enabled, position=len(self.bars) + 1
            )
            self.encoded[which] = 0
        self.encoded[which] += count
        self.bars[which].update(count)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


class _Batcher:
    """Accumulates images until ``batch_size``, encodes them and stores features at their target rows."""

    def __init__(self, runner: EncoderRunner, out: np.ndarray, batch_size: int):
        self.runner, self.out, self.batch_size = runner, out, batch_size
        self.images: list[torch.Tensor] = []
        self.targets: list[np.ndarray] = []
        self.count = 0

    def add(self, images: torch.Tensor, targets: np.ndarray) -> None:
        self.images.append(images)
        self.targets.append(targets)
        self.count += len(targets)
        if self.count >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        import torch

        if not self.count:
            return
        features = self.runner(torch.cat(self.images))
        self.out[np.concatenate(self.targets)] = features.numpy()
        self.images, self.targets, self.count = [], [], 0


def _subset(grid: TileGrid, indices: np.ndarray) -> TileGrid:
    return dataclasses.replace(grid, coords=grid.coords[indices], tissue=grid.tissue[indices])


AUG_SAMPLINGS = ("random", "window", "all")


def augmented_tile_indices(
    grid: TileGrid, config: ExtractionConfig, generator: torch.Generator
) -> np.ndarray:
    """Tiles of each shared augmentation ``(n_aug, k)``: ``n_tiles_per_aug`` drawn with replacement (``random``,
    the paper's), the ``n_tiles_per_aug`` tiles nearest a random tile (``window``: contiguous, for window
    views; ``k`` = min(n_tiles_per_aug, n)), or every tissue tile (``all``: ``k = n``)."""
    import torch

    from giga_ssl_hf.features.windows import window_indices

    n = len(grid)
    if config.aug_sampling == "random":
        return torch.randint(n, (config.n_aug, config.n_tiles_per_aug), generator=generator).numpy()
    if config.aug_sampling == "all":
        return np.broadcast_to(np.arange(n), (config.n_aug, n))
    if config.aug_sampling == "window":
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        centres = rng.integers(0, n, size=config.n_aug)
        return window_indices(
            grid.coords // grid.patch_size_level0, centres, min(config.n_tiles_per_aug, n), rng
        )
    raise ValueError(f"aug_sampling must be one of {AUG_SAMPLINGS}, got {config.aug_sampling!r}")


def encode_slide(
    slide,
    grid: TileGrid,
    runner: EncoderRunner,
    config: ExtractionConfig,
    slide_id: str,
    *,
    passes: Sequence[str] = (EXHAUSTIVE, AUGMENTED),
    batch_size: int = 64,
    num_readers: int = 1,
    progress: PassProgress | None = None,
    read_block: ReadBlock | None = None,
) -> dict[str, np.ndarray]:
    """Features of a slide's tiles for ``passes``, reading each tile region once.

    Returns ``exhaustive_features (n, D)``, ``exhaustive_coords (n, 2)``, ``augmented_features
    (n_aug, k, D)``, ``augmented_coords (n_aug, k, 2)`` (those of the passes asked for), in ``config.dtype``.
    """
    import torch

    from giga_ssl_hf.features.augment import SharedAugmentation
    from giga_ssl_hf.runtime import slide_seed
    from giga_ssl_hf.wsi import iter_tile_blocks

    n, dim = len(grid), runner.feature_dim
    result: dict[str, np.ndarray] = {}
    exhaustive = EXHAUSTIVE in passes
    augmented = AUGMENTED in passes
    batchers = []
    if exhaustive:
        exhaustive_features = np.empty((n, dim), dtype=np.float32)
        exhaustive_batcher = _Batcher(runner, exhaustive_features, batch_size)
        batchers.append(exhaustive_batcher)
    if augmented:
        augmentation = SharedAugmentation(grid.tile_size)
        generator = torch.Generator().manual_seed(slide_seed(config.seed, slide_id))
        sampled = augmented_tile_indices(grid, config, generator)
        params = [augmentation.sample(generator) for _ in range(config.n_aug)]
        # A tile drawn twice in a view gets the same augmentation, hence the same features: encode each
        # (tile, view) pair once. Pairs sorted by tile, so a block's pairs are one contiguous range.
        views = np.broadcast_to(np.arange(config.n_aug)[:, None], sampled.shape)
        pairs, inverse = np.unique(sampled * config.n_aug + views, return_inverse=True)
        pair_tile, pair_view = pairs // config.n_aug, pairs % config.n_aug
        pair_features = np.empty((len(pairs), dim), dtype=np.float32)
        augmented_batcher = _Batcher(runner, pair_features, batch_size)
        batchers.append(augmented_batcher)
    # An augmentation-only run reads just the tiles some view sampled.
    read_indices = np.arange(n) if exhaustive else np.unique(pair_tile)
    for block_positions, tiles in iter_tile_blocks(
        slide, _subset(grid, read_indices), num_workers=num_readers, read_block=read_block
    ):
        indices = read_indices[block_positions]
        if exhaustive:
            exhaustive_batcher.add(tiles, indices)
        if augmented:
            lo, hi = np.searchsorted(pair_tile, [indices[0], indices[-1] + 1])
            position_of = {int(tile): i for i, tile in enumerate(indices)}
            for start in range(lo, hi, batch_size):
                chunk = np.arange(start, min(hi, start + batch_size))
                for view in np.unique(pair_view[chunk]):
                    selected = chunk[pair_view[chunk] == view]
                    rows = [position_of[int(tile)] for tile in pair_tile[selected]]
                    augmented_batcher.add(augmentation.apply(tiles[rows], params[int(view)]), selected)
        if progress is not None:
            if exhaustive:
                progress.update(EXHAUSTIVE, len(indices))
            if augmented:
                progress.update(AUGMENTED, int(hi - lo))
    for batcher in batchers:
        batcher.flush()
    if exhaustive:
        result["exhaustive_features"] = exhaustive_features.astype(config.dtype)
        result["exhaustive_coords"] = grid.coords.astype(np.int64)
    if augmented:
        features = pair_features[inverse.reshape(-1)].reshape(*sampled.shape, dim)
        result["augmented_features"] = features.astype(config.dtype)
        result["augmented_coords"] = grid.coords[sampled].astype(np.int64)
    return result


def _process_slide(
    path: Path, slide_id: str, runner, config, options: dict, progress
) -> tuple[dict, dict | None]:
    """Record (manifest fields) and arrays of one slide; exceptions are the caller's to record."""
    from giga_ssl_hf.wsi import open_slide, raw_tiles, save_thumbnail
    from giga_ssl_hf.wsi.tile_sources import select_tiles

    with open_slide(path, options["mpp"], override_mpp=options["override_mpp"]) as slide:
        mask, grid, source = select_tiles(
            slide,
            slide_id,
            tile_size=config.tile_size,
            target_mpp=config.target_mpp,
            min_tissue=config.min_tissue,
            mask_mpp=config.mask_mpp,
            saturation_threshold=config.saturation_threshold,
            min_saturation=config.min_saturation,
            coords_from=config.coords_from,
            tissue_geojson=config.tissue_geojson,
        )
        if options["thumbnails"]:
            save_thumbnail(options["out_dir"] / "thumbnails" / f"{slide_id}.png", slide, mask, grid)
        record = {
            "n_tiles": len(grid),
            "n_candidates": grid.n_candidates,
            "patch_size_level0": grid.patch_size_level0,
            "level": grid.level,
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "magnification": None if math.isnan(slide.magnification) else slide.magnification,
            "tissue_fraction": None if mask is None else mask.tissue_fraction,
            **source,
        }
        if len(grid) == 0:
            # "empty" is a slide without tissue; a slide that cannot be tiled at all is an error.
            record.update(status="empty" if grid.reason is None else "failed", error=grid.reason)
            return record, None
        record["decoder"] = raw_tiles.resolve_decoder(options["decode"], slide, grid.level, runner.device)
        reader = raw_tiles.block_reader(record["decoder"], slide, grid.level, runner.device)
        try:
            arrays = encode_slide(
                slide,
                grid,
                runner,
                config,
                slide_id,
                passes=options["passes"],
                batch_size=options["batch_size"],
                num_readers=raw_tiles.reader_threads(record["decoder"], options["num_readers"]),
                progress=progress,
                read_block=reader,
            )
        finally:
            if reader is not None:
                reader.close()
    record.update(status="ok", error=None)
    return record, arrays


def _dataset_rows(store: PartStore, records: list[dict], which: str):
    from giga_ssl_hf.contracts import NO_AUGMENTATION

    for record in records:
        arrays = store.arrays(record["slide_id"])
        common = {
            "slide_id": record["slide_id"],
            "patch_size_level0": record["patch_size_level0"],
            "mpp": record["mpp"],
            "magnification": float("nan") if record["magnification"] is None else record["magnification"],
        }
        if which == EXHAUSTIVE:
            yield {
                **common,
                "aug_id": NO_AUGMENTATION,
                "features": arrays["exhaustive_features"],
                "coords": arrays["exhaustive_coords"],
            }
        else:
            for aug_id, (features, coords) in enumerate(
                zip(arrays["augmented_features"], arrays["augmented_coords"])
            ):
                yield {**common, "aug_id": aug_id, "features": features, "coords": coords}


def _settings_change(out_dir: Path, config: ExtractionConfig, store: PartStore, overwrite: bool) -> bool:
    """Whether ``out_dir``'s committed slides must be discarded because the settings changed.

    Raises when they differ from the settings of finished slides and ``overwrite`` is not set. A folder where
    no slide finished (a first run that failed early) takes the new settings.
    """
    path = out_dir / CONFIG_FILENAME
    if not path.exists():
        return False
    # A setting added since the folder was made compares as its default (None): not a change; folders from
    # before --aug-sampling drew their augmentations at random.
    existing = {"aug_sampling": "random", **json.loads(path.read_text())}
    wanted = dataclasses.asdict(config)
    changed = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
    if not changed:
        return False
    finished = [r for r in store.records() if r["status"] in ("ok", "empty")]
    if finished and not overwrite:
        detail = ", ".join(f"{k}: {existing.get(k)!r} there, {wanted.get(k)!r} now" for k in changed)
        raise ValueError(
            f"{out_dir} holds {len(finished)} slide(s) extracted with other settings ({detail}); "
            "use another --out, or --overwrite to discard them"
        )
    if finished:
        logger.warning(
            "settings changed (%s): discarding every committed slide of %s", ", ".join(changed), out_dir
        )
    return True


def _find_inputs(
    paths: Sequence[str | Path | SlideEntry], recursive: bool = False, slides_csv: str | Path | None = None
) -> tuple[list[SlideEntry], list[Path]]:
    """(slides, unsupported files of the input folders); raises when there is no slide, or on clashing ids."""
    from giga_ssl_hf.wsi.slide import SLIDE_EXTENSIONS

    unsupported: list[Path] = []
    slides = collect_slides(paths, recursive=recursive, slides_csv=slides_csv, skipped=unsupported)
    if not slides:
        where = ", ".join(str(p) for p in paths)
        listed = f" (skipped: {', '.join(p.name for p in unsupported[:10])}" + (
            f" and {len(unsupported) - 10} more)" if len(unsupported) > 10 else ")"
        )
        raise ValueError(
            f"no slides found in {where}{listed if unsupported else ''}; slide files end in "
            + " ".join(SLIDE_EXTENSIONS)
        )
    return slides, unsupported


def _finished(previous: dict | None, passes) -> bool:
    """Whether a committed record already holds ``passes`` (an empty slide holds every pass)."""
    return (
        previous is not None
        and previous["status"] in ("ok", "empty")
        and (previous["status"] == "empty" or set(passes) <= set(previous.get("passes", [])))
    )


def _plan(
    slides: list[SlideEntry], store: PartStore, passes: tuple[str, ...], redo_all: bool
) -> tuple[list[tuple[SlideEntry, tuple[str, ...]]], list[str]]:
    """(slides to do with the passes to compute for each, ids of the slides already done)."""
    todo, done = [], []
    for entry in slides:
        previous = None if redo_all else store.record(entry.slide_id)
        if _finished(previous, passes):
            done.append(entry.slide_id)
            continue
        # Redoing a slide for one pass keeps the other pass it already has (one part file per slide).
        kept = (
            set(previous.get("passes", [])) if previous is not None and previous["status"] == "ok" else set()
        )
        todo.append((entry, tuple(p for p in (EXHAUSTIVE, AUGMENTED) if p in set(passes) | kept)))
    return todo, done


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout
        ).close()
    except OSError:
        return False
    return True


def build_runner(config: ExtractionConfig, device: str) -> EncoderRunner:
    """The tile encoder of ``config`` on ``device``; unavailable weights raise a ValueError naming the fixes.

    When the Hub cannot be reached, weights are looked up in the local cache only, so that an offline
    machine fails in seconds instead of retrying downloads.
    """
    from huggingface_hub import constants

    from giga_ssl_hf.features.encoder_presets import WeightsUnavailableError
    from giga_ssl_hf.features.encoders import EncoderRunner, build_tile_encoder

    downloads = config.pretrained and config.weights is None
    offline_before = constants.HF_HUB_OFFLINE
    if downloads and not offline_before and not _hub_reachable():
        logger.info(
            "the Hub (%s) is unreachable: pretrained weights come from the local cache only",
            constants.ENDPOINT,
        )
        constants.HF_HUB_OFFLINE = True
    try:
        encoder = build_tile_encoder(config.encoder, pretrained=config.pretrained, weights=config.weights)
    except (OSError, WeightsUnavailableError) as error:
        if not downloads:
            raise
        gated = (
            " (a gated model: accept its terms on the Hub, then hf auth login)"
            if "gated" in str(error)
            else ""
        )
        raise ValueError(
            f"the pretrained weights of encoder {config.encoder!r} are not in the Hugging Face cache and cannot "
            f"be downloaded{gated}; pass --weights FILE (a local .safetensors or .pth), or --no-pretrained "
            "for random weights (tests only), or run once with network access"
        ) from error
    finally:
        constants.HF_HUB_OFFLINE = offline_before
    return EncoderRunner(encoder, device=device, precision=config.precision)


def extract_slides(
    paths: Sequence[str | Path | SlideEntry],
    out_dir: str | Path,
    config: ExtractionConfig | None = None,
    *,
    passes: Sequence[str] = (EXHAUSTIVE, AUGMENTED),
    mpp: float | None = None,
    override_mpp: bool = False,
    batch_size: int = 64,
    num_readers: int = 1,
    device: str = "auto",
    decode: str = "auto",
    thumbnails: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    recursive: bool = False,
    slides_csv: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    wait_for_shares: bool = False,
) -> ExtractionSummary:
    """Tile, encode and store ``paths`` (slide files, folders of slides, :class:`SlideEntry`) into ``out_dir``.

    Slides already committed by an earlier run (status ok or empty, with the passes asked for) are
    skipped unless ``overwrite``; failed ones are retried. A failing slide is recorded and the others go
    on. The Datasets are rebuilt at the end from every committed slide of ``out_dir``.

    Every check that can fail on the inputs (slides, settings, encoder weights) runs before anything is
    written. A full disk raises :class:`DiskFullError` after removing what was half-written; the rerun
    resumes.

    ``shard=(I, N)`` (or a launcher's ``RANK`` / ``WORLD_SIZE``) runs share I of N of the slides; the last
    share to finish builds the Datasets. ``mpp`` is the fallback pixel size; a slide's own (from
    ``slides_csv``) wins over it. ``decode`` picks the tile reader (:mod:`giga_ssl_hf.wsi.raw_tiles`).
    With ``wait_for_shares`` a share that is not the last waits for the others and returns with the
    Datasets too (for callers that go on with them, such as the pipeline under a launcher).
    """
    from tqdm.auto import tqdm

    from giga_ssl_hf.features.store import PartStore

    config = config or ExtractionConfig()
    passes = tuple(p for p in (EXHAUSTIVE, AUGMENTED) if p in passes)
    if not passes:
        raise ValueError("nothing to do: passes must include 'exhaustive' and/or 'augmented'")
    out_dir = Path(out_dir)
    slides, unsupported = _find_inputs(paths, recursive, slides_csv)
    launched = sharding.launcher_share()
    if shard is not None and launched is not None:
        raise ValueError("--shard splits the slides by itself: run it without a multi-process launcher")
    share = shard or launched
    job = slides
    if share is not None:
        # Every process computes the same split from the whole list, whatever is already done.
        owners = sharding.assign_shares(
            [e.path.stat().st_size for e in slides], [e.slide_id for e in slides], share[1]
        )
        job = [e for e, owner in zip(slides, owners) if owner == share[0]]
    store = PartStore(out_dir / "parts")
    discard = _settings_change(out_dir, config, store, overwrite)
    todo, done = _plan(job, store, passes, redo_all=discard or overwrite)
    summary = ExtractionSummary(out_dir=out_dir, skipped=done, unsupported_files=unsupported, share=share)
    if unsupported:
        logger.warning(
            "skipped %d file(s) of unknown type: %s", len(unsupported), ", ".join(p.name for p in unsupported)
        )
    if done:
        logger.info(
            "%d slide(s) already extracted in %s, skipped (--overwrite redoes them)", len(done), out_dir
        )
    runner = build_runner(config, device) if todo else None

    out_dir.mkdir(parents=True, exist_ok=True)
    locks = sharding.SlideLocks(out_dir / "locks")
    # One process at a time: another process of the job may have written the settings (and, when they
    # changed, cleared the folder) since this one looked.
    with locks.hold(".setup"):
        store.remove_temporaries()
        remove_stale_temporaries(out_dir)
        if (
            discard
            and (out_dir / CONFIG_FILENAME).exists()
            and _settings_change(out_dir, config, store, True)
        ):
            store.clear()
            (out_dir / ENCODER_FILENAME).unlink(missing_ok=True)
        if discard or not (out_dir / CONFIG_FILENAME).exists():
            with _disk_full_names(f"the settings of {out_dir}", store):
                write_text_atomic(
                    out_dir / CONFIG_FILENAME,
                    dumps_strict(dataclasses.asdict(config), indent=1, sort_keys=True),
                )
    if runner is not None:
        text = dumps_strict(_encoder_record(config, runner, out_dir), indent=1, sort_keys=True, default=str)
        path = out_dir / ENCODER_FILENAME
        if not path.is_file() or path.read_text() != text:  # reruns write nothing (a full disk stays usable)
            with _disk_full_names(f"the tile encoder record of {out_dir}", store):
                write_text_atomic(path, text)
    options = {
        "mpp": mpp,
        "override_mpp": override_mpp,
        "thumbnails": thumbnails,
        "out_dir": out_dir,
        "batch_size": batch_size,
        "num_readers": num_readers,
        "decode": decode,
    }
    start = time.perf_counter()
    locks.start()  # heartbeat of the slide locks this process will hold
    slide_bar = tqdm(todo, desc="slides", unit="slide", disable=not progress)
    pass_progress = PassProgress(enabled=progress)
    try:
        for entry, slide_passes in slide_bar:
            slide_id = entry.slide_id
            slide_bar.set_postfix_str(slide_id)
            with _disk_full_names(f"slide {slide_id} into {out_dir}", store):
                acquired = locks.acquire(slide_id)
            if not acquired:
                logger.info("%s: another process is working on it, left to it", slide_id)
                summary.busy.append(slide_id)
                continue
            try:
                if not (overwrite or discard) and _finished(store.record(slide_id), passes):
                    summary.skipped.append(slide_id)  # committed by another process since the plan was made
                    continue
                slide_options = {**options, "passes": slide_passes}
                if entry.mpp is not None:
                    slide_options["mpp"] = entry.mpp
                record = _run_slide(entry.path, slide_id, runner, config, slide_options, pass_progress, store)
            finally:
                locks.release(slide_id)
            if record["status"] == "ok":
                summary.ok.append(slide_id)
                summary.n_tiles += record["n_tiles"]
                summary.n_views += config.n_aug if AUGMENTED in slide_passes else 0
            elif record["status"] == "empty":
                summary.empty.append(slide_id)
            else:
                summary.failed.append((slide_id, record["error"]))
    finally:
        pass_progress.close()
        slide_bar.close()
        locks.close()
    summary.n_encoded = dict(pass_progress.encoded)
    summary.seconds = time.perf_counter() - start
    if share is not None:
        key = sharding.run_key([e.slide_id for e in slides], passes)
        sharding.mark_share_done(out_dir, *share, key, [e.slide_id for e in job])
        summary.waiting_for = sharding.unfinished_shares(out_dir, share[1], key)
        if summary.waiting_for and wait_for_shares:
            logger.info("share %d/%d done; waiting for shares %s", *share, summary.waiting_for)
            while summary.waiting_for:
                time.sleep(2.0)
                summary.waiting_for = sharding.unfinished_shares(out_dir, share[1], key)
        if summary.waiting_for:
            logger.info(
                "share %d/%d done; the last share to finish assembles the Datasets (still running: %s)",
                *share,
                ", ".join(f"{i}/{share[1]}" for i in summary.waiting_for),
            )
            with _disk_full_names("the manifest of " + str(out_dir), store):
                write_jsonl(out_dir / "manifest.jsonl", _manifest(store))
            return summary
    summary.datasets = assemble_datasets(out_dir, config, passes, runner)
    return summary


def assemble_datasets(
    out_dir: str | Path,
    config: ExtractionConfig | None = None,
    passes: Sequence[str] | None = None,
    runner: EncoderRunner | None = None,
) -> dict[str, Path]:
    """(Re)build the manifest and the Datasets of ``out_dir`` from every committed slide.

    ``config`` defaults to the folder's settings file, ``passes`` to every pass some slide has. One process
    assembles at a time (a lock in ``out_dir/locks``).
    """
    from giga_ssl_hf.features.store import PartStore

    out_dir = Path(out_dir)
    if config is None:
        config_path = out_dir / CONFIG_FILENAME
        if not config_path.is_file():
            raise ValueError(f"{out_dir} is not an extraction folder (no {CONFIG_FILENAME})")
        config = ExtractionConfig(**json.loads(config_path.read_text()))
    store = PartStore(out_dir / "parts")
    summary = ExtractionSummary(out_dir=out_dir)
    with sharding.SlideLocks(out_dir / "locks") as locks, locks.hold(".assemble"):
        if passes is None:
            present = {p for r in store.records() if r["status"] == "ok" for p in r.get("passes", [])}
            passes = [p for p in (EXHAUSTIVE, AUGMENTED) if p in present]
        with _disk_full_names("the manifest and Datasets of " + str(out_dir), store):
            write_jsonl(out_dir / "manifest.jsonl", _manifest(store))
            _write_datasets(store, config, passes, runner, summary)
    return summary.datasets


@contextmanager
def _disk_full_names(what: str, store: PartStore):
    """Turn a full disk while writing ``what`` into a :class:`DiskFullError`, temporaries removed."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        store.remove_temporaries()
        raise DiskFullError(error.errno, f"no space left on device while writing {what}") from error


def _run_slide(path, slide_id, runner, config, options, progress, store) -> dict:
    """Process one slide and commit its result (a failure of the slide is recorded, not raised)."""
    began = time.perf_counter()
    try:
        record, arrays = _process_slide(path, slide_id, runner, config, options, progress)
    except Exception as error:  # any failure of one slide is recorded; the job goes on
        logger.warning("%s failed: %s: %s", slide_id, type(error).__name__, error)
        record, arrays = {"status": "failed", "n_tiles": 0, "error": f"{type(error).__name__}: {error}"}, None
    record.update(slide_id=slide_id, path=str(path), seconds=round(time.perf_counter() - began, 3))
    record["passes"] = list(options["passes"]) if record["status"] == "ok" else []
    with _disk_full_names(f"slide {slide_id} into {options['out_dir']}", store):
        store.commit(record, arrays)
        write_jsonl(options["out_dir"] / "manifest.jsonl", _manifest(store))
    return record


def _write_datasets(
    store: PartStore,
    config: ExtractionConfig,
    passes,
    runner: EncoderRunner | None,
    summary: ExtractionSummary,
) -> None:
    from giga_ssl_hf.contracts import read_metadata
    from giga_ssl_hf.features.store import write_tile_dataset

    ok_records = [r for r in store.records() if r["status"] == "ok"]
    feature_dim = runner.feature_dim if runner is not None else _feature_dim(store, ok_records)
    if feature_dim is None:
        return
    encoder_record = _encoder_record(config, runner, summary.out_dir)
    for which in passes:
        usable = [r for r in ok_records if which in r.get("passes", [])]
        # Nothing encoded by any process: the encoder record of the datasets written before stands.
        record = encoder_record or read_metadata(summary.out_dir / which).get("tile_encoder")
        metadata = _metadata(config, which, feature_dim, record)
        summary.datasets[which] = write_tile_dataset(
            _dataset_rows(store, usable, which), summary.out_dir / which, feature_dim, config.dtype, metadata
        )


def _encoder_record(config: ExtractionConfig, runner: EncoderRunner | None, out_dir: Path) -> dict | None:
    """The provenance record of the tile encoder: of ``runner``, else as saved by a process that built it."""
    from giga_ssl_hf.contracts.tile_features import tile_encoder_record

    if runner is not None:
        return tile_encoder_record(runner.encoder, config.tile_size, config.target_mpp)
    path = out_dir / ENCODER_FILENAME
    return json.loads(path.read_text()) if path.is_file() else None


def _manifest(store: PartStore) -> list[dict]:
    keys = ("slide_id", "path", "status", "n_tiles", "seconds", "error")
    return [
        {**{k: r.get(k) for k in keys}, **{k: v for k, v in r.items() if k not in keys}}
        for r in store.records()
    ]


def _feature_dim(store: PartStore, ok_records: list[dict]) -> int | None:
    """D from a committed slide when this run encoded nothing (every slide was skipped)."""
    for record in ok_records:
        arrays = store.arrays(record["slide_id"])
        for key in ("exhaustive_features", "augmented_features"):
            if key in arrays:
                return int(arrays[key].shape[-1])
    return None


def _metadata(config: ExtractionConfig, which: str, feature_dim: int, encoder_record: dict | None) -> dict:
    from giga_ssl_hf.features.augment import RECIPE

    metadata = {
        "source": "giga-ssl extract",
        "pass": which,
        "encoder": config.encoder,
        "tile_encoder": encoder_record,
        "coords_from": config.coords_from,
        "tissue_geojson": config.tissue_geojson,
        "pretrained": config.pretrained,
        "weights": config.weights,
        "feature_dim": feature_dim,
        "dtype": config.dtype,
        "precision": config.precision,
        "tile_size": config.tile_size,
        "target_mpp": config.target_mpp,
        "min_tissue": config.min_tissue,
        "tissue_mask": {
            "mask_mpp": config.mask_mpp,
            "saturation_threshold": config.saturation_threshold,
            "min_saturation": config.min_saturation,
        },
        "coords": "level-0 (x, y) of the top-left corner; grid index = coords // patch_size_level0",
        "package_version": giga_ssl_hf.__version__,
    }
    if which == AUGMENTED:
        metadata.update(
            augmentation=RECIPE,
            n_aug=config.n_aug,
            n_tiles_per_aug=config.n_tiles_per_aug,
            seed=config.seed,
            aug_sampling=config.aug_sampling,
        )
    else:
        metadata["augmentation"] = None
    return metadata


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

output (--out DIR): DIR/exhaustive/ and DIR/augmented/ (datasets.load_from_disk), DIR/manifest.jsonl (one
line per slide: slide_id, path, status ok|failed|empty, n_tiles, seconds, error), DIR/thumbnails/*.png.
Rerunning the same command resumes: finished slides are skipped, failed ones retried. The exit status
is 1 when a slide failed (see the summary and the manifest), 0 otherwise.
"""


def build_parser() -> argparse.ArgumentParser:
    defaults = ExtractionConfig()
    parser = argparse.ArgumentParser(
        prog="giga-ssl extract",
        description="Tile whole-slide images at a target resolution and encode the tiles into tile-feature\n"
        "Datasets: an exhaustive pass (every tissue tile once, for embedding) and a shared-augmentation\n"
        "pass (n_aug views per slide, one random augmentation per view, for SSL training).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="SLIDE_OR_DIR",
        help="slide files, or folders of slides (see --recursive)",
    )
    parser.add_argument("--out", type=Path, help="output folder (created; reruns resume in it)")
    parser.add_argument(
        "--slides-csv",
        type=Path,
        help="CSV of slides: a 'path' column (relative to the CSV's folder), optional 'slide_id' (default: "
        "the file stem) and 'mpp' (that slide's level-0 µm/px, as --mpp for it alone)",
    )
    parser.add_argument(
        "--recursive",
        action="store_true",
        help="list folders with all their subfolders (slide ids must stay unique)",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="run share I of N of the slides (0-based; for job arrays without a launcher: Slurm "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); the last share to finish assembles the Datasets",
    )
    parser.add_argument(
        "--assemble",
        metavar="DIR",
        type=Path,
        help="only (re)build the manifest and Datasets of DIR from its committed slides, then exit",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--both",
        dest="passes",
        action="store_const",
        const=(EXHAUSTIVE, AUGMENTED),
        help="run both passes (default)",
    )
    which.add_argument(
        "--no-aug", dest="passes", action="store_const", const=(EXHAUSTIVE,), help="exhaustive pass only"
    )
    which.add_argument(
        "--aug", dest="passes", action="store_const", const=(AUGMENTED,), help="augmented pass only"
    )
    parser.set_defaults(passes=(EXHAUSTIVE, AUGMENTED))
    group = parser.add_argument_group("encoder")
    group.add_argument(
        "--encoder",
        default=defaults.encoder,
        help="a preset ('giga-ssl encoders' lists them: 'resnet18-layer3' is the paper's 256-d ResNet18, 'uni', "
        "'virchow2', 'h-optimus-0', ...), any other timm model name, or an hf-hub: id (default: %(default)s)",
    )
    group.add_argument(
        "--weights",
        default=None,
        help="local weights file (.safetensors, or a .pth/.pth.tar/.bin such as the original MoCo checkpoint; "
        "for the transformers presets phikon / phikon-v2 a local copy of the Hub repo); default: the Hub "
        "weights through the HF cache (HF_HUB_OFFLINE=1: the cache alone)",
    )
    group.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="random initialisation (no download; for tests)",
    )
    group.add_argument(
        "--device", default="auto", help="cuda, cpu, cuda:1, ... (default: cuda when available)"
    )
    group.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default=defaults.precision,
        help="bf16 autocast on CUDA and on CPUs with AMX when auto (default: %(default)s)",
    )
    group.add_argument(
        "--batch-size", type=int, default=64, help="tiles per encoder call (default: %(default)s)"
    )
    group.add_argument(
        "--dtype",
        choices=("float16", "float32"),
        default=defaults.dtype,
        help="stored feature dtype (default: %(default)s)",
    )
    group = parser.add_argument_group("tiling")
    group.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help=f"tile side in px given to the encoder (default: the preset's input size, else {defaults.tile_size})",
    )
    group.add_argument(
        "--target-mpp",
        type=float,
        default=None,
        help="µm per px of the tiles (default: the preset's, 1.0 for resnet18-layer3 as in the paper: level 1 of "
        f"a 40x slide; else {defaults.target_mpp})",
    )
    group.add_argument(
        "--min-tissue",
        type=float,
        default=defaults.min_tissue,
        help="keep tiles with at least this tissue fraction (default: %(default)s)",
    )
    group.add_argument(
        "--mpp",
        type=float,
        default=None,
        help="level-0 µm per px for slides whose metadata has no pixel size",
    )
    group.add_argument(
        "--override-mpp",
        action="store_true",
        help="use --mpp for every slide, even those that record a pixel size",
    )
    group.add_argument(
        "--mask-mpp",
        type=float,
        default=defaults.mask_mpp,
        help="resolution of the tissue mask, µm per px (default: %(default)s)",
    )
    group.add_argument(
        "--saturation-threshold",
        type=float,
        default=None,
        help="tissue = HSV saturation above this (default: Otsu's threshold)",
    )
    group.add_argument(
        "--min-saturation",
        type=float,
        default=defaults.min_saturation,
        help="lower bound of the Otsu threshold, so blank slides stay blank (default: %(default)s)",
    )
    group.add_argument(
        "--coords-from",
        type=Path,
        default=None,
        metavar="DIR",
        help="tile exactly the patches of TRIDENT / CLAM patch-coordinate h5 files in DIR (<slide_id>_patches.h5 "
        "or <slide_id>.h5: coords + patch_size_level0, or patch_size + patch_level) instead of the tissue mask",
    )
    group.add_argument(
        "--tissue-geojson",
        type=Path,
        default=None,
        metavar="DIR",
        help="tissue polygons from DIR/<slide_id>.geojson (level-0 px, as QuPath and TRIDENT export them) "
        "instead of the Otsu mask; --min-tissue applies to them",
    )
    group.add_argument(
        "--decode",
        choices=TILE_DECODERS,
        default="auto",
        help="tile reader: 'gpu' decodes the JPEG tiles of SVS / tiled TIFFs with nvjpeg and resizes them on "
        "the GPU; 'cpu-raw' the same with libjpeg-turbo on the CPU; 'openslide' reads regions with OpenSlide; "
        "'auto' is gpu on a CUDA device when the slide's tiles are JPEG, else openslide (default: %(default)s)",
    )
    group.add_argument(
        "--readers",
        type=int,
        default=1,
        help="background threads reading tiles while the encoder runs (0: none; default: %(default)s)",
    )
    group = parser.add_argument_group("shared augmentations (paper defaults)")
    group.add_argument(
        "--n-aug", type=int, default=defaults.n_aug, help="augmented views per slide (default: %(default)s)"
    )
    group.add_argument(
        "--n-tiles-per-aug",
        type=int,
        default=defaults.n_tiles_per_aug,
        help="tiles sampled with replacement per view (default: %(default)s)",
    )
    group.add_argument(
        "--aug-sampling",
        choices=AUG_SAMPLINGS,
        default=defaults.aug_sampling,
        help="tiles of each augmentation: random (drawn with replacement, the paper), window (the "
        "--n-tiles-per-aug tiles nearest a random tile, contiguous, for train --view_sampling window) or all "
        "(every tissue tile: n_aug x the exhaustive pass's storage) (default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="global seed; each slide's draws derive from it and the slide id (default: %(default)s)",
    )
    group = parser.add_argument_group("output")
    group.add_argument(
        "--thumbnails",
        action="store_true",
        help="write DIR/thumbnails/<slide_id>.png (tissue outline + kept tiles)",
    )
    group.add_argument("--overwrite", action="store_true", help="redo slides already extracted in --out")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    from giga_ssl_hf.features.encoder_presets import PRESETS

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.assemble is not None:
        try:
            built = assemble_datasets(args.assemble)
        except (ValueError, OSError) as error:
            print(f"giga-ssl extract: error: {error}", file=sys.stderr)
            return 2
        print(f"assembled {', '.join(str(p) for p in built.values()) or 'nothing (no extracted slide)'}")
        return 0
    if args.out is None or not (args.inputs or args.slides_csv):
        parser.error("give slides (SLIDE_OR_DIR or --slides-csv) and --out, or --assemble DIR")
    if args.override_mpp and args.mpp is None and args.slides_csv is None:
        parser.error("--override-mpp needs --mpp (or a --slides-csv with an mpp column)")
    if args.coords_from is not None and args.tissue_geojson is not None:
        parser.error(
            "--coords-from and --tissue-geojson are exclusive (coordinates already say where tissue is)"
        )
    for option, folder in (("--coords-from", args.coords_from), ("--tissue-geojson", args.tissue_geojson)):
        if folder is not None and not folder.is_dir():
            parser.error(f"{option}: not a folder: {folder}")
    try:
        shard = None if args.shard is None else sharding.parse_shard(args.shard)
    except ValueError as error:
        parser.error(str(error))
    defaults, preset = ExtractionConfig(), PRESETS.get(args.encoder)
    config = ExtractionConfig(
        encoder=args.encoder,
        pretrained=args.pretrained,
        weights=args.weights,
        tile_size=args.tile_size or (preset.input_size if preset else defaults.tile_size),
        target_mpp=args.target_mpp or (preset.target_mpp if preset else defaults.target_mpp),
        coords_from=None if args.coords_from is None else str(args.coords_from.resolve()),
        tissue_geojson=None if args.tissue_geojson is None else str(args.tissue_geojson.resolve()),
        min_tissue=args.min_tissue,
        mask_mpp=args.mask_mpp,
        saturation_threshold=args.saturation_threshold,
        min_saturation=args.min_saturation,
        n_aug=args.n_aug,
        n_tiles_per_aug=args.n_tiles_per_aug,
        aug_sampling=args.aug_sampling,
        seed=args.seed,
        dtype=args.dtype,
        precision=args.precision,
    )
    try:
        summary = extract_slides(
            args.inputs,
            args.out,
            config,
            passes=args.passes,
            mpp=args.mpp,
            override_mpp=args.override_mpp,
            batch_size=args.batch_size,
            num_readers=args.readers,
            device=args.device,
            decode=args.decode,
            thumbnails=args.thumbnails,
            overwrite=args.overwrite,
            progress=args.progress,
            recursive=args.recursive,
            slides_csv=args.slides_csv,
            shard=shard,
        )
    except DiskFullError as error:
        print(f"giga-ssl extract: error: {error.strerror}; free space and rerun to resume", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"giga-ssl extract: error: {error}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 1 if summary.failed else 0


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
            f"  {len(summary.busy)} slide(s) being extracted by another process: {', '.join(summary.busy)}"
        )
    if summary.waiting_for:
        share, count = summary.share
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
