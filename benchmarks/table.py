"""One text-table format for every benchmark: columns separated by `` | ``, a rule under the header."""

from __future__ import annotations

import re

_SPEC = re.compile(r"^(?P<align>[<>^])?(?P<width>\d+)?(?P<rest>.*)$")


def text_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``rows`` as a fixed-width table; ``columns`` are ``(key, format spec)``, e.g. ``("ms/step", ">9.1f")``:
    the spec formats the values, its alignment and width the header too. A spec ending in ``x`` appends an
    ``x`` to the number (ratios); a ``None`` value prints as FAILED."""
    header, formats = [], []
    for key, spec in columns:
        parts = _SPEC.match(spec.removesuffix("x")).groupdict()
        align, width = parts["align"] or "<", max(int(parts["width"] or 0), len(key))
        header.append(f"{key:{align}{width}}")
        formats.append((key, align, width, parts["rest"], spec.endswith("x")))
    lines = [" | ".join(header)]
    lines.append("-" * len(lines[0]))
    for row in rows:
        cells = []
        for key, align, width, rest, ratio in formats:
            value = row[key]
            text = "FAILED" if value is None else format(value, rest) + ("x" if ratio else "")
            cells.append(f"{text:{align}{width}}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)
