"""Every benchmark, each in a fresh process, printed as one report (under 10 minutes on a 2-core CPU).

    python benchmarks/run_all.py            # CPU settings sized for a 2-core machine
    python benchmarks/run_all.py --full     # the issue-sized runs (256 tiles per view: ~10 minutes alone)

The tables go to stdout; ``benchmarks/RESULTS.md`` keeps the latest run with its date, machine and commit.
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

QUICK = {
    "bench_ssl_step.py": ["--tiles", "5", "64", "--steps", "2"],
    "bench_views.py": ["--slides", "1000", "--steps", "4"],
    "bench_embed.py": ["--slides", "2"],
    "bench_extract.py": ["--quick", "--repeats", "1"],
    "bench_cli_startup.py": ["--repeats", "1", "--commands", "extract"],
    "bench_heatmap.py": ["--slides", "24", "--steps", "60", "--n-views", "20"],
    "bench_mil.py": ["--quick"],
    "bench_localisation.py": ["--slides", "60", "--maps", "10", "--steps", "60"],
    "bench_retrieval.py": ["--slides", "200", "--steps", "60"],
}
FULL = {
    "bench_ssl_step.py": ["--tiles", "5", "64", "256", "--steps", "1"],
    "bench_views.py": [],
    "bench_embed.py": ["--slides", "4"],
    "bench_extract.py": [],
    "bench_cli_startup.py": [],
    "bench_heatmap.py": [],
    "bench_mil.py": [],
    "bench_localisation.py": ["--occlusion"],
    "bench_retrieval.py": [],
}
PROGRESS = re.compile(r"(it/s|s/it|step/s|examples/s|slide/s|\d+%\|)")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="issue-sized settings (much longer)")
    args = parser.parse_args(argv)
    runs = FULL if args.full else QUICK
    report = [f"# giga-ssl-hf benchmarks, {date.today()}, commit {commit()}", f"machine: {machine()}", ""]
    failed = False
    start = time.perf_counter()
    for script, script_args in runs.items():
        began = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(HERE / script), *script_args],
            capture_output=True,
            text=True,
            cwd=HERE.parent,
        )
        lines = [line for line in result.stdout.splitlines() if not PROGRESS.search(line)]
        report += [
            f"## {script} {' '.join(script_args)}  ({time.perf_counter() - began:.0f} s)",
            "```",
            *lines,
            "```",
        ]
        if result.returncode:
            failed = True
            report += ["FAILED:", *result.stderr.splitlines()[-20:]]
        report.append("")
        print("\n".join(report[-len(lines) - 4 :]), flush=True)
    report.append(f"total: {time.perf_counter() - start:.0f} s")
    print(report[-1])
    (HERE / "last_run.md").write_text("\n".join(report) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
