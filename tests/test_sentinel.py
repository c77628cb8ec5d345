"""Redis Sentinel: a primary, a replica and three Sentinels on loopback, real processes
(`sentinel_cluster.py`): failover under load, every command, a switch of primary, and how
soon a worker takes again after a promotion. TLS: `test_redis_tls.py`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from kombu.transport import redis as kombu_redis

from conftest import Reply, run_emailq, settings_from, wait_for
from helpers import KEYS, SIGN_IN, assert_one_home
from sentinel_cluster import MASTER, Cluster, flower_queue_lengths, ingests, post_to, status
from emailq.store import census
from emailq.enqueue import Producer
from emailq.errors import QueueUnavailable
from emailq.message import Envelope, parse_email
from emailq.task_message import task_message


@pytest.fixture
def ingest_on(tmp_path) -> Iterator[Callable[[dict[str, str]], str]]:
    with ingests(tmp_path) as start:
        yield start


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
        # Sentinels convert it after seeing it up for a few INFO periods; on a loaded machine
        # a Sentinel whose timer runs late enters TILT and acts on nothing for 30 s more
        # (a run on this 2-core machine waited over 60 s here).
        wait_for(lambda: cluster.replicas_in_sync(cluster.replica) == 1, 150, "the old primary to rejoin as a replica", interval=0.2)
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
        wait_for(lambda: census.count(new_primary, KEYS).in_flight == 0, 30, "nothing left in flight")
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
    from emailq.worker.places.dead_letters import DeadLetter, DeadLetters

    DeadLetters(redis_client, KEYS).add(DeadLetter(id="m1", reason="rejected", detail="404", raw="{}"))
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

    from emailq.worker.celery_glue.app import celery_config

    settings = settings_from({"EMAILQ_REDIS_URL": "sentinel://:pw@a:26379/1;sentinel://b:26380", "EMAILQ_REDIS_SENTINEL_MASTER": "m"})
    config = celery_config(settings)
    assert config["broker_url"] == "sentinel://:pw@a:26379/1"
    assert config["broker_transport_options"]["master_name"] == "m"
    connection = Connection(config["broker_url"], transport=config["broker_transport"])
    connection.maybe_switch_next()
    assert connection.transport_cls == "emailq.worker.celery_glue.transport:SentinelTransport"


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
