"""files.py, the one home of atomic writes: a failed write leaves the previous content and nothing else."""

import os
import subprocess
import sys

import pytest

from giga_ssl_hf.files import atomic_file, atomic_path, staged_directory, temporary_path, write_json


class Boom(Exception):
    pass


def test_atomic_file_and_path_leave_the_old_file_on_error(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    before = target.read_bytes()
    with pytest.raises(Boom), atomic_file(target) as handle:
        handle.write('{"v": ')
        raise Boom
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["a.json"]
    with atomic_path(target) as tmp:  # a library that wants a path
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]


def test_staged_directory_appears_complete_or_not_at_all(tmp_path):
    final = tmp_path / "out"
    with staged_directory(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(Boom), staged_directory(final) as tmp:
        (tmp / "a").write_text("2")
        (tmp / "b").write_text("half")
        raise Boom
    assert os.listdir(tmp_path) == ["out"] and os.listdir(final) == ["a"] and (final / "a").read_text() == "1"
    with staged_directory(final) as tmp:
        (tmp / "b").write_text("2")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(final) == ["b"]


def test_staged_directory_removes_what_dead_writers_left_never_a_live_one(tmp_path):
    final = tmp_path / "out"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_tmp = tmp_path / f"out.tmp~{temporary_path(final).name.split('~')[1]}~{int(dead.stdout)}"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = tmp_path / f"out.tmp~{temporary_path(final).name.split('~')[1]}~{live.pid}"
        for leftover in (tmp_path / "out.tmp", tmp_path / "out.tmp2", dead_tmp, live_tmp):
            leftover.mkdir()
            (leftover / "x").write_text("half")
        with staged_directory(final) as tmp:
            (tmp / "a").write_text("1")
        assert sorted(os.listdir(tmp_path)) == sorted(["out", live_tmp.name])
    finally:
        live.kill()
        live.wait()
