"""Ctrl-C during `giga-ssl extract`: one line, exit status 130, nothing half-written, and the rerun resumes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from .test_extract_errors import CMU, FAST


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in "abcd":
        (slides / f"{name}.svs").symlink_to(CMU)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "giga_ssl_hf.cli",
        "extract",
        str(slides),
        "--out",
        str(out),
        "--no-progress",
    ]
    command += [*FAST, "--n-aug", "40"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # A job started in the background (CI under nohup, `cmd &`) inherits SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: give the child the disposition a terminal's foreground process has.
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    first_part = out / "parts" / "a.json"
    deadline = time.monotonic() + 120
    while not first_part.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first_part.exists(), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "giga-ssl extract: error: interrupted; rerun the same command to resume (finished slides are kept)"
    )
    committed = sorted(p.stem for p in (out / "parts").glob("*.json"))
    assert committed and committed != list("abcd")  # interrupted part-way
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # no half-written file left behind

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(committed)} already done" in rerun.stdout
    assert sorted(p.stem for p in (out / "parts").glob("*.json")) == list("abcd")
