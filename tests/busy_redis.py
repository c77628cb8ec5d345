"""A Redis busy for a while, as a slow command (a big DEL, KEYS *) makes it: commands sent
meanwhile wait unanswered in its socket, then run once it is free. Shared by the tests of
what the producer and the ingest answer when an answer never came."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

# Spins inside Redis for ARGV[1] ms; under busy-reply-threshold (5 s), so other clients
# are not told BUSY: they simply get no answer until it ends.
_SPIN = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat
  t = redis.call('TIME')
until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1]) * 1000
return 1
"""


@contextmanager
def busy(url: str, seconds: float) -> Iterator[None]:
    """Redis at `url` busy for `seconds` from entering the block; leaving waits until it is
    free again (and has run whatever was sent to it meanwhile)."""
    client = redis.Redis.from_url(url)
    client.ping()
    spinning = threading.Thread(target=client.eval, args=(_SPIN, 0, int(seconds * 1000)))
    spinning.start()
    # The script must have the server before the block's first command: until a PING goes
    # unanswered, it has not started (a loaded machine can take a while to get there).
    probe = redis.Redis.from_url(url, socket_timeout=0.05)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                probe.ping()
            except redis.TimeoutError:
                break
            time.sleep(0.01)
    finally:
        probe.close()
    try:
        yield
    finally:
        spinning.join()
        client.ping()  # queued behind everything sent during the busy time
        client.close()
