"""A TCP proxy of the tests' own that can cut a link the way a network partition does:
`stall()` stops forwarding in both directions without closing anything (bytes sent to it
are taken and held, so the sender's writes succeed and its reads wait); `resume()` sends
on what was held, in order, and whatever close came meanwhile. A connection opened during
a stall is accepted and held too: its first byte reaches the server after `resume()`.
`stall(answers_first=S)` cuts the server's answers first and the client's requests S
seconds later (an asymmetric cut: what is sent meanwhile is done by the server, and the
client hears of it only after `resume()`).
`stall_on(marker, then, after=, only_on=)` cuts both ways right before an answer holding
`marker` would be passed on (PostgreSQL's CommandComplete of a COMMIT: the commit is done,
the client does not know yet), and calls `then()`; with `after`, only when that
connection's answers held `after` since its last `marker` (a column name of the
transaction's query); with `only_on`, only on a connection whose answers ever held it
(a column name of a query only that session runs).

Used between one daemon and PostgreSQL (tests/test_partition.py); faultproxy.py is the
HTTP-level proxy for S3 faults.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()  # requests (client -> server) and new connections
        self._flowing.set()
        self._answering = threading.Event()  # answers (server -> client)
        self._answering.set()
        self._timer: threading.Timer | None = None
        self._marker: tuple[bytes, Callable[[], None], bytes, bytes] | None = None
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    @property
    def stalled(self) -> bool:
        return not self._answering.is_set()

    def stall(self, answers_first: float = 0.0) -> None:
        self._answering.clear()
        if answers_first > 0:
            self._timer = threading.Timer(answers_first, self._flowing.clear)
            self._timer.start()
        else:
            self._flowing.clear()

    def stall_on(self, marker: bytes, then: Callable[[], None], after: bytes = b"", only_on: bytes = b"") -> None:
        with self._lock:
            self._marker = (marker, then, after, only_on)

    def resume(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flowing.set()
        self._answering.set()

    def close(self) -> None:
        self._closed.set()
        self.resume()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def _wait(self, event: threading.Event) -> bool:
        while not event.wait(0.2):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), name="tcpproxy-connect", daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)
        if not self._wait(self._flowing):  # a partition: the connection goes nowhere for now
            return
        try:
            server = socket.create_connection(self.upstream, timeout=10)
            server.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.append(server)
            self.connections += 1
        for src, dst, gate in ((client, server, self._flowing), (server, client, self._answering)):
            threading.Thread(target=self._pump, args=(src, dst, gate), name="tcpproxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gate: threading.Event) -> None:
        primed = False  # this connection's answers held the marker's `after` since its last marker
        seen = b""  # this connection's answers so far, for `only_on` (the first 64 KiB)
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if gate is self._answering and len(seen) < 65536:
                seen += data
            if gate is self._answering and data and self._marker is not None:
                with self._lock:
                    armed = self._marker
                    marker, then, after, only_on = armed if armed is not None else (b"", None, b"", b"")
                    primed = primed or (after != b"" and after in data)
                    hit = armed is not None and marker in data and (primed or not after) and only_on in seen
                    if hit:
                        self._marker = None
                    elif marker and marker in data:
                        primed = False
                if hit and then is not None:
                    self.stall()
                    then()
            if not self._wait(gate):  # held, not forwarded, while stalled
                return
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                with contextlib.suppress(OSError):
                    src.close()
                return
