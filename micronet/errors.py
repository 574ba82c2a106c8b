"""One exception type for every mistake a user can make.

The CLI turns a ``MicronetError`` into one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class MicronetError(Exception):
    """A user-facing error: bad variant, bad file, bad option. Its message is the whole explanation."""

    exit_code: int = 2
