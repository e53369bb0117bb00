"""Facts about the package's shape, for design notes: long modules and functions, wide signatures, private
transformers / datasets names used, and what ``import giga_ssl_hf`` changes in ``os.environ`` and
``sys.meta_path``.

    python scripts/house_facts.py [PACKAGE_DIR]

Run it with the package directory's parent first on ``sys.path`` (``PYTHONPATH=.``) so that the import
measured is the tree's own.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

MODULE_LINES, FUNCTION_LINES, PARAMETERS = 400, 60, 10
# The modeling file is shipped as remote code in one piece, so it is exempt from the module length limit.
EXEMPT_MODULES = ("models/gigassl/modeling_gigassl.py",)
# transformers / datasets attributes that are theirs to change: the class attribute `register_for_auto_class`
# sets, and any name imported from a submodule that the library does not also export at its top level.
PRIVATE_ATTRIBUTES = re.compile(r"\b_auto_class\b")
# Reached through a submodule but documented as public (transformers' "Model outputs" reference page).
DOCUMENTED_SUBMODULE_NAMES = {"transformers.utils.ModelOutput"}
LIBRARY_IMPORT = re.compile(r"^\s*from\s+((transformers|datasets)\.[\w.]+)\s+import\s+([\w, ]+)", re.M)

IMPORT_PROBE = """
import os, sys
environ, finders = dict(os.environ), list(sys.meta_path)
import giga_ssl_hf
changed = sorted(k for k in set(environ) | set(os.environ) if environ.get(k) != os.environ.get(k))
added = [type(f).__name__ for f in sys.meta_path if f not in finders]
print("os.environ:", changed or "unchanged")
print("sys.meta_path:", added or "unchanged")
"""


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            count = len(arguments.posonlyargs + arguments.args + arguments.kwonlyargs)
            count -= bool(arguments.args) and arguments.args[0].arg in ("self", "cls")
            yield node, node.end_lineno - node.lineno + 1, count


def shape_facts(package: Path) -> list[str]:
    """One line per module over the line limit, function over the length limit, signature over the width limit."""
    lines = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        source = path.read_text()
        length = source.count("\n")
        if length > MODULE_LINES and relative not in EXEMPT_MODULES:
            lines.append(f"module over {MODULE_LINES} lines: {relative} ({length})")
        for function, function_lines, parameters in _functions(ast.parse(source)):
            where = f"{relative}:{function.lineno} {function.name}"
            if function_lines > FUNCTION_LINES:
                lines.append(f"function over {FUNCTION_LINES} lines: {where} ({function_lines})")
            if parameters >= PARAMETERS:
                lines.append(f"function with {PARAMETERS}+ parameters: {where} ({parameters})")
    return lines


def private_library_names(package: Path) -> list[str]:
    """``_auto_class`` set or read, and names imported from transformers / datasets submodules that the
    library's top level does not export (imports both libraries: seconds)."""
    import importlib

    lines = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        source = path.read_text()
        for number, line in enumerate(source.splitlines(), 1):
            if PRIVATE_ATTRIBUTES.search(line.split("#")[0]):
                lines.append(f"private attribute: {relative}:{number}: {line.strip()}")
        for match in LIBRARY_IMPORT.finditer(source):
            library = importlib.import_module(match.group(2))
            for name in (name.strip() for name in match.group(3).split(",")):
                if (
                    not hasattr(library, name)
                    and f"{match.group(1)}.{name}" not in DOCUMENTED_SUBMODULE_NAMES
                ):
                    lines.append(
                        f"name not exported by {match.group(2)}: {relative}: {match.group(1)}.{name}"
                    )
    return lines


def import_side_effects(package: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=package.parent,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package.parent)},
    )
    return result.stdout.splitlines()


def main() -> int:
    package = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "giga_ssl_hf")
    for line in shape_facts(package) + private_library_names(package) + import_side_effects(package):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
