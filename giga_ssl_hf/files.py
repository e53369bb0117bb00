"""Writing output files: atomically (never half-written under the final name) and as strict JSON.

Strict JSON has no ``NaN`` / ``Infinity`` tokens (Python's ``json`` writes them by default, and most other
readers refuse them): non-finite floats are written as ``null``.

Temporary names carry their writer (``.tmp~host~pid``), so several processes can share an output folder: a
process removes only the temporaries of writers that are gone (a dead pid on this host, or untouched for an
hour on another host), never those another live process is still writing.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

FOREIGN_TEMPORARY_SECONDS = 3600  # a temporary of another host untouched this long belongs to a dead process


def process_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), None when unknown.

    Paired with the pid it identifies a process even after the pid is reused.
    """
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_is_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process ``pid`` of this host runs (and, when ``start_ticks`` is given, is the same process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    if _process_state(pid) == "Z":  # dead, not yet reaped by its parent: it holds nothing any more
        return False
    return start_ticks is None or process_start_ticks(pid) in (None, start_ticks)


def _process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``Z`` for a zombie) from Linux ``/proc``, None when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def temporary_path(path: Path) -> Path:
    """A temporary name for ``path`` owned by this process (see :func:`remove_stale_temporaries`)."""
    return path.with_name(f"{path.name}.tmp~{socket.gethostname()}~{os.getpid()}")


def _temporary_is_stale(path: Path) -> bool:
    owner = path.name.rpartition(".tmp")[2].split("~")
    if len(owner) == 3 and owner[2].isdigit():
        host, pid = owner[1], int(owner[2])
        if host == socket.gethostname():
            # This process's own temporaries are stale too: its writes are sequential and already over.
            return pid == os.getpid() or not process_is_alive(pid)
        try:
            return time.time() - path.stat().st_mtime > FOREIGN_TEMPORARY_SECONDS
        except FileNotFoundError:
            return False
    return True  # no owner in the name: written by a version that ran one process at a time


def remove_stale_temporaries(directory: Path, name: str | None = None) -> None:
    """Delete the temporaries in ``directory`` (of the file or folder ``name`` only, when given) whose writer is
    gone: the files of :func:`atomic_path` and the folders of :func:`staged_directory`, never a committed one."""
    if not directory.is_dir():
        return
    for path in directory.glob((glob.escape(name) if name else "*") + ".tmp*"):
        if _temporary_is_stale(path):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name for ``path``, for a writer that wants a path (h5py, PIL, a library's ``save``): once
    the block ends the file is synced and renamed onto ``path``.

    On any error the temporary is removed, so a failure (a full disk, an exception mid-write) never leaves a
    half-written file under the final name, nor a stray temporary.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open ``path``'s temporary twin for writing; on success it is synced and renamed onto ``path``
    (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_file(path) as handle:
        handle.write(text)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def dumps_strict(value: object, **kwargs) -> str:
    """``json.dumps`` with non-finite floats as ``null`` and ``allow_nan=False`` (strict JSON)."""
    return json.dumps(_finite(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value: object, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """Write ``value`` as strict JSON, atomically, with a final newline."""
    write_text_atomic(path, dumps_strict(value, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Write one strict-JSON object per line, atomically."""
    write_text_atomic(path, "".join(dumps_strict(record, sort_keys=True) + "\n" for record in records))


def replace_directory(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final``, replacing what is there (rename is atomic for empty
    targets only, so the old folder is moved aside first and deleted last)."""
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


@contextmanager
def staged_directory(final: str | Path) -> Iterator[Path]:
    """A new empty folder beside ``final`` (parents made) to write a whole folder into; once the block ends
    its files are synced and it replaces ``final`` (:func:`replace_directory`).

    On any error it is removed and ``final`` stays as it was: the folder appears complete or not at all.
    """
    final = Path(final)
    tmp = temporary_path(final)
    remove_stale_temporaries(final.parent, final.name)  # what a crash mid-write left
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
