"""Writing output files: atomically (never half-written under the final name) and as strict JSON.

Strict JSON has no ``NaN`` / ``Infinity`` tokens (Python's ``json`` writes them by default, and most other
readers refuse them): non-finite floats are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open ``path``'s temporary twin for writing; on success it is synced and renamed onto ``path``.

    On any error the temporary is removed, so a failure (a full disk, an exception mid-write) never leaves a
    half-written file under the final name, nor a stray temporary.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
