"""Run things once the daemon is ready (its start-up reconcile has published every
subdir), from a side thread, without touching the daemon: the leftovers report and the
demo's banner."""

from __future__ import annotations

import threading
from collections.abc import Callable

from conda_indexd.util.logs import get_logger

log = get_logger(__name__)


def after_ready(ready: threading.Event, stopping: threading.Event, *callbacks: Callable[[], object]) -> threading.Thread:
    """Start a thread that runs `callbacks` in order once `ready` is set (never if
    `stopping` comes first). A failing callback is logged and the next one still runs."""

    def wait() -> None:
        while not stopping.is_set():
            if ready.wait(0.2):
                for callback in callbacks:
                    if stopping.is_set():
                        return
                    try:
                        callback()
                    except Exception as exc:  # noqa: BLE001 - never takes the daemon down
                        log.error("after-ready step failed", error=f"{type(exc).__name__}: {exc}")
                return

    thread = threading.Thread(target=wait, name="after-ready", daemon=True)
    thread.start()
    return thread
