"""benchmarks/gpu_suite.py --dry-run: every code path of the GPU suite, on the CPU at tiny sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_dry_run(tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["device"] == "cpu"
    settings = {(row["section"], row["setting"]) for row in report["rows"]}
    assert {s for s, _ in settings} == {"ssl step", "extraction", "embed"}
    assert len([s for s in settings if s[0] == "ssl step"]) == 4  # eager / compile x fp32 / bf16
    assert len([s for s in settings if s[0] == "extraction"]) == 4  # 2 encoders x 2 decoders
    failed = [row for row in report["rows"] if row["value"] is None]
    assert not failed, failed
    assert all(row["value"] > 0 for row in report["rows"])
    assert len(report["checks"]) == 5 and all(check["passed"] for check in report["checks"])
    assert "max abs diff 0," in next(c["detail"] for c in report["checks"] if "CMU" in c["check"])
    assert "check PASS" in result.stdout and "tiles/s" in result.stdout
