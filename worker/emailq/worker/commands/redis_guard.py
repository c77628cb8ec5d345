"""Stops the embedded Redis that `emailq dev` started, once `emailq dev` is gone.

The embedded Redis daemonizes (every `emailq` command shares it and it outlives each of
them), so it cannot be tied to `emailq dev` as the other parts are. When `emailq dev`
started it, it also starts this small process, tied to it by a `Lifeline`: when `emailq
dev` dies without stopping Redis itself (`kill -9`), this waits for the parts to go (so
that the worker can still give back what it held) and then shuts that Redis down. It
stops only the server `emailq dev` started (the same URL, whose password is random), never
one that a later command started in the same data directory.

Run by `emailq dev`: `python -m emailq.worker.commands.redis_guard FD DATA_DIR PID...`, with
the Redis URL on stdin (it holds the password, which `ps` would show in argv).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from emailq.store import embedded_redis
from emailq.worker.commands import lifeline


def main(argv: list[str]) -> None:
    fd, data_dir, url = int(argv[0]), Path(argv[1]), sys.stdin.readline().strip()
    parts = [int(pid) for pid in argv[2:]]
    # Ctrl-C is for `emailq dev`, which stops Redis itself; SIGTERM comes from the kernel
    # when `emailq dev` dies (the lifeline's death signal): then as on end-of-file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave)
    try:
        lifeline.wait_for_parent(fd)
    except SystemExit:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.monotonic() + lifeline.GRACE_SECONDS + 1
    while any(_alive(pid) for pid in parts) and time.monotonic() < deadline:
        time.sleep(0.1)
    if embedded_redis.stop(data_dir, url):
        print(f"emailq dev is gone: stopped the embedded Redis it started ({data_dir})", file=sys.stderr)


def _leave(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    main(sys.argv[1:])
