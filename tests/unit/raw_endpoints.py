"""Endpoints below HTTP, on loopback, for the ways a connection goes wrong: each is a real
socket server whose handler does one bad thing with every connection it accepts."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Handler = Callable[[socket.socket], None]


@contextmanager
def raw_endpoint(handler: Handler) -> Iterator[str]:
    """Serves `handler` on a free loopback port; yields the URL to POST to."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            threading.Thread(target=_quietly, args=(handler, connection), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/send"
    finally:
        stop.set()
        listener.close()
        for connection in connections:
            connection.close()


@contextmanager
def full_backlog() -> Iterator[str]:
    """A port whose accept queue is full and never drained: a new connection's SYN is
    dropped, so connecting hangs until the client's connect timeout."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/send"
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(listener.getsockname())
        fillers.append(filler)
    time.sleep(0.05)
    try:
        yield url
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def closed_port() -> str:
    """A URL on a loopback port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/send"


def _quietly(handler: Handler, connection: socket.socket) -> None:
    try:
        handler(connection)
    except OSError:
        pass  # the client hung up first, as a client that timed out does


def _read_request(connection: socket.socket) -> None:
    connection.settimeout(2)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk


def never_answers(connection: socket.socket) -> None:
    _read_request(connection)
    time.sleep(10)


def closes_without_answering(connection: socket.socket) -> None:
    _read_request(connection)
    connection.close()


def resets(connection: socket.socket) -> None:
    _read_request(connection)
    # Linger 0: close() sends a RST instead of a FIN.
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def answers_garbage(connection: socket.socket) -> None:
    _read_request(connection)
    connection.sendall(b"HELLO, I AM NOT HTTP\r\n\r\n")
    connection.close()


def closes_mid_body(connection: socket.socket) -> None:
    _read_request(connection)
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it")
    connection.close()


def trickles_headers(connection: socket.socket) -> None:
    """One byte of the status line and headers every 50 ms: never a pause long enough
    for a per-read timeout, never done."""
    _read_request(connection)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 10_000:
        connection.sendall(bytes([byte]))
        time.sleep(0.05)


def trickles_body(connection: socket.socket) -> None:
    _read_request(connection)
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
    for _ in range(10_000):
        connection.sendall(b"z")
        time.sleep(0.05)
