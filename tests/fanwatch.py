"""Who wrote what in a folder, seen from outside the writers: fanotify (Linux >= 5.9, root)
reports the writing process's pid with each create, modify, rename and removal, so a test
can tell a deposed leader's writes from its successor's without asking either daemon.

`FolderAudit(folders)` marks each folder (events of its direct children) and records
`Write(at, pid, kind, folder, name)` with `at` the wall-clock time the event was read.
`FolderAudit.unavailable()` says why it cannot run here, or None.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

FAN_CLASS_NOTIF = 0x0
FAN_CLOEXEC = 0x1
FAN_REPORT_DFID_NAME = 0x400 | 0x800
FAN_MARK_ADD = 0x1
FAN_MODIFY = 0x2
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_EVENT_ON_CHILD = 0x08000000
AT_FDCWD = -100
KINDS = {FAN_MODIFY: "modify", FAN_MOVED_FROM: "moved-from", FAN_MOVED_TO: "moved-to", FAN_CREATE: "create", FAN_DELETE: "delete"}
_META = struct.Struct("IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid


class Write(NamedTuple):
    at: float  # time.time() when read
    pid: int
    kind: str
    folder: str
    name: str

    @property
    def temporary(self) -> bool:
        return self.name.startswith(".") and self.name.endswith(".tmp")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    return libc


class FolderAudit:
    @staticmethod
    def unavailable() -> str | None:
        try:
            fd = _libc().fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_REPORT_DFID_NAME, os.O_RDONLY)
        except (OSError, AttributeError) as exc:
            return f"fanotify not available: {exc}"
        if fd < 0:
            return f"fanotify_init: {os.strerror(ctypes.get_errno())} (needs root and Linux >= 5.9)"
        os.close(fd)
        return None

    def __init__(self, folders: list[Path]):
        libc = _libc()
        self.fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_REPORT_DFID_NAME, os.O_RDONLY)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "fanotify_init")
        self.handles: dict[bytes, str] = {}
        mask = FAN_MODIFY | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE | FAN_EVENT_ON_CHILD
        for folder in folders:
            if libc.fanotify_mark(self.fd, FAN_MARK_ADD, mask, AT_FDCWD, str(folder).encode()) != 0:
                raise OSError(ctypes.get_errno(), f"fanotify_mark {folder}")
            self.handles[_handle(folder)] = str(folder)
        self.writes: list[Write] = []
        self.listeners: list[Callable[[Write], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fanotify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(self.fd, 65536)
            at = time.time()
            off = 0
            while off + _META.size <= len(data):
                ev_len, _, _, meta_len, mask, _, pid = _META.unpack_from(data, off)
                folder, name = _dfid_name(data[off + meta_len : off + ev_len], self.handles)
                for bit, kind in KINDS.items():
                    if mask & bit:
                        write = Write(at, pid, kind, folder, name)
                        with self._lock:
                            self.writes.append(write)
                            listeners = list(self.listeners)
                        for listener in listeners:
                            listener(write)
                off += ev_len

    def by(self, pid: int, after: float = 0.0) -> list[Write]:
        with self._lock:
            return [w for w in self.writes if w.pid == pid and w.at > after]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.fd)


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


def _handle(folder: Path) -> bytes:
    """The folder's file handle, as fanotify reports it for events in it."""
    libc = ctypes.CDLL(None, use_errno=True)
    fh = _FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, str(folder).encode(), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
        raise OSError(ctypes.get_errno(), f"name_to_handle_at {folder}")
    return bytes(fh.f_handle[: fh.handle_bytes])


def _dfid_name(info: bytes, handles: dict[bytes, str]) -> tuple[str, str]:
    """(folder, name) from a DFID_NAME info record: header, fsid, file_handle, name."""
    if len(info) < 4 + 8 + 8:
        return "?", "?"
    _, _, length = struct.unpack_from("BBH", info, 0)
    handle_bytes, _ = struct.unpack_from("Ii", info, 12)
    handle = info[20 : 20 + handle_bytes]
    name = info[20 + handle_bytes : length].split(b"\0")[0]
    return handles.get(handle, "?"), name.decode(errors="replace")
