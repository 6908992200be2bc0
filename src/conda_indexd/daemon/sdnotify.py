"""sd_notify without a library: one datagram to $NOTIFY_SOCKET; nothing when it is unset.

The command line reads systemd's variables ($NOTIFY_SOCKET, $WATCHDOG_USEC, $WATCHDOG_PID)
into the WatchConfig; the daemon makes one `Notifier` from them."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Notifier:
    address: str | None = None  # $NOTIFY_SOCKET
    watchdog_usec: str | None = None  # $WATCHDOG_USEC
    watchdog_pid: str | None = None  # $WATCHDOG_PID

    def notify(self, message: str) -> bool:
        address = self.address
        if not address:
            return False
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(address)
                sock.sendall(message.encode())
        except OSError:
            return False
        return True

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC in seconds, when systemd's watchdog is on for this process."""
        usec, pid = self.watchdog_usec, self.watchdog_pid
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None
