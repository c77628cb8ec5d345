"""Shared by the tests (import from here, not from conftest) and by the benchmarks
(`from tests.helpers import ...`: both live at the repository's root), so that a test and
the benchmark of the same property measure it the same way."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from emailq.store import census
from emailq.store.keys import Keys

# The `emailq` command of the Python running the tests.
EMAILQ = str(Path(sys.executable).with_name("emailq"))

# The keys of a deployment with the default EMAILQ_QUEUE and no key prefix.
KEYS = Keys("emailq", prefix="")

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}
# A bulk type by default (`EMAILQ_BULK_TYPES`): the bulk lane.
INVITATION = {"to": "team@example.com", "type": "OrganizationInvitation", "payload": {"link": "https://x/i"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """`predicate()`'s first true value, asked every `interval` seconds for `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_one_home(client: redis.Redis, keys: Keys = KEYS) -> census.Audit:
    """What `emailq status --check` checks: no email in two places, no orphaned list."""
    audit = census.audit(client, keys)
    assert audit.ok, f"in two places: {audit.in_two_places}; orphans: {audit.orphans}"
    return audit


def sign_in_waits(
    send: Callable[[], str],
    delivered_at: Callable[[str], float | None],
    count: int = 20,
    gap: float = 0.05,
    timeout: float = 10.0,
) -> list[float]:
    """Send `count` sign-in codes one at a time, each once the one before arrived and `gap`
    seconds passed, as users signing in do; their enqueue-to-delivery times, in seconds.

    `send()` enqueues one and returns its id; `delivered_at(id)` is the time (`time.time()`)
    the endpoint answered it 2xx, or None. Raises TimeoutError when one takes `timeout`.
    """
    waits = []
    for _ in range(count):
        sent = time.time()
        message_id = send()
        while (at := delivered_at(message_id)) is None:
            if time.time() - sent > timeout:
                raise TimeoutError(f"a sign-in code not delivered within {timeout:g}s (after {len(waits)} were)")
            time.sleep(0.01)
        waits.append(at - sent)
        time.sleep(gap)
    return waits


def busiest_window(times: Sequence[float], seconds: float = 1.0) -> int:
    """The most events in any window [t, t + seconds) (the busiest starts at an event)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def pace(times: Sequence[float]) -> float:
    """Events per second from the first to the last."""
    if len(times) < 2:
        return float("nan")
    return (len(times) - 1) / (max(times) - min(times))


class Ingest:
    """An `emailq serve` process on a free port, with the given EMAILQ_* settings."""

    def __init__(self, env: dict[str, str], cwd: Path, command: str = EMAILQ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"ingest-{self.port}.log"
        self.process = subprocess.Popen(
            [command, "serve", "--port", str(self.port)],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(self._up, 20, "the ingest to listen")

    def _up(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return httpx.get(self.url + "/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def post(self, body: bytes | None = None, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
        return httpx.post(self.url + "/", content=body, headers=headers or {}, **kwargs)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Dev:
    """A running `emailq dev`: its process (the leader of its own process group, as a
    shell's foreground job is), the ports of its parts, and its terminal output."""

    process: subprocess.Popen[bytes]
    log: Path
    ingest: int
    flower: int
    endpoint: int
    data_dir: Path
    stopped_in: float | None = None  # seconds from Ctrl-C or SIGTERM to its exit

    def parts(self) -> list[psutil.Process]:
        """Every process it started that runs now: its children (the worker, the ingest,
        Flower ...), theirs, and the embedded Redis (a daemon: nobody's child)."""
        found = psutil.Process(self.process.pid).children(recursive=True)
        try:
            found.append(psutil.Process(int((self.data_dir / "redis.pid").read_text())))
        except (FileNotFoundError, psutil.NoSuchProcess):
            pass
        return found

    def shown(self) -> str:
        """What its terminal showed so far."""
        return self.log.read_text()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the ingest and Flower answer; fails at once if `emailq dev` exits."""

        def answers(url: str) -> bool:
            assert self.process.poll() is None, self.shown()
            try:
                return httpx.get(url).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(lambda: answers(f"http://127.0.0.1:{self.ingest}/readyz"), timeout, "the ingest")
        wait_for(lambda: answers(f"http://127.0.0.1:{self.flower}/healthcheck"), timeout, "Flower")

    def interrupt(self, timeout: float = 40) -> int:
        """Ctrl-C, as a terminal sends it (SIGINT to the whole group); its exit status."""
        return self._stop_by(lambda: os.killpg(self.process.pid, signal.SIGINT), timeout)

    def terminate(self, timeout: float = 40) -> int:
        """SIGTERM to `emailq dev` alone, as `kill` or `timeout` sends it; its exit status."""
        return self._stop_by(self.process.terminate, timeout)

    def _stop_by(self, send: Callable[[], None], timeout: float) -> int:
        sent = time.monotonic()
        send()
        status = self.process.wait(timeout)
        self.stopped_in = time.monotonic() - sent
        return status


@contextmanager
def running_dev(data_dir: Path, cwd: Path, sigint: Any = signal.SIG_DFL) -> Iterator[Dev]:
    """`emailq dev` run in `cwd` on free ports, its embedded Redis under `data_dir`;
    killed, with every process it started, if still running at the end. It starts with
    SIGINT set to `sigint`: by default as an interactive shell starts a foreground job,
    whatever the tests' own runner ignores (`SIG_IGN`: as a script's `command &` does)."""
    ingest, flower, endpoint = free_port(), free_port(), free_port()
    log = cwd / "dev.log"
    process = subprocess.Popen(
        [EMAILQ, "dev", "--ingest-port", str(ingest), "--flower-port", str(flower), "--endpoint-port", str(endpoint)],
        env={**os.environ, "EMAILQ_DATA_DIR": str(data_dir)},
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    try:
        yield Dev(process, log, ingest, flower, endpoint, data_dir)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def running(process: psutil.Process) -> bool:
    """Whether `process` still runs: neither gone nor a zombie waiting to be reaped."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(processes: Sequence[psutil.Process], timeout: float, what: str) -> float:
    """Until none of `processes` runs: the seconds that took. Fails naming those still
    running after `timeout`."""
    started = time.monotonic()
    try:
        wait_for(lambda: not any(running(p) for p in processes), timeout, what, interval=0.1)
        return time.monotonic() - started
    except AssertionError:
        left = [f"{p.pid} {' '.join(p.cmdline()[:6])}" for p in processes if running(p)]
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; still running: {left}") from None


FLOWER_AUTH = ("ops", "flower-pass-1")


@contextmanager
def running_flower(env: dict[str, str], cwd: Path, auth: tuple[str, str] = FLOWER_AUTH, more_users: str = "", url_prefix: str = "") -> Iterator[str]:
    """`emailq flower` with basic auth `auth` (and `more_users`, "user:password,…"), on a
    free port, under Flower's `url_prefix` if given: yields its URL (prefix included). Its
    log is `cwd / "flower.log"`."""
    port = free_port()
    log = cwd / "flower.log"
    process = subprocess.Popen(
        [EMAILQ, "flower", "--port", str(port), *([f"--url_prefix={url_prefix}"] if url_prefix else [])],
        env={**os.environ, **env, "EMAILQ_FLOWER_BASIC_AUTH": ",".join(filter(None, [":".join(auth), more_users]))},
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}" + (f"/{url_prefix}" if url_prefix else "")

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/healthcheck").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 30, "Flower to listen")
        yield url
    finally:
        process.terminate()
        process.wait(10)


DLQ_REASONS = ("rejected", "exhausted", "expired", "malformed", "error")
DLQ_TYPES = ("SignIn", "Register", "ForgotPassword", "OrganizationInvitation", "Generic")


def fill_dead_letters(client: redis.Redis, n: int, keys: Keys = KEYS, start: float | None = None, prefix: str = "dl") -> list[str]:
    """n dead letters written straight into Redis as `DeadLetters.add` wrote them before the
    reason/type indexes (hash + main index, in pipelines of 10,000; the indexes marked not
    built), built as the worker
    builds them: entry i has reason DLQ_REASONS[i % 5], type DLQ_TYPES[(i // 5) % 5],
    status 422 + i % 3 (none when expired), recipient user<i>@example.com, and failed
    1 ms after entry i - 1. Returns the ids, newest first."""
    import json
    from dataclasses import asdict

    from emailq.message import Email, Envelope
    from emailq.worker.places.dead_letters import DeadLetter

    start = time.time() - 3600 if start is None else start
    envelope = Envelope.wrap(Email(to="x@example.com", type="SignIn", payload={"code": "918273", "locale": "en"}), 900, id="x").dump()
    ids = [f"{prefix}-{i:07d}" for i in range(n)]
    for first in range(0, n, 10000):
        entries, index = {}, {}
        for i in range(first, min(n, first + 10000)):
            failed_at = start + i * 1e-3
            reason = DLQ_REASONS[i % 5]
            status = None if reason == "expired" else 422 + i % 3
            message = {**envelope["message"], "to": f"user{i}@example.com", "type": DLQ_TYPES[(i // 5) % 5]}
            entry = DeadLetter(
                id=ids[i],
                reason=reason,
                detail=f"HTTP {status}" if status else "past its expiry",
                status=status,
                response_excerpt='{"error":"template not found"}' if status else "",
                attempts=1,
                first_attempt_at=failed_at,
                last_attempt_at=failed_at,
                failed_at=failed_at,
                history=[{"at": failed_at, "status": status}] if status else [],
                envelope={**envelope, "id": ids[i], "message": message},
            )
            entries[ids[i]], index[ids[i]] = json.dumps(asdict(entry)), failed_at
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(keys.dlq, mapping=entries)
            pipe.zadd(keys.dlq_index, index)
            pipe.delete(keys.dlq_indexed)  # as before the indexes existed
            pipe.execute()
    return ids[::-1]
