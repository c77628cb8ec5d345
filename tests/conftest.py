"""Real parts for the tests: a Redis server on a free port, an HTTP endpoint on loopback,
and `emailq worker` processes. Nothing here is mocked."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from emailq.store import embedded_redis
from emailq.store.embedded_redis import redis_server_binary
from emailq.enqueue import Producer
from emailq.settings import Settings

# Defined in helpers (import them from there); tests written before still find them here.
from helpers import EMAILQ, free_port, wait_for

# The tests' own settings come from each test, never from the developer's shell.
for _name in [n for n in os.environ if n.startswith("EMAILQ_")]:
    del os.environ[_name]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--model-examples",
        type=int,
        default=200,
        help="runs of the state machine model (tests/test_state_model.py), each up to 30 steps; raise it for a longer search",
    )


class RedisServer:
    """A redis-server of the tests' own, on a free port, with AOF on; can be killed.

    It syncs its AOF as users' Redis does (`everysec`: deploy/redis.conf, the embedded
    Redis). With `always`, the suite's session server fsynced every write in its one
    thread, and on this machine's shared disk an fsync (worse during an AOF rewrite)
    stalled it past the producers' 0.5 s timeout: two CI runs failed on sends that said
    "Redis did not answer after the write was sent"."""

    def __init__(self, directory: Path, *extra_args: str):
        self.directory = directory
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, "redis-server to start")

    def _answers(self) -> bool:
        try:
            return redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def kill(self) -> None:
        """`kill -9`, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int
    peer: tuple[str, int] = ("", 0)  # the client's address: one per connection

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    endless: bool = False  # stream the body forever (until the client hangs up)


class _DeepBacklogServer(ThreadingHTTPServer):
    # A worker with hundreds of threads opens as many connections at once. Python's
    # socketserver listens with a backlog of 5 (nginx 511, uvicorn and gunicorn 2048): past
    # it, the kernel drops handshakes, some requests wait seconds for a retransmit, pass
    # the worker's request timeout and are POSTed again, and the server then answers the
    # abandoned ones too: retries after a timeout, which the stop test with 512 threads
    # counted as "POSTed twice across a clean stop" (tests/test_crash_safety.py).
    request_queue_size = 1024


class Endpoint:
    """A real HTTP server on loopback standing in for the email API.

    `behave` decides each reply from the request (default: 200); `received` keeps every
    request in order.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.received: list[Received] = []
        self.behave: Callable[[dict[str, str], bytes], Reply] = lambda headers, body: Reply()
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = endpoint.behave(headers, body)
                if reply.delay:
                    time.sleep(reply.delay)
                with endpoint._lock:
                    endpoint.received.append(Received(headers, body, time.time(), reply.status, self.client_address))
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    if reply.endless:
                        self._stream_forever()
                        return
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (a timeout test); nothing to answer

            def _stream_forever(self) -> None:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b"x" * 65536
                deadline = time.monotonic() + 60  # bounded, even if nobody hangs up
                while time.monotonic() < deadline:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._handler = Handler
        self._listen(0)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/send"

    def _listen(self, port: int) -> None:
        self.server = _DeepBacklogServer(("127.0.0.1", port), self._handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def go_down(self) -> None:
        """Stop listening: connections are refused, as from a crashed service."""
        self.close()

    def come_back(self) -> None:
        self._listen(self.port)

    def delivered_keys(self) -> list[str]:
        with self._lock:
            return [r.key for r in self.received if 200 <= r.status < 300]

    def requests_for(self, key: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.key == key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory for the embedded Redis, whose server is stopped afterwards."""
    directory = tmp_path / "data"
    yield directory
    embedded_redis.stop(directory)


@pytest.fixture
def settings_env(redis_server: RedisServer, endpoint: Endpoint, tmp_path: Path) -> dict[str, str]:
    """The EMAILQ_* environment of a test: its Redis, its endpoint, quick retries."""
    return {
        "EMAILQ_REDIS_URL": redis_server.url,
        "EMAILQ_ENDPOINT_URL": endpoint.url,
        "EMAILQ_DATA_DIR": str(tmp_path / "data"),
        "EMAILQ_RETRY_BASE_SECONDS": "0.05",
        "EMAILQ_RETRY_MAX_SECONDS": "1",
        "EMAILQ_MAX_ATTEMPTS": "3",
        "EMAILQ_CONCURRENCY": "8",
    }


@pytest.fixture
def defaults_env(settings_env: dict[str, str]) -> dict[str, str]:
    """What a user runs: every setting at its default but where Redis and the endpoint are
    (the worker's environment is merged over `settings_env`, so the tuned values of
    `settings_env` are reset to the defaults here)."""
    defaults = Settings.model_fields
    tuned = ("EMAILQ_RETRY_BASE_SECONDS", "EMAILQ_RETRY_MAX_SECONDS", "EMAILQ_MAX_ATTEMPTS", "EMAILQ_CONCURRENCY")
    return {name: str(defaults[name.removeprefix("EMAILQ_").lower()].default) for name in tuned}


def settings_from(env: dict[str, str]) -> Settings:
    values = {k.removeprefix("EMAILQ_").lower(): v for k, v in env.items()}
    return Settings(_env_file=None, **values)


@pytest.fixture
def producer(settings_env: dict[str, str], redis_client: redis.Redis) -> Iterator[Producer]:
    p = Producer(settings_from(settings_env))
    yield p
    p.close()


def run_emailq(args: list[str], env: dict[str, str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess:
    """`emailq ARGS` as a user runs it, with only the given EMAILQ_* settings."""
    return subprocess.run(
        [EMAILQ, *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


class Worker:
    """An `emailq worker` process; `kill()` is `kill -9`. `stop()` sends SIGTERM and waits
    `STOP_GRACE` seconds before a `kill -9`; `stopped_in` and `killed` say how it went."""

    STOP_GRACE = 15.0

    def __init__(self, env: dict[str, str], cwd: Path, log: Path, args: list[str]):
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [EMAILQ, "worker", *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.stopped_in: float | None = None  # seconds from SIGTERM to its exit
        self.killed = False  # `stop()` had to kill it: it did not exit within STOP_GRACE
        wait_for(self._ready, 30, f"the worker to be ready (log: {log})", interval=0.1)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{self.output()}")
        return b" ready." in self.log.read_bytes()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            sent = time.monotonic()
            self.process.terminate()
            try:
                self.process.wait(self.STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.kill()
                print(f"{self.log.name}: no exit within {self.STOP_GRACE:g}s of SIGTERM: killed (kill -9)")
            self.stopped_in = time.monotonic() - sent
        self._out.close()


@pytest.fixture
def start_worker(settings_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Worker:
        worker = Worker({**settings_env, **(env or {})}, tmp_path, tmp_path / f"worker{len(started)}.log", list(args))
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
