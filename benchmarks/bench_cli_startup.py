"""How long `giga-ssl --help` and `giga-ssl COMMAND --help` take to print: this tree against an older commit.

The baseline is the same commands run from a temporary `git worktree` of ``--baseline-ref`` (default: the
commit before the CLI imported its libraries lazily), side by side in one run, median of ``--repeats``
wall times each. Run it on a quiet machine: start-up time is mostly disk and import work.

    python benchmarks/bench_cli_startup.py [--baseline-ref 3c9ab3d] [--repeats 5] [--commands extract train]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "3c9ab3d"  # before issue 10: transformers, torch and timm imported up front


def wall_time(tree: Path, argv: list[str], repeats: int) -> float | None:
    """Median seconds of ``python -m giga_ssl_hf.cli ARGV`` with ``tree``'s package first on the path (None
    when that tree has no such command)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "giga_ssl_hf.cli", *argv],
            cwd=tree,
            env=env,
            capture_output=True,
        )
        if result.returncode != 0:
            return None
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-ref", default=DEFAULT_BASELINE, help="git commit to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--commands", nargs="*", default=["extract", "train", "embed", "evaluate"])
    args = parser.parse_args(argv)
    cases = [["--help"]] + [[command, "--help"] for command in args.commands]
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(baseline), args.baseline_ref],
                       check=True)  # fmt: skip
        try:
            rows = []
            for case in cases:
                before = wall_time(baseline, case, args.repeats)
                after = wall_time(REPO, case, args.repeats)
                rows.append((" ".join(["giga-ssl", *case]), before, after))
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=True
            )
    print(f"median of {args.repeats} runs, seconds; baseline = {args.baseline_ref}")
    print(f"| command | baseline ({args.baseline_ref}) | this tree | speed-up |")
    print("|---|---|---|---|")
    for name, before, after in rows:
        if before is None:
            print(f"| `{name}` | - (no such command) | {after:.2f} | - |")
        else:
            print(f"| `{name}` | {before:.2f} | {after:.2f} | {before / after:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
