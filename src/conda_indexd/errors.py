"""The project's exceptions that cross a layer, in one place."""

from __future__ import annotations


class Unreadable(Exception):
    """A package file the store will not open (not a regular file, no permission).
    `reason` is a short label for metrics, `message` one line for people."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message
