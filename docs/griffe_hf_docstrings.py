"""Griffe extension: reads the package's Hugging Face-style argument lines as plain Google style.

``name (`int`, *optional*, defaults to 256):`` is the transformers convention the model code follows (it
ships as Hub remote code); mkdocstrings would print its backticks and asterisks literally in the type.
Rewritten before parsing to ``name (int, optional, defaults to 256):``.
"""

from __future__ import annotations

import re

import griffe

ARGUMENT_LINE = re.compile(r"^(\s+\*{0,2}\w+ )\((.*`.*)\):$", re.MULTILINE)


def plain_argument_line(match: re.Match) -> str:
    return f"{match.group(1)}({match.group(2).replace('`', '').replace('*', '')}):"


class HFDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ARGUMENT_LINE.sub(plain_argument_line, obj.docstring.value)
