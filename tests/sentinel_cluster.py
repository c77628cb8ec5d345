"""Redis Sentinel and TLS on loopback for the tests: a primary, a replica and three
Sentinels as real processes (optionally on TLS only, with certificates from a CA of the
test's own), and the emailq processes the tests talk to them through.

The Sentinels notice a dead primary after 1 s (`down-after-milliseconds 1000`, the
default is 30 s) and may retry a failover after 5 s (`failover-timeout 5000`, default
3 min), to keep the tests short; nothing in emailq depends on those values.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import trustme

from conftest import EMAILQ, RedisServer, free_port, run_emailq, wait_for
from helpers import SIGN_IN
from emailq.store.embedded_redis import redis_server_binary
from emailq.errors import QueueUnavailable

MASTER = "emailq-ha"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Tls:
    """A CA of the test's own, a certificate for the servers (127.0.0.1) and one for emailq,
    as files. The servers ask clients for a certificate (`tls-auth-clients yes`, Redis's
    default) and speak nothing but TLS (`port 0`)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def issue(cls, directory: Path, server_names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Tls:
        directory.mkdir(parents=True, exist_ok=True)
        authority = trustme.CA()
        tls = cls(*(directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
        authority.cert_pem.write_to_path(tls.ca)
        for leaf, cert, key in (
            (authority.issue_cert(*server_names), tls.server_cert, tls.server_key),
            (authority.issue_cert("emailq.test"), tls.client_cert, tls.client_key),
        ):
            leaf.cert_chain_pems[0].write_to_path(cert)
            leaf.private_key_pem.write_to_path(key)
        return tls

    def server_config(self, port: int) -> list[tuple[str, str]]:
        # tls-replication: replicas and Sentinels talk TLS to the servers (and Sentinels to
        # each other) too, with the server certificate as their client certificate.
        return [
            ("port", "0"),
            ("tls-port", str(port)),
            ("tls-cert-file", str(self.server_cert)),
            ("tls-key-file", str(self.server_key)),
            ("tls-ca-cert-file", str(self.ca)),
            ("tls-replication", "yes"),
            ("tls-auth-clients", "yes"),
        ]

    def client_options(self) -> dict[str, Any]:
        """For the tests' own clients (emailq's are under test, not these): any name."""
        files = {"ssl_ca_certs": str(self.ca), "ssl_certfile": str(self.client_cert), "ssl_keyfile": str(self.client_key)}
        return {"ssl": True, "ssl_check_hostname": False, **files}

    def env(self) -> dict[str, str]:
        return {
            "EMAILQ_REDIS_TLS": "true",
            "EMAILQ_REDIS_TLS_CA_FILE": str(self.ca),
            "EMAILQ_REDIS_TLS_CERT_FILE": str(self.client_cert),
            "EMAILQ_REDIS_TLS_KEY_FILE": str(self.client_key),
        }


def connect(port: int, tls: Tls | None, **options: Any) -> redis.Redis:
    return redis.Redis(port=port, **(tls.client_options() if tls else {}), **options)


class TlsRedisServer(RedisServer):
    """conftest's RedisServer, on TLS only."""

    def __init__(self, directory: Path, tls: Tls, *extra_args: str):
        super().__init__(directory)
        self.tls = tls
        # After conftest's `--port`: the last value of a setting wins.
        self.extra_args = [*(arg for pair in tls.server_config(self.port) for arg in (f"--{pair[0]}", pair[1])), *extra_args]

    def _answers(self) -> bool:
        try:
            return bool(connect(self.port, self.tls, socket_timeout=0.5).ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def client(self) -> redis.Redis:
        return connect(self.port, self.tls)


class SentinelProcess:
    def __init__(self, directory: Path, primary_port: int, down_after_ms: int, tls: Tls | None, plain_clients: bool = False):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = directory / "sentinel.conf"
        if tls and plain_clients:
            # TLS to the servers and to the other Sentinels (on a TLS port of its own, the one
            # it announces), plain TCP for clients on `port`.
            listen = [" ".join(pair) for pair in tls.server_config(free_port()) if pair[0] != "port"] + [f"port {self.port}"]
            tls = None  # for this test's own client
        elif tls:
            listen = [" ".join(pair) for pair in tls.server_config(self.port)]
        else:
            listen = [f"port {self.port}"]
        self.config.write_text(
            "\n".join(listen) + f"\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self.process = subprocess.Popen([redis_server_binary(), str(self.config), "--sentinel"], stdout=subprocess.DEVNULL)
        self.client = connect(self.port, tls, socket_timeout=1)
        wait_for(self._ready, 10, "a Sentinel to start")

    def _ready(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def master(self) -> dict:
        return self.client.sentinel_master(MASTER)

    def primary(self) -> tuple[str, int] | None:
        address = self.client.sentinel_get_master_addr_by_name(MASTER)
        return (address[0], int(address[1])) if address else None

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Cluster:
    """A primary, a replica of it, and three Sentinels watching them (quorum 2); all on
    TLS when `tls` is given, except the Sentinels' side for clients if `plain_sentinels`."""

    def __init__(self, directory: Path, down_after_ms: int = DOWN_AFTER_MS, tls: Tls | None = None, plain_sentinels: bool = False):
        self.tls = tls
        if tls:
            self.primary: RedisServer = TlsRedisServer(directory / "primary", tls)
            self.replica: RedisServer = TlsRedisServer(directory / "replica", tls, "--replicaof", "127.0.0.1", str(self.primary.port))
        else:
            self.primary = RedisServer(directory / "primary")
            self.replica = RedisServer(directory / "replica", "--replicaof", "127.0.0.1", str(self.primary.port))
        for server in (self.primary, self.replica):
            server.directory.mkdir(parents=True)
            server.start()
        wait_for(lambda: self.replicas_in_sync(self.primary) == 1, 20, "the replica to sync")
        self.sentinels = [SentinelProcess(directory / f"sentinel{n}", self.primary.port, down_after_ms, tls, plain_sentinels) for n in range(3)]
        wait_for(self._watching, 30, "the Sentinels to find the replica and each other", interval=0.2)
        hosts = ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)
        self.env = {"EMAILQ_REDIS_URL": hosts, "EMAILQ_REDIS_SENTINEL_MASTER": MASTER, **(tls.env() if tls else {})}
        if plain_sentinels:
            self.env["EMAILQ_REDIS_SENTINEL_TLS"] = "false"

    @staticmethod
    def replicas_in_sync(server: RedisServer) -> int:
        try:
            info = server.client().info("replication")
        except redis.RedisError:
            return 0
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")

    def _watching(self) -> bool:
        masters = [s.master() for s in self.sentinels]
        return all(m["num-slaves"] >= 1 and m["num-other-sentinels"] >= 2 for m in masters)

    def primary_port(self) -> int | None:
        address = self.sentinels[0].primary()
        return address[1] if address else None

    def client(self) -> redis.Redis:
        port = self.primary_port()
        assert port is not None
        return connect(port, self.tls)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in (self.primary, self.replica):
            server.stop()


def post_to(url: str) -> Callable[[], str]:
    """One email through the ingest; a 503 becomes the QueueUnavailable it reports."""

    def send() -> str:
        try:
            reply = httpx.post(url, json=SIGN_IN, timeout=10)
        except httpx.TransportError as error:
            raise AssertionError(f"the ingest did not answer: {error}") from None
        if reply.status_code == 503:
            error = reply.json()["error"]
            raise QueueUnavailable(error, maybe_enqueued="may have been enqueued" in error)
        assert reply.status_code == 202, reply.text
        return reply.json()["id"]

    return send


@contextmanager
def ingests(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], str]]:
    """Starts `emailq serve` with the given settings, as often as called; returns its URL.
    Each is stopped on leaving."""
    processes: list[subprocess.Popen] = []

    def start(env: dict[str, str]) -> str:
        port = free_port()
        log = tmp_path / "ingest.log"
        process = subprocess.Popen(
            [EMAILQ, "serve", "--port", str(port)],
            env={**os.environ, **env},
            cwd=tmp_path,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(url + "/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 20, "the ingest to listen")
        return url + "/"

    try:
        yield start
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def status(env: dict[str, str], cwd: Path) -> dict:
    result = run_emailq(["status", "--json"], env, cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def flower_queue_lengths(env: dict[str, str], cwd: Path) -> dict:
    """Flower's `/api/queues/length` (its Broker page's numbers), from an `emailq flower`."""
    port = free_port()
    log = cwd / "flower.log"
    process = subprocess.Popen(
        [EMAILQ, "flower", "--port", str(port)],
        env={**os.environ, **env, "EMAILQ_FLOWER_BASIC_AUTH": "ops:pw"},
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:

        def queues() -> dict | None:
            assert process.poll() is None, log.read_text()
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/api/queues/length", auth=("ops", "pw"))
            except httpx.TransportError:
                return None
            return reply.json() if reply.status_code == 200 else None

        return wait_for(queues, 30, "Flower to count the queues on the Sentinel primary", interval=0.2)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()  # Flower may still be connecting its event receiver
            process.wait(10)


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
