"""A TCP proxy of the tests' own that can cut a link the way a network partition does:
`stall()` stops forwarding in both directions without closing anything (bytes sent to it
are taken and held, so the sender's writes succeed and its reads wait); `resume()` sends
on what was held, in order, and whatever close came meanwhile. A connection opened during
a stall is accepted and held too: its first byte reaches the server after `resume()`.

Used between one daemon and PostgreSQL (tests/test_partition.py); faultproxy.py is the
HTTP-level proxy for S3 faults.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def _wait_flowing(self) -> bool:
        while not self._flowing.wait(0.2):
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
        if not self._wait_flowing():  # a partition: the connection goes nowhere for now
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
        for src, dst in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(src, dst), name="tcpproxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not self._wait_flowing():  # held, not forwarded, while stalled
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
