"""The heartbeat never waits, and a worker that stalls past it comes back without harm.

A worker's heartbeat (`<q>:alive:<owner>`, 15 s by default) is what keeps other workers
from reclaiming the emails it holds. It has a thread and a Redis connection of its own, so
a sweep that takes longer than its lifetime (a large shared database behind a slow link)
does not make a live worker look dead; and a worker that was frozen for longer (SIGSTOP)
learns on waking that its emails were taken back, leaves them alone, and carries on.
Default settings throughout, but for where Redis and the endpoint are."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from conftest import RedisServer, Reply, run_emailq, settings_from, wait_for
from helpers import KEYS, SIGN_IN, assert_one_home
from slow_link import slow_link

from emailq import Producer
from emailq.store import census
from emailq.worker.places.heartbeat import Heartbeat
from emailq.worker.places.in_flight import Taken
from emailq.worker.places.taking import TAKE, TAKEN, WAIT, Taker
from emailq.worker.runtime import Runtime

LIFETIME_MS = 15_000  # EMAILQ_HEARTBEAT_SECONDS's default

# Another app's keys on the same database, and a link that adds 7 ms each way: together,
# one SCAN of the keyspace (1,500 pages of 1,000, each a 14 ms round trip) takes over 21 s,
# longer than a heartbeat lifetime. Each key is small: about 150 MB in all.
SHARED_KEYS = 1_500_000
LINK_DELAY = 0.007


@pytest.fixture
def big_shared_redis(tmp_path) -> Iterator[RedisServer]:
    """A Redis of its own (no append-only file: 1.5 M keys would be written to disk) whose
    database another app fills with `SHARED_KEYS` keys."""
    server = RedisServer(tmp_path, "--appendonly", "no")
    server.start()
    client = server.client()
    for start in range(0, SHARED_KEYS, 20_000):  # any Redis version: no DEBUG POPULATE
        client.mset({f"another-app:session:{n}": "x" for n in range(start, start + 20_000)})
    client.close()
    yield server
    server.stop()


def owner_of(worker, client: redis.Redis) -> str:
    """The owner name (`<host>-<pid>-<random>`) the worker process registered."""
    pid = f"-{worker.process.pid}-"
    return wait_for(lambda: next((o.decode() for o in client.smembers(KEYS.owners) if pid in o.decode()), None), 20, "the worker to register")


def message_ids(items: list[bytes]) -> set[str]:
    return {json.loads(item)["headers"]["id"] for item in items}


def test_a_sweep_longer_than_the_heartbeat_does_not_make_a_live_worker_look_dead(
    big_shared_redis, endpoint, start_worker, settings_env, defaults_env
):
    endpoint.behave = lambda headers, body: Reply(200, delay=5.0)  # emails stay in flight
    direct = big_shared_redis.client()
    producer = Producer(settings_from({**settings_env, "EMAILQ_REDIS_URL": big_shared_redis.url}))
    with slow_link(big_shared_redis.port, LINK_DELAY) as link:
        env = {**defaults_env, "EMAILQ_REDIS_URL": f"redis://127.0.0.1:{link.port}/0"}
        workers = [start_worker(env=env), start_worker(env=env)]
        owners = [owner_of(w, direct) for w in workers]

        sent: list[str] = []
        stop = threading.Event()

        def trickle() -> None:  # 10 emails a second, all along: always some in flight
            while not stop.wait(0.1):
                sent.append(producer.send(SIGN_IN))

        sender = threading.Thread(target=trickle)
        sender.start()
        samples: list[tuple[float, str, int, int, str]] = []  # at, owner, PTTL, in flight, orphans sweeper

        def slow_sweeps() -> list[float]:
            lines = [line for w in workers for line in w.output().splitlines() if "sweep of emailq took" in line]
            return [float(line.split(" took ")[1].split("s ")[0]) for line in lines]

        try:
            deadline = time.monotonic() + 150
            while not any(took > LIFETIME_MS / 1000 for took in slow_sweeps()):
                assert time.monotonic() < deadline, f"no sweep outlasted a heartbeat lifetime: {slow_sweeps()}"
                sweeper = (direct.get(KEYS.lease("orphans")) or b"").decode()
                for owner in owners:
                    samples.append((time.monotonic(), owner, direct.pttl(KEYS.alive(owner)), direct.llen(KEYS.inflight(owner)), sweeper))
                time.sleep(0.2)
        finally:
            stop.set()
            sender.join()
        wait_for(lambda: set(endpoint.delivered_keys()) >= set(sent), 60, "every email delivered", interval=0.2)
        wait_for(lambda: census.count(direct, KEYS).in_flight == 0, 20, "nothing left in flight", interval=0.2)

    lowest = {owner: min(s[2] for s in samples if s[1] == owner) for owner in owners}
    swept_holding = [s[3] for s in samples if s[1] == s[4]]
    posted = Counter(r.key for r in endpoint.received)
    print(
        f"\nslowest sweeps: {sorted(slow_sweeps())[-3:]} s; {len(samples) // 2} samples over "
        f"{samples[-1][0] - samples[0][0]:.0f}s: lowest heartbeat PTTL {lowest} ms (lifetime {LIFETIME_MS}); "
        f"the orphans sweeper held {min(swept_holding, default=0)}-{max(swept_holding, default=0)} emails while sweeping; "
        f"{len(sent)} emails, {len(endpoint.received)} POSTs"
    )
    # Renewed every half second: a PTTL this low would be 3 s without a beat.
    assert all(pttl >= LIFETIME_MS - 3000 for pttl in lowest.values()), lowest
    assert swept_holding and sum(1 for n in swept_holding if n > 0) >= 0.8 * len(swept_holding), "the sweeper held no emails"
    assert set(posted) == set(sent) and max(posted.values()) == 1, [k for k, n in posted.items() if n > 1]
    for worker in workers:
        assert "stopped its heartbeat" not in worker.output() and "taken for dead" not in worker.output()
    assert_one_home(direct)
    producer.close()
    direct.close()


def test_a_worker_frozen_past_its_heartbeat_comes_back_without_harm(
    producer, endpoint, start_worker, redis_client, settings_env, defaults_env, tmp_path
):
    endpoint.behave = lambda headers, body: Reply(200, delay=3.0)  # a slow endpoint: emails stay in flight
    frozen, other = start_worker(env=defaults_env), start_worker(env=defaults_env)
    owner = owner_of(frozen, redis_client)
    ids = producer.send_many([SIGN_IN] * 1000)
    wait_for(lambda: redis_client.llen(KEYS.inflight(owner)) >= 100, 20, "the first worker to hold emails")

    os.killpg(frozen.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        held = message_ids(redis_client.lrange(KEYS.inflight(owner), 0, -1))
        assert held, "the frozen worker held nothing: the test proved nothing"
        # Its heartbeat lapses (15 s), and the other worker takes back what it held.
        wait_for(
            lambda: not redis_client.exists(KEYS.inflight(owner)) and not redis_client.exists(KEYS.alive(owner)), 45, "the reclaim", interval=0.2
        )
        reclaimed = time.monotonic() - stopped
        time.sleep(2)  # the other worker delivers them meanwhile
    finally:
        os.killpg(frozen.process.pid, signal.SIGCONT)

    wait_for(lambda: "this worker was taken for dead" in frozen.output(), 10, "the frozen worker to notice")
    wait_for(lambda: set(endpoint.delivered_keys()) >= set(ids), 60, "every email delivered", interval=0.2)
    wait_for(lambda: not redis_client.keys(KEYS.inflight("*")), 60, "nothing left in any in-flight list", interval=0.2)
    posted = Counter(r.key for r in endpoint.received)
    twice = {key for key, n in posted.items() if n > 1}
    print(f"\nfrozen holding {len(held)} emails; reclaimed {reclaimed:.1f}s after SIGSTOP; {len(twice)} POSTed twice")
    assert max(posted.values()) <= 2 and twice <= held, f"duplicates beyond what the frozen worker held: {twice - held}"
    checked = run_emailq(["status", "--check"], settings_env, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A healthy member again, under a new owner name: registered, beating, and alone it
    # delivers new emails once each.
    again = owner_of(frozen, redis_client)
    assert again != owner and redis_client.pttl(KEYS.alive(again)) > LIFETIME_MS - 3000
    assert not redis_client.exists(KEYS.alive(owner)) and not redis_client.sismember(KEYS.owners, owner)
    other.stop()
    endpoint.behave = lambda headers, body: Reply(200)
    after = producer.send_many([SIGN_IN] * 50)
    wait_for(lambda: set(endpoint.delivered_keys()) >= set(after), 30, "new emails delivered by the worker that was frozen")
    assert all(posted_now == 1 for key, posted_now in Counter(r.key for r in endpoint.received).items() if key in after)
    assert frozen.process.poll() is None and "Traceback" not in frozen.output()
    wait_for(lambda: census.count(redis_client, KEYS).in_flight == 0, 10, "nothing left in flight")
    assert_one_home(redis_client)


def test_a_worker_taken_for_dead_lets_go_of_what_it_took_and_carries_on(producer, redis_client, settings_env):
    # The exact sequence, in this process, with the real Redis scripts: emails taken, the
    # heartbeat lapsing, another worker reclaiming the list, this worker waking up.
    runtime = Runtime(settings_from(settings_env))
    heartbeat, in_flight = Heartbeat(runtime), runtime.in_flight
    take = runtime.redis.register_script(TAKE.source)

    def take_onto(owner: str) -> list[bytes]:
        """A take run in Redis; what it returns is recorded (or not) by the caller."""
        keys, argv = Taker(KEYS, owner, None, 0).args(1)
        return take(keys=keys, args=argv)

    def record(tag: str, owner: str, reply: list[bytes]) -> Taken:
        assert reply[0] == TAKEN, reply
        taken = Taken(reply[1].decode(), KEYS.inflight(owner), reply[2], json.loads(reply[2])["headers"]["id"], time.monotonic())
        in_flight.take(tag, taken)
        return taken

    in_flight.register("emailq", LIFETIME_MS)
    old = in_flight.owner
    first_id, late_id = producer.send(SIGN_IN), producer.send(SIGN_IN)
    first = record("first", old, take_onto(old))
    late_reply = take_onto(old)  # run by Redis; its reply is read only after the stall
    assert first.message_id == first_id and json.loads(late_reply[2])["headers"]["id"] == late_id

    redis_client.delete(KEYS.alive(old))  # the stall: its heartbeat lapses
    assert in_flight.reclaim("emailq", old) == 2  # another worker takes its list back
    assert take_onto(old)[0] == WAIT, "an email landed in a list already reclaimed"

    heartbeat.beat()  # it wakes up
    new = in_flight.owner
    assert heartbeat.taken_for_dead == 1 and new != old
    assert redis_client.smembers(KEYS.owners) == {new.encode()} and redis_client.pttl(KEYS.alive(new)) > 0
    late = record("late", old, late_reply)
    assert first.lost and late.lost
    assert in_flight.get("late") is late  # what its task is handed: lost, so not sent from here

    # The first email comes back first: this worker takes it again, under its new name;
    # a peer takes the other one.
    again = record("again", new, take_onto(new))
    assert again.item == first.item and not again.lost
    assert in_flight.get("again") is again  # the re-take's task is handed its own record
    redis_client.set(KEYS.alive("peer"), 1, px=LIFETIME_MS)
    redis_client.sadd(KEYS.owners, "peer")
    assert take_onto("peer")[2] == late.item
    in_flight.ack("first")
    in_flight.release("late")
    in_flight.give_back(first)
    assert in_flight.flush_acks()
    assert redis_client.lrange(KEYS.inflight(new), 0, -1) == [again.item], "the lost record moved the new copy"
    assert redis_client.lrange(KEYS.inflight("peer"), 0, -1) == [late.item], "the lost record moved the peer's copy"

    in_flight.ack("again")
    assert in_flight.flush_acks() and redis_client.llen(KEYS.inflight(new)) == 0
    heartbeat.beat()
    assert heartbeat.taken_for_dead == 1 and redis_client.pttl(KEYS.alive(new)) > LIFETIME_MS - 1000
    assert_one_home(redis_client)
    runtime.redis.close()
    heartbeat.redis.close()


def test_due_retries_rejoin_the_queue_within_a_quarter_second(producer, endpoint, start_worker, redis_client, defaults_env):
    # One worker per quarter second moves due retries (the `due` lease), whichever it is.
    first_attempt: set[str] = set()

    def behave(headers: dict[str, str], body: bytes) -> Reply:
        if headers["idempotency-key"] in first_attempt:
            return Reply(200)
        first_attempt.add(headers["idempotency-key"])
        return Reply(503, headers={"Retry-After": "2"})  # exactly 2 s in the schedule

    endpoint.behave = behave
    start_worker(env=defaults_env), start_worker(env=defaults_env)
    ids = []
    for _ in range(20):
        ids.append(producer.send(SIGN_IN))
        time.sleep(0.13)  # due times spread over the lease's period
    wait_for(lambda: set(endpoint.delivered_keys()) >= set(ids), 30, "every retry delivered", interval=0.2)
    late = sorted(posts[1].at - posts[0].at - 2.0 for posts in map(endpoint.requests_for, ids))
    print(f"\na retry's second POST came after its due time by: median {late[len(late) // 2] * 1000:.0f} ms, most {late[-1] * 1000:.0f} ms")
    assert late[0] >= 0 and late[-1] < 0.6, late


def test_however_many_workers_run_one_scans_the_database_per_interval(start_worker, redis_client, defaults_env):
    # Each worker used to SCAN the keyspace twice every 30 s (orphaned lists, the old
    # layout); on a large shared database that is load times the number of workers. Under
    # the `orphans` and `legacy` leases, one worker does each every 30 s, whichever it is.
    workers = [start_worker(env=defaults_env) for _ in range(3)]
    owners = {owner_of(w, redis_client) for w in workers}
    # Every worker may sweep once its heartbeat has reached Redis for a lifetime (15 s).
    wait_for(lambda: redis_client.exists(KEYS.lease("orphans"), KEYS.lease("legacy")) == 2, 40, "the first scans", interval=0.2)
    time.sleep(LIFETIME_MS / 1000)
    redis_client.config_resetstat()
    sweepers = set()
    deadline = time.monotonic() + 61
    while time.monotonic() < deadline:
        sweepers |= {redis_client.get(KEYS.lease(sweep)) for sweep in ("orphans", "legacy")}
        time.sleep(0.5)
    scans = int(redis_client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))
    print(f"\n{len(workers)} workers, 61 s: {scans} SCAN calls, by {len(sweepers - {None})} different worker(s)")
    # Two sweeps, each one SCAN page on this small database, at 30 s intervals: at most 3
    # of each in 61 s, where three workers on their own would have made 12 or more.
    assert 2 <= scans <= 6, scans
    assert {s.decode() for s in sweepers - {None}} <= owners
