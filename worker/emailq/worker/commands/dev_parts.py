"""The processes `emailq dev` runs, started tied to it and stopped within seconds.

Each part runs in a session of its own (Ctrl-C reaches `emailq dev` alone, which stops
the parts itself) and is tied to `emailq dev` by a `Lifeline`, so that it also goes when
`emailq dev` is killed. Stopping is SIGTERM to each part, then, for whatever is still
running `STOP_SECONDS` later, SIGKILL to its whole process group: a part reconnecting to
Redis, or Flower waiting on its threads, must not keep the terminal for long.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from emailq.worker.commands.lifeline import Lifeline

# A worker's warm shutdown (it gives back what it holds), uvicorn's and Flower's each take
# about a second on an idle machine; a loaded one gets a few times that.
STOP_SECONDS = 5.0
# After SIGKILL only the kernel is left to act: reaping takes milliseconds.
KILL_SECONDS = 2.0

EMAILQ = [sys.executable, "-m", "emailq.worker"]


@dataclass
class Parts:
    """The parts started so far, by name, in the order they were started."""

    lifeline: Lifeline = field(default_factory=Lifeline)
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    guard: subprocess.Popen[bytes] | None = None

    def start(self, name: str, args: list[str], env: dict[str, str], out: IO[bytes] | None) -> None:
        """`emailq ARGS` as the part `name`, its output to `out` (None: this terminal)."""
        argv = [*EMAILQ, "--lifeline", str(self.lifeline.fd), *args]
        stderr = subprocess.STDOUT if out is not None else None
        self.running[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=stderr, **self.lifeline.popen_options())

    def guard_redis(self, data_dir: Path, url: str) -> None:
        """Start the process that stops the embedded Redis at `url` if this one dies (see
        `redis_guard`); it exits by itself when this process does."""
        pids = [str(process.pid) for process in self.running.values()]
        argv = [sys.executable, "-m", "emailq.worker.commands.redis_guard", str(self.lifeline.fd), str(data_dir), *pids]
        self.guard = subprocess.Popen(argv, stdin=subprocess.PIPE, **self.lifeline.popen_options())
        assert self.guard.stdin is not None
        self.guard.stdin.write(url.encode() + b"\n")
        self.guard.stdin.close()

    def exited(self) -> tuple[str, int] | None:
        """The first part found exited, with its exit status; None while all run."""
        for name, process in self.running.items():
            if process.poll() is not None:
                return name, process.returncode
        return None

    def stop(self) -> list[str]:
        """Stop every part (see the module's docstring); the names of those killed."""
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        _wait_all(self.running.values(), STOP_SECONDS)
        killed = [name for name, process in self.running.items() if process.poll() is None]
        for name in killed:
            try:
                os.killpg(self.running[name].pid, signal.SIGKILL)  # it leads its own group
            except ProcessLookupError:
                pass  # it exited in between
        _wait_all(self.running.values(), KILL_SECONDS)
        return killed

    def release(self) -> None:
        """Once the parts are stopped (and Redis with them, when this process started
        it): cut the lifeline and wait for the guard, so that nothing outlives the command."""
        self.lifeline.close()
        if self.guard is not None:
            _wait_all([self.guard], KILL_SECONDS)
            if self.guard.poll() is None:
                self.guard.kill()
                self.guard.wait()


def _wait_all(processes: Iterable[subprocess.Popen[bytes]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not listen on `host:port` now (port 0: any free one)."""
    if port == 0:
        return False
    with socket.socket() as probe:
        # As the parts' servers bind (uvicorn, Tornado and http.server all set it): a port
        # held only by connections closing (TIME_WAIT) is free for them too.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False
