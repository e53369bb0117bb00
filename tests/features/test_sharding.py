"""Extraction over several processes: shares, per-slide locks, assembly by the last share."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from giga_ssl_hf.contracts import read_metadata
from giga_ssl_hf.features.extract import ExtractionConfig, extract_slides, main
from giga_ssl_hf.features.extraction_settings import ExtractionRun
from giga_ssl_hf.features.settings_check import settings_key
from giga_ssl_hf.features.sharding import (
    SlideLocks,
    assign_shares,
    lock_is_stale,
    lock_owner,
    parse_shard,
    unfinished_shares,
)
from giga_ssl_hf.files import process_start_ticks

from .test_extract import CMU, FAST, FAST_CONFIG, REPO, WSI_FIXTURES, assert_same_rows, manifest, rows

PASSES = ("exhaustive", "augmented")


def cohort(folder: Path) -> Path:
    """Three real slides with tissue (symlinks to CMU-1-Small-Region) and a small fixture without."""
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.svs").symlink_to(CMU)
    (folder / "small.svs").symlink_to(WSI_FIXTURES / "small.svs")
    return folder


def subprocess_env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    return env


def assert_same_output(left: Path, right: Path) -> None:
    for which in PASSES:
        assert_same_rows(left / which, right / which)
        # the same provenance, whichever process assembled (and whether it built the encoder or not)
        left_encoder = read_metadata(left / which)["tile_encoder"]
        assert left_encoder is not None and left_encoder == read_metadata(right / which)["tile_encoder"]
    strip = ("seconds", "path")
    assert {k: {f: v for f, v in r.items() if f not in strip} for k, r in manifest(left).items()} == {
        k: {f: v for f, v in r.items() if f not in strip} for k, r in manifest(right).items()
    }


def test_shares_are_balanced_by_size_and_deterministic():
    sizes = [100, 90, 50, 40, 30, 5, 5]
    keys = [f"s{i}" for i in range(len(sizes))]
    shares = assign_shares(sizes, keys, 2)
    assert shares == assign_shares(sizes, keys, 2)
    loads = [sum(s for s, o in zip(sizes, shares) if o == share) for share in (0, 1)]
    assert loads == [170, 150]  # largest first, each to the least loaded share: 100+40+30 / 90+50+5+5
    assert assign_shares(sizes[::-1], keys[::-1], 2) == shares[::-1]  # listing order does not matter
    assert sorted(assign_shares([1] * 5, list("abcde"), 8)) == [0, 1, 2, 3, 4]  # more shares than slides


def test_parse_shard():
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError, match="I/N"):
            parse_shard(bad)


def test_the_shard_flag_text_and_its_parsed_shard_have_their_own_names(tmp_path):
    run = ExtractionRun(inputs=(str(CMU),), out=tmp_path / "out", shard_spec="1/4")
    assert (run.shard_spec, run.shard) == ("1/4", (1, 4))
    assert ExtractionRun(inputs=(str(CMU),), out=tmp_path / "out").shard is None


def test_bad_shard_is_a_usage_error(tmp_path, capsys):
    assert main([str(CMU), "--out", str(tmp_path / "out"), "--shard", "2/2", *FAST]) == 2
    assert "--shard takes I/N" in capsys.readouterr().err


def test_lock_of_a_live_process_holds_and_of_a_dead_one_is_broken(tmp_path):
    locks = SlideLocks(tmp_path / "locks")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = {"host": socket.gethostname(), "pid": holder.pid, "start": process_start_ticks(holder.pid)}
        os.symlink(json.dumps(owner), locks.path("s1"))
        assert not lock_is_stale(locks.path("s1"))
        assert not locks.acquire("s1")
    finally:
        holder.kill()
        holder.wait()
    assert lock_is_stale(locks.path("s1"))
    assert locks.acquire("s1")
    assert lock_owner(locks.path("s1"))["pid"] == os.getpid()
    locks.release("s1")
    assert not os.path.lexists(locks.path("s1"))


def test_lock_of_another_host_is_broken_only_after_its_heartbeat_stops(tmp_path):
    locks = SlideLocks(tmp_path / "locks", stale_seconds=60)
    path = locks.path("s1")
    os.symlink(json.dumps({"host": "another-node", "pid": 1, "start": None}), path)
    assert not locks.acquire("s1")  # fresh: its holder beats on another machine
    old = time.time() - 120
    os.utime(path, (old, old), follow_symlinks=False)
    assert locks.acquire("s1")


def test_heartbeat_refreshes_held_locks(tmp_path):
    with SlideLocks(tmp_path / "locks", heartbeat_seconds=0.05) as locks:
        assert locks.acquire("s1")
        old = time.time() - 1000
        os.utime(locks.path("s1"), (old, old), follow_symlinks=False)
        time.sleep(0.3)
        assert time.time() - os.lstat(locks.path("s1")).st_mtime < 10
    assert not os.path.lexists(locks.path("s1"))  # released on exit


def hold_lock(locks_dir: Path, slide_id: str, owner: dict) -> Path:
    """A lock of ``slide_id`` held by ``owner``, as another process's :class:`SlideLocks` would write it."""
    locks_dir.mkdir(parents=True, exist_ok=True)
    path = locks_dir / f"{slide_id}.lock"
    os.symlink(json.dumps(owner), path)
    return path


def wait_until(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


@pytest.mark.slow
def test_slides_held_by_other_processes_are_waited_for_and_taken_over_once_their_holders_are_gone(tmp_path):
    out = tmp_path / "out"
    slides = cohort(tmp_path / "slides")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    local = {"host": socket.gethostname(), "pid": holder.pid, "start": process_start_ticks(holder.pid)}
    hold_lock(out / "locks", "a", local)
    # a fresh lock of another machine: its holder may be alive there until its heartbeat stops
    foreign = hold_lock(out / "locks", "b", {"host": "another-node", "pid": 1, "start": None})
    command = [sys.executable, "-m", "giga_ssl_hf.features.extract", str(slides), "--no-progress", *FAST]
    run = subprocess.Popen(
        [*command, "--out", str(out)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: {p.stem for p in (out / "parts").glob("*.json")} == {"c", "small"})
        time.sleep(3)  # past a few retries of the held slides
        # it waits: it assembles nothing without a and b
        assert run.poll() is None and not (out / "exhaustive").exists()
        # the local holder dies (not reaped yet: a zombie holds nothing either): its lock is broken at once
        holder.send_signal(signal.SIGKILL)
        assert wait_until(lambda: (out / "parts" / "a.json").exists())
        assert run.poll() is None and not (out / "exhaustive").exists()
        old = time.time() - 3600
        os.utime(foreign, (old, old), follow_symlinks=False)  # the foreign holder's heartbeat stopped
        stdout, stderr = run.communicate(timeout=120)
    finally:
        holder.kill()
        run.kill()
        holder.wait()
    assert run.returncode == 0, stderr[-3000:]
    assert "3 ok, 1 empty" in stdout and "waited for 2 slide(s) another process held: a, b" in stdout
    assert "waiting for 2 slide(s) held by other live processes" in stderr
    assert set(manifest(out)) == {"a", "b", "c", "small"}
    assert [r["slide_id"] for r in rows(out / "exhaustive")] == ["a", "b", "c"]
    assert not list((out / "locks").glob("*.lock"))


def test_other_settings_than_a_live_run_are_refused_even_on_a_folder_without_finished_slides(tmp_path):
    out = tmp_path / "out"
    extract_slides([WSI_FIXTURES / "small.svs"], out, FAST_CONFIG, progress=False)  # no tissue: "empty"
    (out / "parts" / "small.json").unlink()  # a folder where no slide finished takes new settings...
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    owner = {"host": socket.gethostname(), "pid": holder.pid, "start": process_start_ticks(holder.pid)}
    owner["settings"] = settings_key(FAST_CONFIG)
    hold_lock(out / "locks", f".run-{socket.gethostname()}-{holder.pid}-0", owner)
    other = ExtractionConfig(pretrained=False, tile_size=32, target_mpp=2.0, n_aug=3, n_tiles_per_aug=8)
    try:
        with pytest.raises(
            ValueError,
            match=f"being extracted by another run \\(pid {holder.pid} .*\\(tile_size: 64 there, 32 now\\)",
        ):
            extract_slides([CMU], out, other, progress=False)  # ...unless a live run uses them
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((out / "extract_config.json").read_text())["tile_size"] == 64
    summary = extract_slides([CMU], out, other, progress=False)  # that run is gone: its lock is removed
    assert (
        summary.ok == [CMU.stem] and json.loads((out / "extract_config.json").read_text())["tile_size"] == 32
    )
    assert not list((out / "locks").glob("*.lock"))


@pytest.mark.slow
def test_two_runs_with_other_settings_started_together_one_refuses_having_written_nothing(tmp_path):
    slides = cohort(tmp_path / "slides")
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "giga_ssl_hf.features.extract",
        str(slides),
        "--out",
        str(out),
        "--no-progress",
    ]
    other = [*FAST[: FAST.index("--tile-size")], "--tile-size", "32", *FAST[FAST.index("--tile-size") + 2 :]]
    runs = [
        subprocess.Popen(
            [*command, *flags],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flags in (FAST, other)
    ]
    results = [run.communicate(timeout=600) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], results
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    loser_stderr = results[loser][1].strip()
    assert len(loser_stderr.splitlines()) == 1 and "other settings" in loser_stderr
    tile_size = (64, 32)[winner]
    assert json.loads((out / "extract_config.json").read_text())["tile_size"] == tile_size
    assert read_metadata(out / "exhaustive")["tile_size"] == tile_size
    single = {r["slide_id"]: r["patch_size_level0"] for r in rows(out / "exhaustive")}
    assert sorted(single) == ["a", "b", "c"] and len(set(single.values())) == 1  # one tile size throughout
    assert set(manifest(out)) == {"a", "b", "c", "small"} and not list((out / "locks").glob("*.lock"))


def test_shards_one_after_the_other_then_assembled_equal_one_process(tmp_path):
    slides = cohort(tmp_path / "slides")
    assert main([str(slides), "--out", str(tmp_path / "one"), "--no-progress", *FAST]) == 0
    out = tmp_path / "sharded"
    assert main([str(slides), "--out", str(out), "--shard", "0/2", "--no-progress", *FAST]) == 0
    assert not (out / "exhaustive").exists()  # share 1/2 has not run: nothing assembled yet
    first = json.loads((out / "shares" / "0-of-2.json").read_text())["slide_ids"]
    assert 0 < len(first) < 4 and set(manifest(out)) == set(first)
    assert main([str(slides), "--out", str(out), "--shard", "1/2", "--no-progress", *FAST]) == 0
    second = json.loads((out / "shares" / "1-of-2.json").read_text())["slide_ids"]
    assert sorted(first + second) == ["a", "b", "c", "small"]
    assert unfinished_shares(out, 2, json.loads((out / "shares" / "1-of-2.json").read_text())["key"]) == []
    assert_same_output(out, tmp_path / "one")  # the last share assembled

    for which in PASSES:
        shutil.rmtree(out / which)
    assert main(["--assemble", str(out)]) == 0
    assert_same_output(out, tmp_path / "one")
    assert not list((out / "locks").glob("*.lock"))


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_equal_one_process(tmp_path):
    slides = cohort(tmp_path / "slides")
    env = subprocess_env()
    args = [str(slides), "--no-progress", *FAST]
    one = subprocess.run(
        [sys.executable, "-m", "giga_ssl_hf.features.extract", *args, "--out", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
        "-m", "giga_ssl_hf.features.extract", *args, "--out", str(tmp_path / "two"),
    ]  # fmt: skip
    two = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    markers = [json.loads((tmp_path / "two" / "shares" / f"{i}-of-2.json").read_text()) for i in (0, 1)]
    shares = [set(m["slide_ids"]) for m in markers]
    assert shares[0] and shares[1] and not shares[0] & shares[1]  # both processes worked, on distinct slides
    assert shares[0] | shares[1] == {"a", "b", "c", "small"}
    assert_same_output(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
def test_a_process_killed_mid_slide_leaves_no_blocking_lock(tmp_path):
    slides = cohort(tmp_path / "slides")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "giga_ssl_hf.features.extract", str(slides), "--no-progress", *FAST]
    process = subprocess.Popen([*command, "--out", str(out)], env=subprocess_env(), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    held: list[Path] = []
    while not held and time.monotonic() < deadline:
        held = [p for p in (out / "locks").glob("*.lock") if not p.name.startswith(".")]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert held and os.path.lexists(held[0]), (
        "the process should have been killed while holding a slide's lock"
    )
    killed_slide = held[0].stem

    started = time.monotonic()
    summary = extract_slides([slides], out, FAST_CONFIG, progress=False)
    assert time.monotonic() - started < 60  # not waiting for any timeout
    assert not summary.busy and killed_slide in summary.ok + summary.empty + summary.skipped
    assert {r["status"] for r in manifest(out).values()} <= {"ok", "empty"} and len(manifest(out)) == 4
    assert not list((out / "locks").glob("*.lock")) and not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_a_share_waiting_for_the_others_returns_with_the_datasets(tmp_path):
    slides = cohort(tmp_path / "slides")
    out = tmp_path / "out"
    results = {}

    def first_share():
        results[0] = extract_slides(
            [slides], out, FAST_CONFIG, progress=False, shard_spec="0/2", wait_for_shares=True
        )

    waiting = threading.Thread(target=first_share)
    waiting.start()
    deadline = time.monotonic() + 120
    while not (out / "shares" / "0-of-2.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert waiting.is_alive()  # share 0/2 is done and waits for 1/2
    results[1] = extract_slides([slides], out, FAST_CONFIG, progress=False, shard_spec="1/2")
    waiting.join(timeout=120)
    assert not waiting.is_alive()
    assert set(results[0].datasets) == set(results[1].datasets) == set(PASSES)
    assert not results[0].waiting_for and [r["slide_id"] for r in rows(out / "exhaustive")] == ["a", "b", "c"]
