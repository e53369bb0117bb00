"""Writes the command-option reference page at build time (mkdocs-gen-files), from the parsers themselves.

Each command's ``--help`` is generated from its settings dataclasses (``giga_ssl_hf/settings.py``), so the
page is that text, run at every build: it cannot drift from what the commands accept. A separate process per
command keeps the commands' logging set-up out of the MkDocs process; ``COLUMNS`` fixes argparse's width.
"""

from __future__ import annotations

import os
import subprocess
import sys

from giga_ssl_hf.cli import SUBCOMMANDS

PAGE = "reference/commands.md"
HELP_WIDTH = "80"  # fits the page's code blocks without a scroll bar

INTRO = """# Command options

Every option of every `giga-ssl` command, with its default. This page is generated when the site is built,
by running `giga-ssl COMMAND --help`; each command's options come from one settings dataclass
(`giga_ssl_hf/settings.py`), so a library call checks what the command line checks. Flags are spelt with
dashes (`--max-steps`); the underscore spelling (`--max_steps`) is accepted too. What each command reads
and writes: [The stages](stages.md).

| command | what it does |
|---|---|
"""


def command_help(command: str) -> str:
    """``giga-ssl COMMAND --help`` as the user's terminal would print it, at a fixed width."""
    completed = subprocess.run(
        [sys.executable, "-m", "giga_ssl_hf.cli", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": HELP_WIDTH},
    )
    return completed.stdout.rstrip()


def reference_page() -> str:
    table = "".join(f"| [`{name}`](#{name}) | {summary} |\n" for name, (_, summary) in SUBCOMMANDS.items())
    sections = [
        f"## {name}\n\n{summary}.\n\n```text\n{command_help(name)}\n```\n"
        for name, (_, summary) in SUBCOMMANDS.items()
    ]
    return INTRO + table + "\n" + "\n".join(sections)


def main() -> None:
    import mkdocs_gen_files

    with mkdocs_gen_files.open(PAGE, "w") as page:
        page.write(reference_page())


if __name__ in ("__main__", "<run_path>"):
    main()
