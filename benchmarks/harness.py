"""The real parts a benchmark run needs: a Redis server, endpoints, worker processes, and
a sampler of a process tree's memory. Every process started here is stopped by its own
process group, never by name."""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

from emailq.store.embedded_redis import redis_server_binary
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child: no EMAILQ_*/BENCH_* from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMAILQ_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Proc:
    """A child process in its own session (so its whole tree can be stopped), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path):
        self.name = name
        self.log = workdir / f"{name}.log"
        self._out = self.log.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=workdir,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.popen.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = 60) -> None:
        """Until a Celery worker's log says it is ready (`celery@host ready.`)."""

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            return b" ready." in self.log.read_bytes()

        wait_for(ready, timeout, f"{self.name} to be ready", interval=0.1)

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._out.close()


class RedisServer:
    """A redis-server of the benchmark's own on a free port; persistence off (no disk noise)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.proc = Proc(
            "redis",
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(workdir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                "64",
            ],
            clean_env(),
            workdir,
        )
        wait_for(self._answers, 10, "redis-server to start")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url(), socket_timeout=0.5).ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def stop(self) -> None:
        self.proc.stop()


class Endpoint:
    """`benchmarks.endpoint` in its own process: the email API, at a fixed latency."""

    def __init__(self, latency_ms: float, workdir: Path, fail_share: float = 0.0, fail_key_share: float = 0.0):
        self.latency_ms = latency_ms
        self.fail_key_share = fail_key_share
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/send"
        self.proc = Proc(
            f"endpoint-{latency_ms:g}ms-{fail_share:g}-{fail_key_share:g}",
            [
                PYTHON,
                "-m",
                "benchmarks.endpoint",
                "--port",
                str(self.port),
                "--latency-ms",
                str(latency_ms),
                "--fail-share",
                str(fail_share),
                "--fail-key-share",
                str(fail_key_share),
            ],
            clean_env(),
            workdir,
        )
        wait_for(self._answers, 10, "the endpoint to start")

    def _get(self, path: str) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().read()
        finally:
            conn.close()

    def _answers(self) -> bool:
        try:
            self._get("/_count")
            return True
        except OSError:
            return False

    def count(self) -> int:
        return int(self._get("/_count"))

    def collect(self) -> tuple[list[str], list[float]]:
        data = json.loads(self._get("/_dump"))
        return data["keys"], data["times"]

    def delivered_at(self, key: str) -> float | None:
        """When the endpoint first answered `key` 2xx (None: not yet)."""
        body = self._get(f"/_when/{key}")
        return float(body) if body else None

    def stop(self) -> None:
        self.proc.stop()


class FileSink:
    """What floor tasks noted: `<bid> <time>` lines in files under one directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("floor-*.log"))

    def count(self) -> int:
        return sum(path.read_bytes().count(b"\n") for path in self._files())

    def collect(self) -> tuple[list[str], list[float]]:
        keys, times = [], []
        for path in self._files():
            for line in path.read_text().splitlines():
                key, _, at = line.partition(" ")
                keys.append(key)
                times.append(float(at))
            # The tasks append (O_APPEND) and are idle now: truncating starts the next run.
            os.truncate(path, 0)
        return keys, times


class PeakRss:
    """Samples a process tree's RSS in the background; `peak` is the largest sum seen."""

    def __init__(self, proc_tree: Callable[[], int], interval: float = 0.05):
        self._measure = proc_tree
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0

    def __enter__(self) -> PeakRss:
        self.peak = self._measure()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._measure())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._measure())


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(0, min(len(ordered), rank) - 1)]


def median(values: list[float]) -> float:
    ordered = sorted(v for v in values if v == v)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
