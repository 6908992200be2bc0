"""The terminal progress line of `conda-indexd index` (stderr, only on a terminal).

It is one rewritten line; before any log line or message it is erased (`end`), so the
two never share a terminal line, and the next update draws it again.
"""

from __future__ import annotations

import sys
import time

from conda_indexd.util import logs


class ProgressLine:
    """A single rewritten status line on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.last = 0.0
        self.subdir = ""
        self.shown = False
        if self.enabled:
            logs.before_output(self.end)

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (done < total and now - self.last < 0.2):
            return
        self.last = now
        sys.stderr.write(f"\r{self.subdir}: read {done}/{total} archives\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def end(self) -> None:
        """Erase the line if it is showing (before other output)."""
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False

    def clear(self) -> None:
        self.end()

    def close(self) -> None:
        self.end()
        if self.enabled:
            logs.before_output(None)
