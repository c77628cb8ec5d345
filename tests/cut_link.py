"""A TCP proxy in front of Redis that can lose one reply on the wire, as a proxy or a load
balancer resetting a connection does: once armed, the next command carrying `marker`
reaches Redis (which runs it), and the connection is reset before the answer comes back.
Every other connection through it is untouched."""

from __future__ import annotations

import socket
import struct
import threading
import time


class CutLink:
    def __init__(self, upstream_port: int, marker: bytes):
        self.upstream = ("127.0.0.1", upstream_port)
        self.marker = marker
        self.armed = threading.Event()
        self.cut = threading.Event()  # set once a reply was lost
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="cut-link", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            hold = threading.Event()  # set: what Redis answers on this connection is dropped
            threading.Thread(target=self._pump, args=(client, server, True, hold), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False, hold), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_redis: bool, hold: threading.Event) -> None:
        try:
            while chunk := source.recv(65536):
                cutting = to_redis and self.armed.is_set() and self.marker in chunk
                if cutting:
                    self.armed.clear()
                    hold.set()
                if hold.is_set() and not to_redis:
                    continue
                target.sendall(chunk)
                if cutting:
                    time.sleep(0.2)  # Redis runs it; its answer is never passed on
                    for end in (source, target):
                        end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        end.close()
                    self.cut.set()
                    return
        except OSError:
            pass
        for end in (source, target):
            try:
                end.close()
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
