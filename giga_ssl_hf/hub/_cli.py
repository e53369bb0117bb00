"""What the hub commands share: bad inputs end in a one-line message and exit status 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_command(prog: str, action: Callable[[], str]) -> int:
    """Run ``action`` and print its one-line result, or ``prog: error: ...`` for a user-fixable error."""
    try:
        result = action()
    except (ValueError, OSError) as error:
        # Bad inputs are the user's to fix: a one-line message, not a traceback.
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(result)
    return 0
