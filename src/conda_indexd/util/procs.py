"""Forked helper processes: what every process this package forks does first."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Be killed when the process that forked this one dies. A forked process inherits
    every open file of its parent, the channel's lock among them (an flock is held while
    any copy of its file is open): after a kill -9 of the daemon, workers still reading
    their batch kept the lock, and a restart right away found the channel "being
    indexed" (test_daemon's kill -9 rounds, seen once in CI)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the process ends with its work
        return
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)
