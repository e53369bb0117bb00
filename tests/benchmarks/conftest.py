"""The benchmarks are scripts that import their siblings, so their folder is importable in these tests; the
process-wide switches a benchmark's ``main`` flips for a quiet run (logging, progress bars) are put back after
each test, so that later tests still see their logs."""

import logging
import os
import sys
from pathlib import Path

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.fixture(autouse=True)
def restore_process_switches():
    tqdm_disable = os.environ.get("TQDM_DISABLE")
    progress_bars = datasets.is_progress_bar_enabled()
    yield
    logging.disable(logging.NOTSET)
    if progress_bars:
        datasets.enable_progress_bars()
    if tqdm_disable is None:
        os.environ.pop("TQDM_DISABLE", None)
    else:
        os.environ["TQDM_DISABLE"] = tqdm_disable
