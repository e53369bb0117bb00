"""The documentation tells the truth: its snippets run, its commands and flags exist, CI runs its commands.

The site itself is built with ``mkdocs build --strict`` in ``.ci/run`` (broken links and API references fail
there); these tests cover what a build cannot see.
"""

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

from giga_ssl_hf.cli import SUBCOMMANDS
from giga_ssl_hf.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
PAGES = [REPO_ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
NOT_RUN = "<!-- not run:"
FIRST_RUN = DOCS / "tutorials" / "first-run.md"
# The demo's own settings take minutes of CPU; these keep its outputs' shape (same stages, folders, classes).
SMALL_DEMO = [
    "--slides-per-class",
    "3",
    "--train.max-steps",
    "6",
    "--train.batch-size",
    "4",
    "--embed.n-views",
    "4",
    "--evaluate.folds",
    "2",
]
MODULE_COMMANDS = {module: name for name, (module, _) in SUBCOMMANDS.items()}


def _load_reference_generator():
    spec = importlib.util.spec_from_file_location("gen_command_reference", DOCS / "gen_command_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def code_blocks(page: Path, language: str) -> list[tuple[str, bool]]:
    """The ``language`` fenced blocks of a page, each with whether it is marked not to run."""
    pattern = re.compile(rf"(<!-- not run:[^\n]*-->\n)?```{language}\n(.*?)```", re.S)
    return [(match.group(2), match.group(1) is None) for match in pattern.finditer(page.read_text())]


def shell_commands(page: Path) -> list[tuple[str, list[str]]]:
    """Each ``giga-ssl`` (or ``-m giga_ssl_hf...``) invocation in a page's bash blocks: (command, its words)."""
    found = []
    for block, _ in code_blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" #")[0], posix=True)
            for i, word in enumerate(words):
                command = words[i + 1] if word == "giga-ssl" and i + 1 < len(words) else None
                if word == "-m" and i + 1 < len(words):
                    command = MODULE_COMMANDS.get(words[i + 1])
                if command:
                    found.append((command, words[i + 2 :]))
                    break
    return found


def _help_in_process(name: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(SystemExit):
        cli_main([name, "--help"])
    return output.getvalue()


@pytest.fixture(scope="module")
def command_helps() -> dict[str, str]:
    return {name: _help_in_process(name) for name in SUBCOMMANDS}


def test_readme_links_into_the_docs_exist():
    links = re.findall(r"\]\(([^)#]+)", (REPO_ROOT / "README.md").read_text())
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if not link.startswith("http"):
            assert (REPO_ROOT / link).is_file(), link


def test_readme_and_docs_test_command_is_what_ci_runs():
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    for page in (REPO_ROOT / "README.md", DOCS / "development.md"):
        test_blocks = [block for block, _ in code_blocks(page, "bash") if "pytest" in block]
        assert test_blocks, f"{page.name} shows no test command"
        assert test_blocks[0].strip() in ci_lines, f"{page.name}'s test command is not the one .ci/run runs"
    assert 'python -m pip install -q -e ".[dev,docs,search]"' in ci_lines
    assert "mkdocs build --strict" in " ".join(ci_lines)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_shell_snippets_use_real_commands_and_flags(page, command_helps):
    for command, words in shell_commands(page):
        assert command in SUBCOMMANDS, f"{page.name}: giga-ssl {command} is not a command"
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(words)):
            assert re.search(rf"{flag}(?![\w-])", command_helps[command]), (
                f"{page.name}: giga-ssl {command} {flag}"
            )


@pytest.mark.slow
def test_command_reference_is_every_commands_help():
    generator = _load_reference_generator()
    page = generator.reference_page()
    for name in SUBCOMMANDS:
        assert (
            f"\n## {name}\n\n{SUBCOMMANDS[name][1]}.\n\n```text\n{generator.command_help(name)}\n```" in page
        )
    assert "--max-steps" in page and "--slides-csv" in page


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory, monkeypatch_module):
    """A folder holding ``giga_ssl_demo`` made by the first tutorial's commands (a smaller demo)."""
    cwd = tmp_path_factory.mktemp("docs")
    monkeypatch_module.chdir(cwd)
    for command, words in shell_commands(FIRST_RUN):
        extra = SMALL_DEMO if command == "demo" else []
        assert cli_main([command, *words, *extra]) == 0, f"{command} {words}"
    return cwd


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


PYTHON_PAGES = [page for page in PAGES if code_blocks(page, "python")]


@pytest.mark.slow
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_python_snippets_run(page, demo_folder):
    namespace = {"__name__": "__docs__"}
    blocks = [block for block, runs in code_blocks(page, "python") if runs]
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    if page.name == "README.md":
        assert namespace["slide_embedding"].shape == (1, namespace["model"].config.hidden_dim)
        assert len(namespace["ids"]) == len(namespace["embeddings"]) > 0


@pytest.mark.slow
def test_heatmap_of_the_tutorial_was_written(demo_folder):
    assert (demo_folder / "giga_ssl_demo" / "heatmaps" / "synthetic_lesion_0.png").stat().st_size > 0
