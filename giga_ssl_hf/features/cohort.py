"""The slides of an extraction job: files and folders (optionally recursive), or a slides CSV.

A slides CSV has a ``path`` column (absolute, or relative to the CSV's folder) and optionally ``slide_id``
(default: the file stem) and ``mpp`` (level-0 µm per px of that slide: used when the slide's metadata has
no pixel size, or for every slide with ``--override-mpp``). Empty cells mean the default.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SlideEntry:
    """One slide of a job: its file, its id (the name of its rows and part files), its own pixel size."""

    path: Path
    slide_id: str
    mpp: float | None = None


def _check_slide_id(slide_id: str, where: str) -> None:
    if not slide_id or slide_id.startswith(".") or "/" in slide_id or "\\" in slide_id:
        raise ValueError(
            f"{where}: slide_id {slide_id!r} must be non-empty, without '/' and not start with '.'"
        )


def read_slides_csv(csv_path: str | Path) -> list[SlideEntry]:
    """The slides listed in ``csv_path`` (see the module docstring); errors name the CSV line."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no such slides CSV: {csv_path}")
    # utf-8-sig: spreadsheets save "CSV UTF-8" with a byte-order mark, which would otherwise prefix the header.
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "path" not in columns:
            raise ValueError(
                f"{csv_path}: needs a 'path' column (found: {', '.join(columns) or 'no header'})"
            )
        entries = []
        for row in reader:
            where = f"{csv_path}, line {reader.line_num}"
            if None in row:  # DictReader files the cells beyond the header under None
                raise ValueError(
                    f"{where}: {len(columns) + len(row[None])} fields but the header has {len(columns)} "
                    "(quote cells that contain commas)"
                )
            row = {k.strip(): (v or "").strip() for k, v in row.items()}
            if not row["path"]:
                raise ValueError(f"{where}: empty path")
            path = Path(row["path"]).expanduser()
            path = path if path.is_absolute() else csv_path.parent / path
            if not path.exists():
                raise FileNotFoundError(f"{where}: no such slide: {path}")
            slide_id = row.get("slide_id") or path.stem
            _check_slide_id(slide_id, where)
            mpp = None
            if row.get("mpp"):
                try:
                    mpp = float(row["mpp"])
                except ValueError:
                    mpp = math.nan
                if not (math.isfinite(mpp) and mpp > 0):
                    raise ValueError(
                        f"{where}: mpp must be a positive number of µm per px, got {row['mpp']!r}"
                    )
            entries.append(SlideEntry(path, slide_id, mpp))
    return entries


def collect_slides(
    inputs: Iterable[str | Path | SlideEntry] = (),
    *,
    recursive: bool = False,
    slides_csv: str | Path | None = None,
    skipped: list[Path] | None = None,
) -> list[SlideEntry]:
    """Every slide of a job, from files / folders (``recursive``: whole trees), entries and a slides CSV.

    Files of the folders that are not slides are appended to ``skipped`` when given. Raises ValueError when
    two slides would get the same slide id, naming both paths.
    """
    from giga_ssl_hf.wsi.slide import find_slides

    entries: list[SlideEntry] = []
    paths: list[str | Path] = []
    for item in inputs:
        if isinstance(item, SlideEntry):
            entries.append(item)
        else:
            paths.append(item)
    for path in find_slides(paths, skipped, recursive=recursive):
        _check_slide_id(path.stem, str(path))
        entries.append(SlideEntry(path, path.stem))
    if slides_csv is not None:
        entries.extend(read_slides_csv(slides_csv))
    check_unique_ids(entries)
    return entries


def check_unique_ids(entries: Sequence[SlideEntry]) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        other = seen.setdefault(entry.slide_id, entry.path)
        if other is not entry.path:
            raise ValueError(
                f"slide_id {entry.slide_id!r} would be used by both {other} and {entry.path}: rename one, or "
                "give them distinct ids in the slide_id column of a --slides-csv"
            )
