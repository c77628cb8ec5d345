"""Redis Sentinel: a primary, a replica and three Sentinels on loopback, real processes.

The Sentinels here notice a dead primary after 1 s (`down-after-milliseconds 1000`, the
default is 30 s) and may retry a failover after 5 s (`failover-timeout 5000`, default
3 min), to keep the test short; nothing in emailq depends on those values.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import trustme
import yaml
from kombu.transport import redis as kombu_redis

from conftest import EMAILQ, RedisServer, Reply, free_port, run_emailq, settings_from, wait_for
from helpers import SIGN_IN, assert_one_home
from emailq import census
from emailq.embedded_redis import redis_server_binary
from emailq.enqueue import Producer
from emailq.errors import QueueUnavailable
from emailq.message import Envelope, parse_email
from emailq.task_message import task_message

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


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    """A cluster of the test's own, for a test that switches its primary."""
    started = Cluster(tmp_path / "cluster")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def _steady_cluster(tmp_path_factory) -> Iterator[Cluster]:
    started = Cluster(tmp_path_factory.mktemp("steady-cluster"))
    yield started
    started.stop()


@pytest.fixture
def steady_cluster(_steady_cluster: Cluster) -> Cluster:
    """A cluster shared by the tests that leave its primary where it is; emptied first."""
    _steady_cluster.primary.client().flushall()
    return _steady_cluster


@dataclass
class Load:
    """Sends one email at a time until stopped, recording what each attempt got."""

    send: Callable[[], str]
    pause: float = 0.01
    acked: list[tuple[float, str]] = field(default_factory=list)
    refused: list[tuple[float, str]] = field(default_factory=list)  # nothing was enqueued
    maybe: list[tuple[float, str]] = field(default_factory=list)  # may have been enqueued

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message_id = self.send()
            except QueueUnavailable as error:
                (self.maybe if error.maybe_enqueued else self.refused).append((time.monotonic(), str(error)))
            else:
                self.acked.append((time.monotonic(), message_id))
            time.sleep(self.pause)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def ids(self) -> set[str]:
        return {message_id for _, message_id in self.acked}

    def first_ack_after(self, moment: float) -> float | None:
        return next((at for at, _ in self.acked if at > moment), None)

    def first_unconfirmed_after(self, moment: float) -> float | None:
        """When a write first landed on a primary no replica confirmed (after `moment`)."""
        return next((at for at, error in self.maybe if at > moment and "replica(s)" in error), None)

    def failures_after(self, moment: float) -> int:
        return sum(1 for at, _ in self.refused + self.maybe if at > moment)


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


@pytest.fixture
def ingest_on(tmp_path) -> Iterator[Callable[[dict[str, str]], str]]:
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

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def status(env: dict[str, str], cwd: Path) -> dict:
    result = run_emailq(["status", "--json"], env, cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_failover_loses_no_acknowledged_email(cluster, settings_env, endpoint, start_worker, ingest_on, tmp_path):
    # Heartbeats of 2 s, shorter than the failover: every worker's heartbeat has lapsed on
    # the new primary by the time it is promoted, and still no live worker is taken for dead.
    env = {**settings_env, **cluster.env, "EMAILQ_REDIS_MIN_REPLICAS": "1", "EMAILQ_HEARTBEAT_SECONDS": "2"}
    endpoint.behave = lambda headers, body: Reply(200, delay=0.1)
    workers = [start_worker(env=env), start_worker(env=env)]
    assert status(env, tmp_path)["primary"] == f"127.0.0.1:{cluster.primary.port}"

    producer = Producer(settings_from(env))
    ingest = Load(post_to(ingest_on(env)))
    backlog = producer.send_many([SIGN_IN] * 500)
    load = Load(lambda: producer.send(SIGN_IN))
    try:
        wait_for(lambda: len(endpoint.received) >= 100 and len(load.acked) >= 50, 30, "deliveries and enqueues under way")
        assert len(set(endpoint.delivered_keys())) < len(backlog), "the backlog was gone before the failover"

        cluster.primary.kill()  # kill -9, while emails are delivered and enqueued
        killed = time.monotonic()
        wait_for(lambda: cluster.primary_port() == cluster.replica.port, 30, "Sentinel to promote the replica", interval=0.05)
        promoted = time.monotonic()
        # The old primary comes back, and the Sentinels make it a replica of the new one:
        # until then no replica can confirm a write, and producers say so.
        cluster.primary.start()
        wait_for(lambda: cluster.replicas_in_sync(cluster.replica) == 1, 60, "the old primary to rejoin as a replica", interval=0.2)
        rejoined = time.monotonic()
        wait_for(lambda: load.first_ack_after(rejoined) and ingest.first_ack_after(rejoined), 30, "enqueues to succeed again")
        recovered = max(load.first_ack_after(killed) or 0, ingest.first_ack_after(killed) or 0)
        reached = load.first_unconfirmed_after(killed)
        time.sleep(2)  # some more, after the failover
    finally:
        load.stop()
        ingest.stop()
        producer.close()

    acked = set(backlog) | load.ids() | ingest.ids()
    wait_for(lambda: set(endpoint.delivered_keys()) >= acked, 90, "every acknowledged email delivered", interval=0.2)
    delivered = set(endpoint.delivered_keys())
    lost = len(load.maybe) + len(ingest.maybe)
    print(
        f"\nfailover: replica promoted {promoted - killed:.1f}s after kill -9 of the primary; the producer's writes "
        f"reached it {reached - killed if reached else float('nan'):.1f}s after (unconfirmed: no replica yet); old primary rejoined "
        f"{rejoined - killed:.1f}s after; producers acknowledged again {recovered - killed:.1f}s after (a replica "
        f"confirming)\nacknowledged: {len(acked)} ({len(backlog)} backlog, {len(load.acked)} one by one, "
        f"{len(ingest.acked)} by the ingest), all delivered; during the switch {load.failures_after(killed)} producer "
        f"and {ingest.failures_after(killed)} ingest attempts refused ({lost} of them 'may have been enqueued'); "
        f"{len(endpoint.received)} requests for {len(delivered)} distinct emails"
    )
    assert load.failures_after(killed) > 0 and ingest.failures_after(killed) > 0, "nobody noticed the failover"

    new_primary = cluster.client()
    try:
        wait_for(lambda: census.count(new_primary, "emailq").in_flight == 0, 30, "nothing left in flight")
        assert_one_home(new_primary)
    finally:
        new_primary.close()
    assert status(env, tmp_path)["primary"] == f"127.0.0.1:{cluster.replica.port}"
    for worker in workers:
        assert worker.process.poll() is None, worker.output()
        assert "stopped its heartbeat" not in worker.output(), "a live worker was taken for dead during the switch"


def test_every_command_works_on_sentinel(steady_cluster, settings_env, endpoint, start_worker, tmp_path):
    cluster = steady_cluster
    env = {**settings_env, **cluster.env}
    endpoint.behave = lambda headers, body: Reply(404)  # straight to the DLQ
    start_worker(env=env)
    sent = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    message_id = sent.stdout.strip()
    wait_for(lambda: status(env, tmp_path)["dead_lettered"] == 1, 20, "the email dead-lettered")
    listed = run_emailq(["dlq", "list", "--json"], env, tmp_path)
    assert [entry["id"] for entry in json.loads(listed.stdout)] == [message_id]
    endpoint.behave = lambda headers, body: Reply(200)
    replayed = run_emailq(["dlq", "replay", message_id], env, tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    wait_for(lambda: message_id in endpoint.delivered_keys(), 20, "the replayed email delivered")
    shown = run_emailq(["status"], env, tmp_path).stdout
    assert f"Redis primary: 127.0.0.1:{cluster.primary.port} (Sentinel service {MASTER})" in shown


def test_a_switch_gives_back_what_a_lost_ack_left_in_a_live_workers_list(cluster, settings_env, endpoint, start_worker, tmp_path):
    env = {**settings_env, **cluster.env}
    worker = start_worker(env=env)
    # What a failover leaves when the old primary acked (or moved) an email the replica
    # never heard of: the email back in the in-flight list of a worker that settled it.
    primary = cluster.primary.client()
    owner = wait_for(lambda: primary.smembers("emailq:owners"), 10, "the worker to register").pop().decode()
    stray = Envelope.wrap(parse_email(SIGN_IN), 900)
    primary.lpush(f"emailq:inflight:{owner}", task_message(stray, "emailq"))
    wait_for(
        lambda: cluster.replicas_in_sync(cluster.primary) == 1 and cluster.replica.client().llen(f"emailq:inflight:{owner}"),
        10,
        "the replica to have it",
    )

    # A switch without a crash: the old primary becomes a replica, clients follow.
    cluster.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", MASTER)
    wait_for(lambda: cluster.primary_port() == cluster.replica.port, 30, "the switch", interval=0.1)
    # Clients follow once the Sentinels demote the old primary (up to 10 s: they look at it
    # that often), and then the worker gives the email back within seconds, not after its
    # periodic scans (a heartbeat lifetime, then 30 s apart).
    wait_for(lambda: "Redis primary is now" in worker.output(), 30, "the worker to follow the switch", interval=0.1)
    wait_for(lambda: stray.id in endpoint.delivered_keys(), 8, "the stranded email delivered")
    assert "has no record of" in worker.output()
    assert status(env, tmp_path)["primary"] == f"127.0.0.1:{cluster.replica.port}"
    sent = run_emailq(["send", "--to", "foo@logto.io", "--type", "SignIn"], env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: sent.stdout.strip() in endpoint.delivered_keys(), 30, "a new email delivered after the switch")
    primary.close()


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


def test_flower_watches_a_sentinel_broker(steady_cluster, settings_env, tmp_path):
    lengths = flower_queue_lengths({**settings_env, **steady_cluster.env}, tmp_path)
    assert {"name": "emailq:dlq", "messages": 0} in lengths["active_queues"]


def test_an_enqueue_no_replica_confirms_may_have_been_enqueued(settings_env, redis_client):
    # A lone Redis: WAIT 1 finds no replica within EMAILQ_REDIS_TIMEOUT.
    env = {**settings_env, "EMAILQ_REDIS_MIN_REPLICAS": "1", "EMAILQ_REDIS_TIMEOUT": "0.2"}
    producer = Producer(settings_from(env))
    try:
        with pytest.raises(QueueUnavailable) as raised:
            producer.send(SIGN_IN)
    finally:
        producer.close()
    assert raised.value.maybe_enqueued
    assert "0 of the 1 replica(s)" in str(raised.value) and "may have been enqueued" in str(raised.value)
    assert redis_client.llen("emailq") == 1  # on the primary, unconfirmed


def test_dlq_purge_says_when_no_replica_holds_it(settings_env, redis_client, tmp_path):
    from emailq.worker.dead_letters import DeadLetter, DeadLetters

    DeadLetters(redis_client, "emailq").add(DeadLetter(id="m1", reason="rejected", detail="404", raw="{}"))
    result = run_emailq(["dlq", "purge", "m1"], {**settings_env, "EMAILQ_REDIS_MIN_REPLICAS": "1"}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "purged 1 email(s)" in result.stdout
    assert "only 0 of the 1 replica(s)" in result.stderr and "nothing is lost" in result.stderr


def test_kombu_still_has_what_the_sentinel_channel_overrides():
    import inspect

    method = kombu_redis.SentinelChannel._sentinel_managed_pool
    assert list(inspect.signature(method).parameters) == ["self", "asynchronous"]
    source = inspect.getsource(kombu_redis.SentinelChannel)
    assert "self._sentinel_managed_pool(asynchronous)" in source
    assert "_sentinel_manager" in inspect.getsource(kombu_redis.Channel)


def test_kombu_is_given_one_sentinel_and_keeps_emailqs_transport():
    # Given `a;b`, kombu's Connection would switch to the next URL on an error, and with
    # it to kombu's own transport (no in-flight lists): the worker must never see `;`.
    from kombu import Connection

    from emailq.worker.app import celery_config

    settings = settings_from({"EMAILQ_REDIS_URL": "sentinel://:pw@a:26379/1;sentinel://b:26380", "EMAILQ_REDIS_SENTINEL_MASTER": "m"})
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://:pw@a:26379/1"
    assert config["broker_transport_options"]["master_name"] == "m"
    connection = Connection(config["broker_url"], transport=config["broker_transport"])
    connection.maybe_switch_next()
    assert connection.transport_cls == "emailq.worker.transport:SentinelTransport"


# Sentinels that never fail over by themselves within the test: the test promotes the
# replica (`SENTINEL FAILOVER`) when it chooses.
NEVER_MS = 600_000


def send_until_accepted(producer: Producer, count: int, within: float) -> list[str]:
    """Enqueue, trying again while the new primary is not yet writable."""
    deadline = time.monotonic() + within
    while True:
        try:
            return producer.send_many([SIGN_IN] * count)
        except QueueUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def manual_cluster(tmp_path) -> Iterator[Cluster]:
    started = Cluster(tmp_path / "cluster", down_after_ms=NEVER_MS)
    yield started
    started.stop()


def test_a_worker_takes_again_within_seconds_of_a_promotion(manual_cluster, settings_env, endpoint, start_worker):
    # The primary is dead long enough (14 s) for Celery's own reconnect back-off to have
    # grown to 6-8 s between attempts; then the replica is promoted. The bound asserted
    # is from the promotion to the first POST of an email enqueued on the new primary.
    cluster = manual_cluster
    env = {**settings_env, **cluster.env}
    worker = start_worker(env=env)
    producer = Producer(settings_from(env))
    try:
        before = producer.send(SIGN_IN)
        wait_for(lambda: before in endpoint.delivered_keys(), 20, "an email delivered before the crash")

        cluster.primary.kill()
        time.sleep(14)
        cluster.sentinels[0].client.execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_for(lambda: cluster.primary_port() == cluster.replica.port, 30, "Sentinel to promote the replica", interval=0.02)
        promoted = time.time()
        after = set(send_until_accepted(producer, 20, within=10))
        wait_for(lambda: after & set(endpoint.delivered_keys()), 30, "an email enqueued on the new primary delivered", interval=0.02)
        first = min(r.at for r in endpoint.received if r.key in after)
        print(f"\nafter a 14 s outage, the first POST came {first - promoted:.2f}s after Sentinel promoted the replica")
        assert first - promoted < 3.0, worker.output()
        wait_for(lambda: after <= set(endpoint.delivered_keys()), 30, "all of them delivered")
    finally:
        producer.close()


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
    from emailq.redis_client import sentinel
    from emailq.worker.app import celery_config

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


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
