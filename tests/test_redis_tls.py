"""TLS to Redis: the Sentinels and the servers on TLS only with client certificates,
every emailq client through them; TLS to the servers only; one `rediss://` server with a
private CA; certificates that do not name the address; and the TLS deploy files run with
the real redis-server. Real processes on loopback (`sentinel_cluster.py`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from conftest import Reply, free_port, run_emailq, settings_from, wait_for
from sentinel_cluster import (
    MASTER,
    Cluster,
    Tls,
    TlsRedisServer,
    answers,
    connect,
    flower_queue_lengths,
    ingests,
    post_to,
    status,
)
from emailq.store.embedded_redis import redis_server_binary


@pytest.fixture
def ingest_on(tmp_path) -> Iterator[Callable[[dict[str, str]], str]]:
    with ingests(tmp_path) as start:
        yield start


@pytest.fixture
def tls_cluster(tmp_path) -> Iterator[Cluster]:
    started = Cluster(tmp_path / "cluster", tls=Tls.issue(tmp_path / "tls"))
    yield started
    started.stop()


def test_every_client_talks_tls_to_sentinels_and_servers(tls_cluster, settings_env, endpoint, start_worker, ingest_on, tmp_path):
    cluster = tls_cluster
    # The servers and Sentinels speak TLS only and want a client certificate; the first
    # Sentinel in the URL is down, so every client (Flower's Broker page too) must ask the others.
    env = {**settings_env, **cluster.env, "EMAILQ_REDIS_URL": f"sentinel://127.0.0.1:{free_port()};{cluster.env['EMAILQ_REDIS_URL']}"}
    endpoint.behave = lambda headers, body: Reply(404 if json.loads(body)["to"] == "dead@logto.io" else 200)
    start_worker(env=env)

    sent = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    ingested = post_to(ingest_on(env))()
    dead = run_emailq(["send", "--to", "dead@logto.io", "--type", "SignIn"], env, tmp_path)
    assert dead.returncode == 0, dead.stderr
    wait_for(lambda: {sent.stdout.strip(), ingested} <= set(endpoint.delivered_keys()), 30, "emails delivered over TLS")
    wait_for(lambda: status(env, tmp_path)["dead_lettered"] == 1, 20, "the 404 dead-lettered")
    listed = run_emailq(["dlq", "list", "--json"], env, tmp_path)
    assert [entry["id"] for entry in json.loads(listed.stdout)] == [dead.stdout.strip()]
    report = status(env, tmp_path)
    assert report["primary"] == f"127.0.0.1:{cluster.primary.port}" and len(report["workers"]) == 1  # the ping, over TLS
    lengths = flower_queue_lengths(env, tmp_path)
    assert {"name": "emailq:dlq", "messages": 1} in lengths["active_queues"], lengths

    # Without the TLS settings nothing gets through, so the above went over TLS.
    plain = {k: v for k, v in env.items() if not k.startswith("EMAILQ_REDIS_TLS")}
    refused = run_emailq(["status"], plain, tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr

    # A switch of primary, followed over TLS.
    cluster.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", MASTER)
    wait_for(lambda: cluster.primary_port() == cluster.replica.port, 30, "the switch", interval=0.1)
    after = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    assert after.returncode == 0, after.stderr
    wait_for(lambda: after.stdout.strip() in endpoint.delivered_keys(), 30, "an email delivered from the new primary")
    assert status(env, tmp_path)["primary"] == f"127.0.0.1:{cluster.replica.port}"


def test_tls_reaches_the_sentinels_and_the_servers_as_set(tmp_path):
    from emailq.store.redis_client import sentinel
    from emailq.worker.celery_glue.app import celery_config

    tls = Tls.issue(tmp_path)
    base = {"EMAILQ_REDIS_URL": "sentinel://:pw@a:26379;sentinel://b:26379", "EMAILQ_REDIS_SENTINEL_MASTER": "m", **tls.env()}
    for sentinel_tls, servers, sentinels in (("", True, True), ("false", True, False)):
        settings = settings_from({**base, "EMAILQ_REDIS_SENTINEL_TLS": sentinel_tls} if sentinel_tls else base)
        manager = sentinel(settings, socket_timeout=1)
        config = celery_config(settings)
        for options, on in ((manager.connection_kwargs, servers), (manager.sentinel_kwargs, sentinels), (config["broker_use_ssl"] or {}, servers)):
            assert options.get("ssl_ca_certs") == (str(tls.ca) if on else None), options
            assert options.get("ssl_certfile") == (str(tls.client_cert) if on else None), options
        # Flower's (kombu's) own Sentinel transport reads the Sentinels' TLS from here.
        assert config["broker_transport_options"]["sentinel_kwargs"].get("ssl", False) is sentinels
        assert manager.connection_kwargs["password"] == "pw" and "password" not in manager.sentinel_kwargs


@pytest.fixture
def plain_sentinels_cluster(tmp_path) -> Iterator[Cluster]:
    started = Cluster(tmp_path / "cluster", tls=Tls.issue(tmp_path / "tls"), plain_sentinels=True)
    yield started
    started.stop()


def test_tls_to_the_servers_only_with_plain_sentinels(plain_sentinels_cluster, settings_env, endpoint, start_worker, tmp_path):
    # EMAILQ_REDIS_SENTINEL_TLS=false: the Sentinels take plain TCP from clients (and TLS
    # from each other), the Redis servers nothing but TLS; a client that got either wrong
    # would get no answer.
    cluster = plain_sentinels_cluster
    env = {**settings_env, **cluster.env}
    start_worker(env=env)
    sent = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: sent.stdout.strip() in endpoint.delivered_keys(), 30, "an email delivered over TLS")
    report = status(env, tmp_path)
    assert report["primary"] == f"127.0.0.1:{cluster.primary.port}" and len(report["workers"]) == 1


@pytest.fixture
def tls_server(tmp_path) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(tmp_path / "redis", Tls.issue(tmp_path / "tls"))
    server.directory.mkdir(parents=True)
    server.start()
    yield server
    server.stop()


def test_one_redis_server_on_tls_with_a_private_ca(tls_server, settings_env, endpoint, start_worker, tmp_path):
    # Not Sentinel, but the same settings: rediss:// with the CA and client certificate files.
    files = {k: v for k, v in tls_server.tls.env().items() if k != "EMAILQ_REDIS_TLS"}
    env = {**settings_env, "EMAILQ_REDIS_URL": f"rediss://127.0.0.1:{tls_server.port}/0", **files}
    start_worker(env=env)
    sent = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: sent.stdout.strip() in endpoint.delivered_keys(), 30, "an email delivered over TLS")
    assert len(status(env, tmp_path)["workers"]) == 1
    assert tls_server.client().llen("emailq") == 0
    assert {"name": "emailq:dlq", "messages": 0} in flower_queue_lengths(env, tmp_path)["active_queues"]


def test_a_certificate_that_does_not_name_the_server_is_refused_unless_told(tmp_path, settings_env):
    # The certificate names redis.test; the client reaches 127.0.0.1 (as Sentinel would
    # hand out an IP): refused, unless EMAILQ_REDIS_TLS_CHECK_HOSTNAME=false (chain only).
    server = TlsRedisServer(tmp_path / "redis", Tls.issue(tmp_path / "tls", server_names=("redis.test",)))
    server.directory.mkdir(parents=True)
    server.start()
    try:
        files = {k: v for k, v in server.tls.env().items() if k != "EMAILQ_REDIS_TLS"}
        env = {**settings_env, "EMAILQ_REDIS_URL": f"rediss://127.0.0.1:{server.port}/0", **files}
        refused = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
        assert refused.returncode != 0 and "certificate is not valid for '127.0.0.1'" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        told = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], {**env, "EMAILQ_REDIS_TLS_CHECK_HOSTNAME": "false"}, tmp_path)
        assert told.returncode == 0, told.stderr
        assert server.client().llen("emailq") == 1
    finally:
        server.stop()


# --- deploy/docker-compose.sentinel-tls.yml and deploy/sentinel.sh on TLS --------------
# (No container engine runs here: these run the files' own commands with the real
# redis-server, and the settings through emailq's own check, as tests/test_deploy_files.py
# does for the rest of deploy/.)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def deploy_tls_dir(directory: Path) -> Path:
    """deploy/tls/ as the TLS override file expects it, for 127.0.0.1."""
    tls = Tls.issue(directory)
    copies = {"redis.pem": tls.server_cert, "redis.key": tls.server_key, "client.pem": tls.client_cert, "client.key": tls.client_key}
    for name, source in copies.items():
        (directory / name).write_bytes(source.read_bytes())
    return directory


def compose_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


def test_the_tls_compose_file_gives_every_emailq_service_settings_that_load(tmp_path):
    base, tls = compose_file("docker-compose.sentinel.yml"), compose_file("docker-compose.sentinel-tls.yml")
    directory = deploy_tls_dir(tmp_path / "tls")
    shared = {k: v for k, v in base["x-emailq-settings"].items() if v is not None and "${" not in str(v)}
    url = "sentinel://:pw@sentinel-1:26379/0;sentinel://sentinel-2:26379;sentinel://sentinel-3:26379"
    for name in ("worker", "ingest", "flower"):
        service = tls["services"][name]
        assert "./tls:/tls:ro" in service["volumes"]
        env = {**shared, "EMAILQ_REDIS_URL": url, **{k: v.replace("/tls/", f"{directory}/") for k, v in service["environment"].items()}}
        settings = settings_from(env)  # loads the CA, the certificate and its key
        assert settings.redis_server_tls() and settings.sentinel_tls() and settings.redis_tls_check_hostname


def test_the_tls_compose_file_keeps_each_servers_command_and_adds_tls(tmp_path):
    base, tls = compose_file("docker-compose.sentinel.yml"), compose_file("docker-compose.sentinel-tls.yml")
    servers = [name for name, s in base["services"].items() if s.get("command", [None])[0] == "redis-server"]
    assert sorted(servers) == sorted(n for n, s in tls["services"].items() if s.get("command", [None])[0] == "redis-server")
    for name in servers:
        command = tls["services"][name]["command"]
        assert command[: len(base["services"][name]["command"])] == base["services"][name]["command"], name
        added = dict(zip(command[len(base["services"][name]["command"]) :: 2], command[len(base["services"][name]["command"]) + 1 :: 2]))
        assert added["--port"] == "0" and added["--tls-port"] == "6379" and added["--tls-replication"] == "yes"
    sentinels = [name for name, s in base["services"].items() if s.get("command", [None])[0] == "sh"]
    assert all(tls["services"][name]["environment"]["TLS_DIR"] == "/tls" for name in sentinels)

    # redis-a's command, run for real: on TLS only, with client certificates.
    directory = deploy_tls_dir(tmp_path / "tls")
    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"(?m)^dir .*$", f"dir {tmp_path}", (DEPLOY / "redis.conf").read_text()))
    port = free_port()
    argv = [
        {"/usr/local/etc/redis/redis.conf": str(conf), "${REDIS_PASSWORD}": "pw", "6379": str(port)}.get(arg, arg.replace("/tls/", f"{directory}/"))
        for arg in tls["services"]["redis-a"]["command"]
    ]
    server = subprocess.Popen([redis_server_binary(), *argv[1:], "--bind", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    options = {"ssl": True, "ssl_ca_certs": str(directory / "ca.pem"), "ssl_certfile": str(directory / "client.pem")}
    client = redis.Redis(port=port, password="pw", ssl_keyfile=str(directory / "client.key"), **options)
    try:
        wait_for(lambda: server.poll() is not None or answers(client), 10, "redis-server with the TLS compose command")
        assert server.poll() is None, server.stdout.read().decode()
        assert client.config_get("port")["port"] == "0"  # nothing but TLS
    finally:
        server.terminate()
        server.wait(10)


def test_sentinel_sh_with_tls_dir_runs_a_tls_sentinel(tmp_path):
    directory = deploy_tls_dir(tmp_path / "tls")
    port = free_port()
    # A stand-in for the image's redis-sentinel: the real server, on a free port.
    fake = tmp_path / "bin" / "redis-sentinel"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nexec {redis_server_binary()} "$1" --sentinel --tls-port {port} --bind 127.0.0.1\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "SENTINEL_CONF": str(tmp_path / "sentinel.conf"),
        "SENTINEL_MASTER": "emailq",
        "SENTINEL_PRIMARY": "127.0.0.1",
        "REDIS_PASSWORD": "pw",
        "DOWN_AFTER": "5000",
        "TLS_DIR": str(directory),
    }
    process = subprocess.Popen(["sh", str(DEPLOY / "sentinel.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tls = Tls(directory / "ca.pem", directory / "redis.pem", directory / "redis.key", directory / "client.pem", directory / "client.key")
    client = connect(port, tls, socket_timeout=1)
    try:
        wait_for(lambda: process.poll() is not None or answers(client), 10, "the TLS Sentinel of sentinel.sh")
        assert process.poll() is None, process.stdout.read().decode()
        assert client.sentinel_master("emailq")["port"] == 6379
        assert "port 0" in (tmp_path / "sentinel.conf").read_text()
    finally:
        process.terminate()
        process.wait(10)
