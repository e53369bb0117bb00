"""Extraction over many processes and machines: who does which slide, per-slide locks, and who assembles.

- **Shares.** The slides are split into ``count`` shares balanced by file size (largest first, each to the
  least loaded share; ties broken by slide id), a pure function of the slide list, so every process computes
  the same split without talking to the others. A process runs share ``index`` of ``count``: given by
  ``--shard I/N`` (Slurm job arrays, any scheduler), or read from the launcher's ``RANK`` / ``WORLD_SIZE``
  (``accelerate launch``, ``torchrun``, multi-node included), each process on its own ``cuda:LOCAL_RANK``.
- **Locks.** A process works on a slide only while it holds ``OUT/locks/<slide_id>.lock``: a symbolic link
  whose target names the host, pid and the pid's start time, created atomically (it fails when the link
  exists, also over NFS) and needing no data block, so a full disk cannot leave a lock half-written. A
  live holder refreshes the link's mtime
  every :data:`HEARTBEAT_SECONDS`. A lock is stale, and is broken, when its pid is dead on this host, or when
  its mtime is older than :data:`STALE_SECONDS` (a holder on another machine that stopped beating): a killed
  process never blocks a rerun for long, and two live processes never encode the same slide.
- **Runs.** Each extraction also holds ``OUT/locks/.run-<host>-<pid>.lock`` from its settings check (made
  under ``OUT/locks/.setup.lock``) to its end: a run whose settings differ from those of a live run refuses
  to start. A run that finds a slide locked by a live process waits for it, and takes it over once its holder
  is gone: it never assembles Datasets that lack a slide of its own list.
- **Assembly.** The Datasets are rebuilt from every committed slide under ``OUT/locks/.assemble.lock``, one
  process at a time. A share marks itself done in ``OUT/shares/I-of-N.json`` (with a key of the slide list);
  the share that finds all ``N`` marks with its key is the last one and assembles. ``giga-ssl extract
  --assemble DIR`` assembles by hand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from giga_ssl_hf.contracts.extraction_folder import SHARES_DIRNAME
from giga_ssl_hf.files import process_is_alive, process_start_ticks, write_text_atomic

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0  # a lock of another host untouched this long is abandoned
_BREAKER_SECONDS = 60.0  # a lock-breaking marker older than this was left by a killed breaker
_BUSY_POLL_SECONDS = 2.0  # how often a run retries the slides other processes hold
_BUSY_LOG_SECONDS = 60.0
_HOLD_LOG_SECONDS = 5.0  # a wait for a folder-wide lock (setup, assembly) is logged once it lasts this long
_RUN_PREFIX = ".run-"  # the lock a running extraction holds from its settings check to its end


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not int(match[1]) < int(match[2]):
        raise ValueError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


def launcher_share() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` set by ``accelerate launch`` / ``torchrun`` (None for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return None
    return int(os.environ.get("RANK", "0")), world_size


def assign_shares(sizes: Sequence[int], keys: Sequence[str], count: int) -> list[int]:
    """Share of each item: largest first, each to the least loaded share (ties: lower key, lower share)."""
    loads = [0] * count
    shares = [0] * len(sizes)
    for item in sorted(range(len(sizes)), key=lambda i: (-sizes[i], keys[i])):
        share = min(range(count), key=lambda s: (loads[s], s))
        shares[item] = share
        loads[share] += max(int(sizes[item]), 1)
    return shares


def run_key(slide_ids: Sequence[str], passes: Sequence[str]) -> str:
    """Identifies a job (its slides and passes): the shares of one job share the key."""
    text = json.dumps([sorted(slide_ids), sorted(passes)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _marker(out_dir: Path, index: int, count: int) -> Path:
    return out_dir / SHARES_DIRNAME / f"{index}-of-{count}.json"


def mark_share_done(out_dir: Path, index: int, count: int, key: str, slide_ids: Sequence[str]) -> None:
    path = _marker(out_dir, index, count)
    path.parent.mkdir(exist_ok=True)
    record = {
        "share": index,
        "count": count,
        "key": key,
        "slide_ids": list(slide_ids),
        "finished": time.time(),
    }
    write_text_atomic(path, json.dumps(record, sort_keys=True))


def unfinished_shares(out_dir: Path, count: int, key: str) -> list[int]:
    """The shares of the job ``key`` that have not marked themselves done."""
    missing = []
    for index in range(count):
        try:
            done = json.loads(_marker(out_dir, index, count).read_text())["key"] == key
        except (FileNotFoundError, ValueError, KeyError):
            done = False
        if not done:
            missing.append(index)
    return missing


def _owner() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_start_ticks(pid), "since": time.time()}


def lock_owner(path: Path) -> dict | None:
    """Who holds the lock at ``path`` (host, pid, start, since); None when unreadable."""
    try:
        owner = json.loads(os.readlink(path))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def lock_is_stale(path: Path, stale_seconds: float = STALE_SECONDS) -> bool:
    """Whether the lock at ``path`` is abandoned (see the module docstring); a missing lock is not stale."""
    try:
        mtime = os.lstat(path).st_mtime
    except FileNotFoundError:
        return False
    owner = lock_owner(path)  # None (garbage): judged by its age only
    if owner and owner.get("host") == socket.gethostname():
        pid = owner.get("pid")
        if pid == os.getpid():
            return False
        return not process_is_alive(int(pid), owner.get("start"))
    return time.time() - mtime > stale_seconds


class SlideLocks:
    """Per-name lock files in ``directory``, refreshed by a heartbeat thread while held.

    Use as a context manager, or call :meth:`start` and :meth:`close` (they start and stop the heartbeat;
    closing releases what is still held).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        stale_seconds: float = STALE_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stale_seconds, self.heartbeat_seconds = stale_seconds, heartbeat_seconds
        self._held: dict[str, Path] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.lock"

    def acquire(self, name: str, **about) -> bool:
        """Take the lock ``name`` if it is free or stale; False when a live process holds it. ``about`` joins
        the owner record."""
        path = self.path(name)
        for attempt in range(2):
            try:
                os.symlink(json.dumps({**_owner(), **about}), path)
            except FileExistsError:
                if attempt or not self._break_if_stale(path):
                    return False
                continue
            with self._guard:
                self._held[name] = path
            return True
        return False

    def _break_if_stale(self, path: Path) -> bool:
        """Remove ``path`` when stale; True when it is gone. One breaker at a time (``.break`` marker)."""
        breaker = path.with_name(path.name + ".break")
        try:
            os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - breaker.stat().st_mtime > _BREAKER_SECONDS:
                    breaker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return False
        try:
            if lock_is_stale(path, self.stale_seconds):
                logger.warning("breaking the stale lock %s (holder gone: %s)", path, lock_owner(path))
                path.unlink(missing_ok=True)
            return not os.path.lexists(path)
        finally:
            breaker.unlink(missing_ok=True)

    def hold_run(self, settings: str) -> None:
        """Take this process's run lock (held until :meth:`close`): other runs see that it extracts here, and
        with which ``settings`` (a fingerprint, in the lock's owner record)."""
        # A token per run: two runs of one process (threads) hold a lock each.
        name = f"{_RUN_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        if not self.acquire(name, settings=settings):
            raise RuntimeError(f"the run lock of this process in {self.directory} is held by another process")

    def other_live_runs(self) -> list[dict]:
        """The owners of the other live runs' locks; the stale run locks of dead runs are removed."""
        owners = []
        for path in sorted(self.directory.glob(f"{_RUN_PREFIX}*.lock")):
            if path in self._held.values() or self._break_if_stale(path):
                continue
            owners.append(lock_owner(path) or {"lock": path.name})
        return owners

    def release(self, name: str) -> None:
        with self._guard:
            path = self._held.pop(name, None)
        if path is not None:
            path.unlink(missing_ok=True)

    @contextmanager
    def hold(self, name: str, *, poll_seconds: float = 0.5):
        """Wait until the lock ``name`` is ours, hold it for the ``with`` body."""
        started, logged = time.monotonic(), False
        while not self.acquire(name):
            # A short wait (another process writing its settings) is not news: a refusal that follows it stays
            # one line. A long one is said once.
            if not logged and time.monotonic() - started >= _HOLD_LOG_SECONDS:
                logger.info("waiting for %s (held by another process)", self.path(name))
                logged = True
            time.sleep(poll_seconds)
        try:
            yield
        finally:
            self.release(name)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            with self._guard:
                paths = list(self._held.values())
            for path in paths:
                try:
                    os.utime(path, follow_symlinks=False)
                except FileNotFoundError:
                    logger.warning("lock %s vanished while held (broken by another process?)", path)

    def start(self) -> SlideLocks:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for name in list(self._held):
            self.release(name)

    def __enter__(self) -> SlideLocks:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_holders(busy: list, try_slide, locks: SlideLocks) -> None:
    """Wait while live processes hold the ``busy`` slides, then take each over (one its holder committed is
    found done): a run never ends, nor assembles, without every slide of its list. A holder that dies
    leaves a stale lock, broken at once on its host and after :data:`STALE_SECONDS` elsewhere."""
    logged = -math.inf
    while busy:
        if time.monotonic() - logged >= _BUSY_LOG_SECONDS:
            holders = ", ".join(
                f"{entry.slide_id} ({_holder(locks.path(entry.slide_id))})" for entry, _ in busy[:10]
            )
            logger.warning(
                "waiting for %d slide(s) held by other live processes: %s%s; this run goes on once they end "
                "(stop the holders to have this run do the slides)",
                len(busy),
                holders,
                " ..." if len(busy) > 10 else "",
            )
            logged = time.monotonic()
        time.sleep(_BUSY_POLL_SECONDS)
        busy = [(entry, slide_passes) for entry, slide_passes in busy if not try_slide(entry, slide_passes)]


def _holder(lock: Path) -> str:
    owner = lock_owner(lock) or {}
    return f"pid {owner.get('pid')} on {owner.get('host')}"
