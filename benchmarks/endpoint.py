"""The stand-in email API: a raw asyncio HTTP/1.1 server, run in its own process.

It answers every POST with 200 after a fixed latency and records, per request, the
message's key and the time it answered (the moment the sender got its 2xx: delivered).
Two failure modes, for the benchmarks of a partly failing endpoint: `--fail-share`
answers that share of requests 503 at random; `--fail-key-share` answers 500 forever to
the emails whose key falls in that share (`fails_forever`). Failures are not recorded.
The key is the `Idempotency-Key` header (emailq), else the payload's `bid` (the other
contenders, whose naive POST carries no header). A few control paths serve the
orchestrator: `GET /_count`, `GET /_dump` (the records as JSON, then cleared), `GET
/_when/<key>` (when that key was first answered 2xx, or an empty body).

Raw asyncio (uvloop when installed) rather than a framework, so that the endpoint is
never the bottleneck: it answers well over 10k requests/s on one core.

    python -m benchmarks.endpoint --port 8000 --latency-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import zlib

_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
_BROKEN = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
_BID = b'"bid":"'


def fails_forever(key: str, share: float) -> bool:
    """Whether the email with this key always fails (deterministic, so the runner knows)."""
    return share > 0 and zlib.crc32(key.encode()) % 10000 < share * 10000


class Records:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.times: list[float] = []
        self.first: dict[bytes, float] = {}

    def add(self, key: bytes, at: float) -> None:
        self.keys.append(key.decode("ascii", "replace"))
        self.times.append(at)
        self.first.setdefault(key, at)

    def dump(self) -> bytes:
        data = json.dumps({"keys": self.keys, "times": self.times}).encode()
        self.keys, self.times, self.first = [], [], {}
        return data

    def when(self, key: bytes) -> bytes:
        at = self.first.get(key)
        return b"" if at is None else repr(at).encode()


def _reply(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


class HttpProtocol(asyncio.Protocol):
    def __init__(self, records: Records, latency: float, loop: asyncio.AbstractEventLoop, fail_share: float = 0.0, fail_key_share: float = 0.0):
        self.records = records
        self.latency = latency
        self.fail_share = fail_share
        self.fail_key_share = fail_key_share
        self.loop = loop
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            length, key = 0, b""
            lines = head.split(b"\r\n")
            request_line = lines[0]
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"idempotency-key":
                    key = value.strip()
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self.handle(request_line, key, body)

    def handle(self, request_line: bytes, key: bytes, body: bytes) -> None:
        if request_line.startswith(b"GET /_"):
            self.control(request_line)
            return
        if not key:
            start = body.find(_BID)
            if start >= 0:
                start += len(_BID)
                key = body[start : body.find(b'"', start)]
        if self.latency:
            self.loop.call_later(self.latency, self.answer, key)
        else:
            self.answer(key)

    def answer(self, key: bytes) -> None:
        if self.transport is None:
            return  # the sender hung up before the answer: not delivered
        if self.fail_key_share and fails_forever(key.decode("ascii", "replace"), self.fail_key_share):
            self.transport.write(_BROKEN)
            return
        if self.fail_share and random.random() < self.fail_share:
            self.transport.write(_UNAVAILABLE)
            return
        self.records.add(key, time.time())
        self.transport.write(_OK)

    def control(self, request_line: bytes) -> None:
        path = request_line.split()[1]
        if path == b"/_count":
            body = str(len(self.records.keys)).encode()
        elif path == b"/_dump":
            body = self.records.dump()
        elif path.startswith(b"/_when/"):
            body = self.records.when(path[len(b"/_when/") :])
        else:
            assert self.transport is not None
            self.transport.write(_reply("404 Not Found", b"{}"))
            return
        assert self.transport is not None
        self.transport.write(_reply("200 OK", body))


async def serve(port: int, latency: float, fail_share: float, fail_key_share: float) -> None:
    loop = asyncio.get_running_loop()
    records = Records()
    server = await loop.create_server(lambda: HttpProtocol(records, latency, loop, fail_share, fail_key_share), "127.0.0.1", port, backlog=4096)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fail-share", type=float, default=0.0, help="share of requests answered 503")
    parser.add_argument("--fail-key-share", type=float, default=0.0, help="share of emails answered 500 forever")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(args.port, args.latency_ms / 1000, args.fail_share, args.fail_key_share))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
