"""The worker's background duties, on a thread of their own, every `TICK_SECONDS`:

- its heartbeat: `PEXPIRE` on `<p><q>:alive:<owner>` (a full Redis under `noeviction` still
  accepts it; `SET` only when the key is gone);
- moving due retries from the schedule to the back of the queue;
- putting back the in-flight emails of owners whose heartbeat lapsed — but only once this
  worker has itself been talking to Redis for a whole heartbeat lifetime, so that after
  an outage or a failover it does not declare dead the workers still reconnecting. On
  Sentinel the clock also restarts when the primary changes: heartbeats may have lapsed
  on the new primary while Sentinel took `down-after-milliseconds` to notice, so what
  must hold is only that every live worker reaches the new primary within one heartbeat
  lifetime of the first, not that the lifetime exceeds Sentinel's down-after;
- repeating acks and releases that Redis did not take, and giving back (the backstop)
  emails held longer than `EMAILQ_VISIBILITY_TIMEOUT`;
- every `ADOPT_EVERY_TICKS`, registering in-flight lists no owner is registered for (so
  the sweep looks at them), giving back emails in this worker's own list that it has no
  record of once two scans in a row find them (`give_back_lost`), taking over what an
  older release left (`legacy.py`), and applying the DLQ's retention even when nothing
  new is dead-lettered. Such emails come from a take whose reply was lost on the wire,
  or from a failover that lost the old primary's last moves (an ack, a move to the
  schedule or the DLQ), which brings them back into this list; after every reconnect and
  change of primary the two scans come `RESCAN_SECONDS` apart instead, so that they are
  delivered again (at-least-once) within seconds, never stranded.

A thread rather than Celery's event loop: the loop is rebuilt on every reconnect and
stalls with it, and a heartbeat must not.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import cast

import redis

from emailq.worker.places.in_flight import OWNER, Taken
from emailq.worker.places.legacy import Legacy
from emailq.worker.runtime import Runtime

log = logging.getLogger("emailq.worker")

TICK_SECONDS = 0.5
ADOPT_EVERY_TICKS = 60
# After a reconnect or a change of primary, the two scans of this worker's own in-flight
# list (`give_back_lost`) this far apart: long enough for an email taken just before the
# first scan to be recorded by the second.
RESCAN_SECONDS = 2.0


class Housekeeper:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.settings = runtime.settings
        self._ttl_ms = int(self.settings.heartbeat_seconds * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emailq-housekeeper", daemon=True)
        self._connected_since: float | None = None
        self._failing = False
        self._ever_connected = False
        self._primary: tuple[str, int] | None = None
        self._rescans: list[float] = []  # when to scan the own list, after a reconnect
        self._ticks = 0
        self._legacy = Legacy(runtime.redis)
        self._unknown: set[bytes] = set()  # in our own list, no record: lost if seen again

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except redis.exceptions.OutOfMemoryError as error:
                # Redis answers (the heartbeat went through) but is full: due retries and
                # reclaims wait for room; nothing else changes.
                if not self._failing:
                    log.warning("Redis is full (%s): due retries and reclaims wait until it has room", error)
                self._failing = True
            except redis.RedisError as error:
                self._connected_since = None
                self._rescans = []  # scheduled again once reconnected
                if not self._failing:
                    log.warning("Redis unavailable to the housekeeper (%s); still trying", error)
                self._failing = True
            except Exception:
                log.exception("housekeeping failed; continuing")
            else:
                if self._failing:
                    log.warning("Redis available again, with room")
                self._failing = False
            if self._stop.wait(TICK_SECONDS):
                return

    def tick(self) -> None:
        self.beat()
        runtime = self.runtime
        runtime.in_flight.finish_unfinished()
        runtime.schedule.move_due()
        for taken in runtime.in_flight.overdue(self.settings.visibility_timeout):
            log.warning("%s held for over %ss: back to the queue", taken.message_id, self.settings.visibility_timeout)
            runtime.in_flight.give_back(taken)
        if self._rescans and time.monotonic() >= self._rescans[0]:
            self._rescans.pop(0)
            self.give_back_lost()
        if self._connected_since is not None and time.monotonic() - self._connected_since >= self.settings.heartbeat_seconds:
            if self._ticks % ADOPT_EVERY_TICKS == 0:
                self.adopt_orphans()
                self.give_back_lost()
            self._ticks += 1
            self.reclaim_dead()

    def beat(self) -> None:
        client = self.runtime.redis
        queues = self.runtime.in_flight.queues or {self.settings.queue}
        for queue in queues:
            if not client.pexpire(self.runtime.in_flight.keys(queue).alive(OWNER), self._ttl_ms):
                self.runtime.in_flight.register(queue, self._ttl_ms)
        # On Sentinel: the primary this client's connections went to (no round trip).
        primary = getattr(client.connection_pool, "master_address", None)
        if primary is not None and primary != self._primary:
            if self._primary is not None:
                log.warning("Redis primary is now %s:%s (was %s:%s)", *primary, *self._primary)
                self._connected_since = None
            self._primary = primary
        if self._connected_since is None:
            now = time.monotonic()
            if self._ever_connected:
                self._rescans = [now + RESCAN_SECONDS, now + 2 * RESCAN_SECONDS]
            self._ever_connected = True
            self._connected_since = now

    def reclaim_dead(self) -> None:
        client = self.runtime.redis
        for queue in self.runtime.in_flight.queues or {self.settings.queue}:
            keys = self.runtime.in_flight.keys(queue)
            others = [raw.decode() for raw in cast(set[bytes], client.smembers(keys.owners)) if raw.decode() != OWNER]
            with client.pipeline(transaction=False) as pipe:
                for owner in others:
                    pipe.exists(keys.alive(owner))
                alive = pipe.execute()
            # A cheap filter; the script checks the heartbeat again, atomically.
            for owner in (o for o, up in zip(others, alive) if not up):
                moved = self.runtime.in_flight.reclaim(queue, owner)
                if moved > 0:
                    log.warning("worker %s stopped its heartbeat: %d email(s) back on %s", owner, moved, queue)

    def adopt_orphans(self) -> None:
        client = self.runtime.redis
        for queue in self.runtime.in_flight.queues or {self.settings.queue}:
            keys = self.runtime.in_flight.keys(queue)
            prefix = keys.inflight("")
            owners = {raw.decode() for raw in cast(set[bytes], client.smembers(keys.owners))}
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                owner = key.decode().removeprefix(prefix)
                if owner not in owners:
                    log.warning("found %s with no registered worker: registering it for the sweep", key.decode())
                    client.sadd(keys.owners, owner)
            # An older release had no key prefix: a prefixed deployment is newer than
            # it, and the unprefixed keys it would read are another deployment's.
            if not self.settings.redis_key_prefix:
                self._legacy.take_over(queue)
        self.runtime.dead_letters.trim()

    def give_back_lost(self) -> None:
        client, in_flight = self.runtime.redis, self.runtime.in_flight
        unknown: set[bytes] = set()
        for queue in in_flight.queues:
            keys = in_flight.keys(queue)
            key = keys.inflight(OWNER)
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
        """At a clean exit, after the pool finished: give back what is left, stop the
        heartbeat so that nothing waits for it to lapse."""
        runtime = self.runtime
        runtime.in_flight.flush_acks()
        runtime.in_flight.give_back_all()
        runtime.in_flight.finish_unfinished()
        try:
            for queue in runtime.in_flight.queues or {self.settings.queue}:
                keys = runtime.in_flight.keys(queue)
                if runtime.redis.llen(keys.inflight(OWNER)) == 0:
                    with runtime.redis.pipeline(transaction=True) as pipe:
                        pipe.srem(keys.owners, OWNER)
                        pipe.delete(keys.alive(OWNER))
                        pipe.execute()
                else:
                    # What Redis could not take back waits for the heartbeat to lapse.
                    log.warning("some emails stay on %s until this worker's heartbeat lapses", keys.inflight(OWNER))
        except redis.RedisError as error:
            log.warning("could not unregister from Redis (%s): other workers will after %ss", error, self.settings.heartbeat_seconds)
