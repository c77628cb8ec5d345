"""The worker's sweeps, on threads and connections other than the heartbeat's
(`heartbeat.py`): however long a sweep takes (a SCAN of a huge shared database, a slow
Redis), the heartbeat does not wait for it, so no live worker is taken for dead for it.

Sweeps of what all workers share run under a lease: a worker first sets
`<p><q>:lease:<sweep>` with `SET NX PX <interval>`; the one that gets it sweeps, the others
skip that sweep until the lease expires (on Redis's clock: no two workers' clocks are
compared). So each is done by one worker per interval, however many run. A lease only
saves work; every move in a sweep is one atomic script, right even if two workers sweep
at once (a sweep that outlasts its lease, a worker that stalled holding one).

- `due`, every `DUE_SECONDS`: due retries from the schedule to the back of their lane;
- `reclaim`, every `RECLAIM_SECONDS`: the in-flight lists of owners whose heartbeat lapsed
  back on their queue — only by a worker whose own heartbeat has reached Redis without a
  break for a whole heartbeat lifetime, so that after an outage or a failover it does not
  declare dead the workers still reconnecting. On Sentinel that clock also restarts when
  the primary changes: heartbeats may have lapsed on the new primary while Sentinel took
  `down-after-milliseconds` to notice, so what must hold is only that every live worker
  reaches the new primary within one heartbeat lifetime of the first, not that the
  lifetime exceeds Sentinel's down-after;
- every `SCAN_SECONDS`, on a thread of their own (they read the whole keyspace):
  `orphans`, registering in-flight lists no owner is registered for (so that `reclaim`
  looks at them); `legacy`, taking over what an older release left (`legacy.py`);
  `dlq-trim`, the DLQ's retention even when nothing new is dead-lettered.

Each worker also looks after its own records, with no lease: it repeats acks and
releases that Redis did not take, gives back (the backstop) emails held longer than
`EMAILQ_VISIBILITY_TIMEOUT`, and every `SCAN_SECONDS` gives back emails in its own list
that it has no record of once two scans in a row find them (`give_back_lost`). Such emails
come from a take whose reply was lost on the wire, or from a failover that lost the old
primary's last moves (an ack, a move to the schedule or the DLQ), which brings them back
into this list; after every reconnect and change of primary the two scans come
`RESCAN_SECONDS` apart instead, so that they are delivered again (at-least-once) within
seconds, never stranded.

Threads rather than Celery's event loop: the loop is rebuilt on every reconnect and
stalls with it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from emailq.store.keys import Keys
from emailq.worker.places.heartbeat import Heartbeat
from emailq.worker.places.in_flight import Taken
from emailq.worker.places.legacy import Legacy
from emailq.worker.runtime import Runtime

log = logging.getLogger("emailq.worker")

TICK_SECONDS = 0.25
DUE_SECONDS = 0.25
RECLAIM_SECONDS = 0.5
SCAN_SECONDS = 30.0
# How often the scans' thread asks for their leases: a scan starts within this of its
# lease expiring, whichever worker asks first.
SCAN_TICK_SECONDS = 1.0
# After a reconnect or a change of primary, the two scans of this worker's own in-flight
# list (`give_back_lost`) this far apart: long enough for an email taken just before the
# first scan to be recorded by the second.
RESCAN_SECONDS = 2.0
# A sweep longer than this is logged: it says how large or slow the database is.
SLOW_SWEEP_SECONDS = 5.0


class _Loop:
    """A daemon thread that calls `work` every `every` seconds until stopped; Redis being
    full or away is said once per episode (at debug level when `quiet`: another loop
    says it already), and it carries on."""

    def __init__(self, name: str, every: float, work: Callable[[], None], quiet: bool = False):
        self.name, self.every, self.work = name, every, work
        self._say = log.debug if quiet else log.warning
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.work()
            except redis.exceptions.OutOfMemoryError as error:
                if not self._failing:
                    self._say("Redis is full (%s): due retries and reclaims wait until it has room", error)
                self._failing = True
            except redis.RedisError as error:
                if not self._failing:
                    self._say("Redis unavailable to %s (%s); still trying", self.name, error)
                self._failing = True
            except Exception:
                log.exception("%s failed; continuing", self.name)
            else:
                if self._failing:
                    self._say("Redis available again to %s, with room", self.name)
                self._failing = False
            self._stop.wait(self.every)


class Housekeeper:
    def __init__(self, runtime: Runtime, heartbeat: Heartbeat | None = None):
        self.runtime = runtime
        self.settings = runtime.settings
        self.heartbeat = heartbeat or Heartbeat(runtime)
        self._often = _Loop("emailq-housekeeper", TICK_SECONDS, self.tick)
        self._seldom = _Loop("emailq-scans", SCAN_TICK_SECONDS, self.scan, quiet=True)
        self._reconnects = (0, 0)  # the heartbeat's reconnects, takes whose reply was lost
        self._rescans: list[float] = []  # when to scan the own list, after a reconnect
        self._next_own_scan = 0.0
        self._last_own_scan = -RESCAN_SECONDS
        self._legacy = Legacy(runtime.redis)
        self._unknown: set[bytes] = set()  # in our own list, no record: lost if seen again

    def start(self) -> None:
        self.heartbeat.start()
        self._often.start()
        self._seldom.start()

    def stop(self) -> None:
        # A scan of a large database may go on for a while: it is not waited for (its
        # moves are atomic, and the process is leaving), so a stop stays quick.
        self._seldom.stop(wait=0.5)
        self._often.stop(wait=5)
        self.heartbeat.stop()

    def _queues(self) -> set[str]:
        return set(self.runtime.in_flight.queues) or {self.settings.queue}

    def _may_declare_dead(self) -> bool:
        """Whether this worker has reached Redis long enough to judge others' heartbeats."""
        return self.heartbeat.connected_for() >= self.settings.heartbeat_seconds

    def _leased(self, keys: Keys, sweep: str, seconds: float) -> bool:
        """Whether this worker does `sweep` of `keys` now: its lease was free, and is now
        this worker's for `seconds`."""
        return bool(self.runtime.redis.set(keys.lease(sweep), self.runtime.in_flight.owner, nx=True, px=max(1, int(seconds * 1000))))

    def _sweep(self, keys: Keys, sweep: str, seconds: float, work: Callable[[], object]) -> None:
        if not self._leased(keys, sweep, seconds):
            return
        started = time.monotonic()
        work()
        took = time.monotonic() - started
        if took > SLOW_SWEEP_SECONDS:
            log.warning("the %s sweep of %s took %.1fs (a large database or a slow Redis); heartbeats do not wait for it", sweep, keys.queue, took)

    def tick(self) -> None:
        """This worker's own duties, then the frequent sweeps (due retries, reclaims)."""
        runtime = self.runtime
        runtime.in_flight.finish_unfinished()
        for taken in runtime.in_flight.overdue(self.settings.visibility_timeout):
            log.warning("%s held for over %ss: back to the queue", taken.message_id, self.settings.visibility_timeout)
            runtime.in_flight.give_back(taken)
        now = time.monotonic()
        # A reconnect (the heartbeat's) or a take's lost reply (the consumer's connection):
        # emails may be in this worker's list with no record of them here.
        reconnects = (self.heartbeat.reconnects, runtime.in_flight.lost_take_replies)
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self._rescans = [now + RESCAN_SECONDS, now + 2 * RESCAN_SECONDS]
        eligible = self._may_declare_dead()
        rescan = bool(self._rescans) and now >= self._rescans[0]
        # Two scans at least RESCAN_SECONDS apart, whichever asked for them.
        if (rescan or (eligible and now >= self._next_own_scan)) and now - self._last_own_scan >= RESCAN_SECONDS:
            if rescan:
                self._rescans.pop(0)
            else:
                self._next_own_scan = now + SCAN_SECONDS
            self._last_own_scan = now
            self.give_back_lost()
        self._sweep(Keys.of(self.settings), "due", DUE_SECONDS, runtime.schedule.move_due)
        if eligible:
            for queue in self._queues():
                keys = runtime.in_flight.keys(queue)
                self._sweep(keys, "reclaim", RECLAIM_SECONDS, functools.partial(self.reclaim_dead, queue))

    def scan(self) -> None:
        """The sweeps that read the whole keyspace, each by one worker every `SCAN_SECONDS`."""
        if not self._may_declare_dead():
            return
        for queue in self._queues():
            keys = self.runtime.in_flight.keys(queue)
            self._sweep(keys, "orphans", SCAN_SECONDS, functools.partial(self.adopt_orphans, keys))
            # An older release had no key prefix: a prefixed deployment is newer than
            # it, and the unprefixed keys it would read are another deployment's.
            if not self.settings.redis_key_prefix:
                self._sweep(keys, "legacy", SCAN_SECONDS, functools.partial(self._legacy.take_over, queue))
        self._sweep(Keys.of(self.settings), "dlq-trim", SCAN_SECONDS, self.runtime.dead_letters.trim)

    def reclaim_dead(self, queue: str) -> None:
        client = self.runtime.redis
        keys = self.runtime.in_flight.keys(queue)
        me = self.runtime.in_flight.owner
        others = [raw.decode() for raw in cast(set[bytes], client.smembers(keys.owners)) if raw.decode() != me]
        with client.pipeline(transaction=False) as pipe:
            for owner in others:
                pipe.exists(keys.alive(owner))
            alive = pipe.execute()
        # A cheap filter; the script checks the heartbeat again, atomically.
        for owner in (o for o, up in zip(others, alive) if not up):
            moved = self.runtime.in_flight.reclaim(queue, owner)
            if moved > 0:
                log.warning("worker %s stopped its heartbeat: %d email(s) back on %s", owner, moved, queue)

    def adopt_orphans(self, keys: Keys) -> None:
        client = self.runtime.redis
        prefix = keys.inflight("")
        owners = {raw.decode() for raw in cast(set[bytes], client.smembers(keys.owners))}
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            owner = key.decode().removeprefix(prefix)
            if owner not in owners:
                log.warning("found %s with no registered worker: registering it for the sweep", key.decode())
                client.sadd(keys.owners, owner)

    def give_back_lost(self) -> None:
        client, in_flight = self.runtime.redis, self.runtime.in_flight
        unknown: set[bytes] = set()
        for queue in tuple(in_flight.queues):
            keys = in_flight.keys(queue)
            key = keys.inflight(in_flight.owner)
            known = in_flight.known_items()
            for item in cast(list[bytes], client.lrange(key, 0, -1)):
                if item in known:
                    continue
                if item not in self._unknown:
                    unknown.add(item)
                    continue
                log.warning("an email in %s that this worker has no record of (a lost reply, or an ack a failover lost): back on %s", key, queue)
                in_flight.give_back(Taken(keys.interactive, key, item, None, time.monotonic()))
        self._unknown = unknown

    def leave(self) -> None:
        """At a clean exit, after the pool finished and `stop`: give back what is left,
        stop the heartbeat so that nothing waits for it to lapse."""
        runtime = self.runtime
        started = time.monotonic()
        flushed = runtime.in_flight.flush_acks()
        if not flushed:
            # Delivered, still in the in-flight list: the next worker sends them again.
            log.warning("the acks of delivered emails did not all reach Redis within 5s: those emails may be sent again")
        given_back = runtime.in_flight.give_back_all()
        runtime.in_flight.finish_unfinished()
        took = time.monotonic() - started
        log.info("leaving: acks %s, %d unsent email(s) back on the queue, in %.2fs", "written" if flushed else "NOT all written", given_back, took)
        try:
            owner = runtime.in_flight.owner
            for queue in runtime.in_flight.queues or {self.settings.queue}:
                keys = runtime.in_flight.keys(queue)
                if runtime.in_flight.moves(queue).leave(owner):
                    continue
                # What Redis could not take back waits for the heartbeat to lapse.
                log.warning("some emails stay on %s until this worker's heartbeat lapses", keys.inflight(owner))
        except redis.RedisError as error:
            log.warning("could not unregister from Redis (%s): other workers will after %ss", error, self.settings.heartbeat_seconds)
