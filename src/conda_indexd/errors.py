"""The root of the project's exceptions, and the ones that cross a layer.

Every exception conda-indexd raises on purpose derives from `IndexdError` and carries one
line for people (`str(exc)`). The command line maps each class to its exit status in one
table (cli/main.py, `EXIT_CODES`), so every failure a user can cause ends in one line and
a known status, never a traceback. The classes live beside the seam that raises them
(StoreError in stores/base.py, CacheError in caches/base.py, ...); this module holds the
root and the ones the lowest layers share.
"""

from __future__ import annotations


class IndexdError(Exception):
    """Something conda-indexd refuses or cannot do, said in one line."""


class Unreadable(IndexdError):
    """A package file the store will not open (not a regular file, no permission).
    `reason` is a short label for metrics, `message` one line for people."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Fenced(IndexdError):
    """This process is not (or no longer) the leader: the step was not done."""
