"""Resumable extraction of a cohort into an output folder (:func:`extract_slides`): which slides to do (resume,
settings check, shares of several processes), each slide processed under its lock and committed, and the
Datasets assembled at the end by the last process to finish.

Output folder (a contract later stages rely on)::

    OUT/exhaustive/       every kept tile once per slide (aug_id = -1); datasets.load_from_disk
    OUT/augmented/        n_aug rows per slide of n_tiles_per_aug sampled tiles, one augmentation per row
    OUT/manifest.jsonl    one JSON object per slide: slide_id, path, status (ok|failed|empty), n_tiles,
                          seconds, error (+ patch_size_level0, mpp, level, ...); written with the Datasets
                          (and when a share ends), not after each slide: a slide's commit costs the same
                          at slide 30,000 as at slide 1
    OUT/parts/            committed per-slide results (what makes reruns resume)
    OUT/thumbnails/       with --thumbnails: <slide_id>.png, tissue outline (green) and kept tiles (blue)
    OUT/extract_config.json  the settings that determine the features (a rerun must use the same)
    OUT/tile_encoder.json the tile encoder's provenance record
    OUT/locks/            a lock per slide being processed and per running extraction (several processes
                          can share OUT)
    OUT/shares/           with --shard or a launcher: I-of-N.json once share I of N is done

Several processes (``accelerate launch``, ``torchrun``, ``--shard I/N``) split the slides between them and the
last to finish assembles the Datasets; :mod:`giga_ssl_hf.features.sharding` tells how. A run killed at any
point then rerun gives the same Datasets as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from giga_ssl_hf.contracts.extraction_folder import (
    AUGMENTED,
    CONFIG_FILENAME,
    ENCODER_FILENAME,
    LOCKS_DIRNAME,
    PARTS_DIRNAME,
    THUMBNAILS_DIRNAME,
)
from giga_ssl_hf.features import sharding
from giga_ssl_hf.features.assemble import assemble_datasets, extraction_encoder_record, write_manifest
from giga_ssl_hf.features.cohort import SlideEntry, collect_slides
from giga_ssl_hf.features.extraction_settings import BOTH_PASSES, ExtractionConfig, ExtractionRun
from giga_ssl_hf.features.settings_check import changed_settings, claim_settings
from giga_ssl_hf.features.slide_encoding import PassProgress, SlideOptions, process_slide
from giga_ssl_hf.files import dumps_strict, remove_stale_temporaries, write_text_atomic

if TYPE_CHECKING:
    from giga_ssl_hf.features.encoders import EncoderRunner
    from giga_ssl_hf.features.store import PartStore

logger = logging.getLogger(__name__)


@dataclass
class ExtractionSummary:
    """What :func:`extract_slides` did; ``failed`` lists ``(slide_id, error)``."""

    out_dir: Path
    ok: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # held by another live process when reached: waited for
    shard: tuple[int, int] | None = None  # (I, N) when this process ran share I of N
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


def _shard_of(
    slides: list[SlideEntry], asked: tuple[int, int] | None
) -> tuple[tuple[int, int] | None, list[SlideEntry]]:
    """(the shard (I, N) this process runs: ``asked``, the launcher's or None; the slides of its share)."""
    launched = sharding.launcher_share()
    if asked is not None and launched is not None:
        raise ValueError("--shard splits the slides by itself: run it without a multi-process launcher")
    shard = asked or launched
    if shard is None:
        return None, slides
    # Every process computes the same split from the whole list, whatever is already done.
    owners = sharding.assign_shares(
        [e.path.stat().st_size for e in slides], [e.slide_id for e in slides], shard[1]
    )
    return shard, [e for e, owner in zip(slides, owners) if owner == shard[0]]


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
    committed = set() if redo_all else store.committed_ids()  # one listing: records read only where needed
    for entry in slides:
        previous = store.record(entry.slide_id) if entry.slide_id in committed else None
        if _finished(previous, passes):
            done.append(entry.slide_id)
            continue
        # Redoing a slide for one pass keeps the other pass it already has (one part file per slide).
        kept = (
            set(previous.get("passes", [])) if previous is not None and previous["status"] == "ok" else set()
        )
        todo.append((entry, tuple(p for p in BOTH_PASSES if p in set(passes) | kept)))
    return todo, done


def _prepare_folder(
    out_dir: Path,
    config: ExtractionConfig,
    store: PartStore,
    discard: bool,
    runner: EncoderRunner | None,
    locks: sharding.SlideLocks,
) -> None:
    """Clear what a killed run left, and the slides of other settings when ``discard``; record the settings and
    the tile encoder."""
    with locks.hold(".setup"):
        store.remove_temporaries()
        remove_stale_temporaries(out_dir)
        config_path = out_dir / CONFIG_FILENAME
        # Another run of these settings (this one's run lock keeps others out) may have cleared the folder
        # and written them since this one looked.
        if discard and changed_settings(out_dir, config):
            store.clear()
            (out_dir / ENCODER_FILENAME).unlink(missing_ok=True)
        if discard or not config_path.exists():
            with store.disk_full_names(f"the settings of {out_dir}"):
                write_text_atomic(
                    config_path, dumps_strict(dataclasses.asdict(config), indent=1, sort_keys=True)
                )
    if runner is not None:
        text = dumps_strict(
            extraction_encoder_record(config, runner, out_dir), indent=1, sort_keys=True, default=str
        )
        path = out_dir / ENCODER_FILENAME
        if not path.is_file() or path.read_text() != text:  # reruns write nothing (a full disk stays usable)
            with store.disk_full_names(f"the tile encoder record of {out_dir}"):
                write_text_atomic(path, text)


def _run_slide(
    entry: SlideEntry, runner, config, options: SlideOptions, progress, store: PartStore, out_dir: Path
) -> dict:
    """Process one slide and commit its result (a failure of the slide is recorded, not raised)."""
    slide_id = entry.slide_id
    if entry.mpp is not None:
        options = dataclasses.replace(options, mpp=entry.mpp)
    began = time.perf_counter()
    try:
        record, arrays = process_slide(entry.path, slide_id, runner, config, options, progress)
    except Exception as error:  # any failure of one slide is recorded; the job goes on
        logger.warning("%s failed: %s: %s", slide_id, type(error).__name__, error)
        record, arrays = {"status": "failed", "n_tiles": 0, "error": f"{type(error).__name__}: {error}"}, None
    record.update(slide_id=slide_id, path=str(entry.path), seconds=round(time.perf_counter() - began, 3))
    record["passes"] = list(options.passes) if record["status"] == "ok" else []
    # The commit alone: its cost does not grow with the cohort (the manifest is written at assembly).
    with store.disk_full_names(f"slide {slide_id} into {out_dir}"):
        store.commit(record, arrays)
    return record


def _extract_todo(
    todo,
    runner,
    config,
    options: SlideOptions,
    store,
    summary,
    locks: sharding.SlideLocks,
    redo: bool,
    progress,
):
    """Process the planned slides, each under its lock, counting results into ``summary``; wait for the slides
    other live processes hold (see :func:`~giga_ssl_hf.features.sharding.wait_for_holders`)."""
    from tqdm.auto import tqdm

    slide_bar = tqdm(todo, desc="slides", unit="slide", disable=not progress)
    pass_progress = PassProgress(enabled=progress)

    def try_slide(entry: SlideEntry, slide_passes: tuple[str, ...]) -> bool:
        """Process ``entry`` under its lock; False when a live process holds the lock."""
        slide_id = entry.slide_id
        with store.disk_full_names(f"slide {slide_id} into {summary.out_dir}"):
            if not locks.acquire(slide_id):
                return False
        try:
            if not redo and _finished(store.record(slide_id), options.passes):
                summary.skipped.append(slide_id)  # committed by another process since the plan was made
                return True
            slide_options = dataclasses.replace(options, passes=slide_passes)
            record = _run_slide(entry, runner, config, slide_options, pass_progress, store, summary.out_dir)
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
        return True

    try:
        busy = []
        for entry, slide_passes in slide_bar:
            slide_bar.set_postfix_str(entry.slide_id)
            if not try_slide(entry, slide_passes):
                busy.append((entry, slide_passes))
        summary.busy = [entry.slide_id for entry, _ in busy]
        sharding.wait_for_holders(busy, try_slide, locks)
    finally:
        pass_progress.close()
        slide_bar.close()
    summary.n_encoded = dict(pass_progress.encoded)


def _others_done(summary: ExtractionSummary, key: str, job, store, wait_for_shares: bool) -> bool:
    """Mark this share done; whether every share is (this process then assembles the Datasets)."""
    out_dir, shard = summary.out_dir, summary.shard
    sharding.mark_share_done(out_dir, *shard, key, [e.slide_id for e in job])
    summary.waiting_for = sharding.unfinished_shares(out_dir, shard[1], key)
    if summary.waiting_for and wait_for_shares:
        logger.info("share %d/%d done; waiting for shares %s", *shard, summary.waiting_for)
        while summary.waiting_for:
            time.sleep(2.0)
            summary.waiting_for = sharding.unfinished_shares(out_dir, shard[1], key)
    if not summary.waiting_for:
        return True
    logger.info(
        "share %d/%d done; the last share to finish assembles the Datasets (still running: %s)",
        *shard,
        ", ".join(f"{i}/{shard[1]}" for i in summary.waiting_for),
    )
    with store.disk_full_names("the manifest of " + str(out_dir)):
        write_manifest(store.records(), out_dir)
    return False


def _check(config: ExtractionConfig, passes: Sequence[str]) -> tuple[str, ...]:
    """The passes, in order; raises on nothing to do or missing tile-source folders."""
    config.check_tile_sources()
    passes = tuple(p for p in BOTH_PASSES if p in passes)
    if not passes:
        raise ValueError("nothing to do: passes must include 'exhaustive' and/or 'augmented'")
    return passes


def _log_plan(summary: ExtractionSummary) -> None:
    if summary.unsupported_files:
        names = ", ".join(p.name for p in summary.unsupported_files)
        logger.warning("skipped %d file(s) of unknown type: %s", len(summary.unsupported_files), names)
    if summary.skipped:
        logger.info(
            "%d slide(s) already extracted in %s, skipped (--overwrite redoes them)",
            len(summary.skipped),
            summary.out_dir,
        )


def extract_slides(
    paths: Sequence[str | Path | SlideEntry],
    out_dir: str | Path,
    config: ExtractionConfig | None = None,
    *,
    wait_for_shares: bool = False,
    **options,
) -> ExtractionSummary:
    """Tile, encode and store ``paths`` (slide files, folders of slides, :class:`SlideEntry`) into ``out_dir``.

    Slides already committed (status ok or empty, with the passes asked for) are skipped unless
    ``overwrite``; failed ones are retried; a failing slide is recorded and the others go on. Every check
    on the inputs (slides, settings, encoder weights) runs before anything is written; a full disk raises
    :class:`~giga_ssl_hf.features.store.DiskFullError` after removing what was half-written. The keyword
    arguments are :class:`~giga_ssl_hf.features.extraction_settings.ExtractionRun`'s fields, checked by it as
    the command line's are: ``shard_spec="I/N"`` (or a launcher's ``RANK`` / ``WORLD_SIZE``) runs share I of N,
    and the last share to finish builds the Datasets; with ``wait_for_shares`` every share waits for the
    others and returns with the Datasets (for callers that go on with them, such as the pipeline).
    """
    return run_extraction(
        ExtractionRun(inputs=tuple(paths), out=Path(out_dir), **options), config, wait_for_shares
    )


def run_extraction(
    run: ExtractionRun, config: ExtractionConfig | None = None, wait_for_shares: bool = False
) -> ExtractionSummary:
    """:func:`extract_slides` with its run's settings already checked (the command line's path)."""
    config, out_dir = config or ExtractionConfig(), run.out
    passes = _check(config, run.passes)
    summary = ExtractionSummary(out_dir=out_dir)
    new_folder = not out_dir.exists()
    try:
        # The locks' heartbeat runs, and this process's run lock is held, until its last write.
        with sharding.SlideLocks(out_dir / LOCKS_DIRNAME) as locks:
            _run_in_folder(run, config, passes, summary, locks, wait_for_shares)
    except BaseException:
        if new_folder:  # a refused or failed first run leaves no empty folder behind
            for folder in (out_dir / LOCKS_DIRNAME, out_dir):
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise
    return summary


def _run_in_folder(
    run: ExtractionRun, config, passes, summary: ExtractionSummary, locks, wait_for_shares
) -> None:
    """Claim the folder, plan, build the encoder, extract, and assemble (the last process to finish)."""
    from giga_ssl_hf.features.runner import build_runner
    from giga_ssl_hf.features.store import PartStore

    out_dir = run.out
    store = PartStore(out_dir / PARTS_DIRNAME)
    # First, and light (before the slides are listed and the encoder is built): a run whose settings differ
    # from a live run's is refused at once. The check holds until this run's lock is taken.
    with locks.hold(".setup", poll_seconds=0.1):
        discard = claim_settings(out_dir, config, store, run.overwrite, locks)
    slides, summary.unsupported_files = _find_inputs(run.inputs, run.recursive, run.slides_csv)
    summary.shard, job = _shard_of(slides, run.shard)
    todo, summary.skipped = _plan(job, store, passes, redo_all=discard or run.overwrite)
    _log_plan(summary)
    runner = build_runner(config, run.device) if todo else None
    _prepare_folder(out_dir, config, store, discard, runner, locks)
    thumbnails_dir = out_dir / THUMBNAILS_DIRNAME if run.thumbnails else None
    slide_options = SlideOptions(
        passes, run.mpp, run.override_mpp, run.batch_size, run.num_readers, run.decode, thumbnails_dir
    )
    start = time.perf_counter()
    redo = run.overwrite or discard
    _extract_todo(todo, runner, config, slide_options, store, summary, locks, redo, run.progress)
    summary.seconds = time.perf_counter() - start
    if summary.shard is not None:
        key = sharding.run_key([e.slide_id for e in slides], passes)
        if not _others_done(summary, key, job, store, wait_for_shares):
            return
    summary.datasets = assemble_datasets(out_dir, config, passes, runner)
