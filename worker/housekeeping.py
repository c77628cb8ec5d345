"""The worker's background duties, on a thread of their own, every `TICK_SECONDS`:

- its heartbeat: `PEXPIRE` on `<q>:alive:<owner>` (a full Redis under `noeviction` still
  accepts it; `SET` only when the key is gone);
- moving due retries from the schedule to the back of the queue;
- putting back the in-flight emails of owners whose heartbeat lapsed — but only once this
  worker has itself been talking to Redis for a whole heartbeat lifetime, so that after
  an outage or a failover it does not declare dead the workers still reconnecting;
- repeating acks and releases that Redis did not take, and giving back (the backstop)
  emails held longer than `EMAILQ_VISIBILITY_TIMEOUT`;
- every `ADOPT_EVERY_TICKS`, registering in-flight lists no owner is registered for (so
  the sweep looks at them), giving back emails in this worker's own list that it has no
  record of (a take whose reply was lost on the wire) once two scans in a row find them,
  taking over what an older release left (`legacy.py`), and applying the DLQ's retention
  even when nothing new is dead-lettered.

A thread rather than Celery's event loop: the loop is rebuilt on every reconnect and
stalls with it, and a heartbeat must not.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from emailq.keys import Keys
from emailq.worker.in_flight import OWNER, Taken
from emailq.worker.legacy import Legacy
from emailq.worker.runtime import Runtime

log = logging.getLogger("emailq.worker")

TICK_SECONDS = 0.5
ADOPT_EVERY_TICKS = 60


class Housekeeper:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.settings = runtime.settings
        self._ttl_ms = int(self.settings.heartbeat_seconds * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emailq-housekeeper", daemon=True)
        self._connected_since: float | None = None
        self._failing = False
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
            if not client.pexpire(Keys(queue).alive(OWNER), self._ttl_ms):
                self.runtime.in_flight.register(queue, self._ttl_ms)
        if self._connected_since is None:
            self._connected_since = time.monotonic()

    def reclaim_dead(self) -> None:
        client = self.runtime.redis
        for queue in self.runtime.in_flight.queues or {self.settings.queue}:
            keys = Keys(queue)
            others = [raw.decode() for raw in client.smembers(keys.owners) if raw.decode() != OWNER]
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
            keys = Keys(queue)
            prefix = keys.inflight("")
            owners = {raw.decode() for raw in client.smembers(keys.owners)}
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                owner = key.decode().removeprefix(prefix)
                if owner not in owners:
                    log.warning("found %s with no registered worker: registering it for the sweep", key.decode())
                    client.sadd(keys.owners, owner)
            self._legacy.take_over(queue)
        self.runtime.dead_letters.trim()

    def give_back_lost(self) -> None:
        client, in_flight = self.runtime.redis, self.runtime.in_flight
        unknown: set[bytes] = set()
        for queue in in_flight.queues:
            key = Keys(queue).inflight(OWNER)
            known = in_flight.known_items()
            for item in client.lrange(key, 0, -1):
                if item in known:
                    continue
                if item not in self._unknown:
                    unknown.add(item)
                    continue
                log.warning("an email in %s that this worker never received (a lost reply): back on %s", key, queue)
                in_flight.give_back(Taken(queue, key, item, None, time.monotonic()))
        self._unknown = unknown

    def leave(self) -> None:
        """At a clean exit, after the pool finished: give back what is left, stop the
        heartbeat so that nothing waits for it to lapse."""
        runtime = self.runtime
        runtime.in_flight.give_back_all()
        runtime.in_flight.finish_unfinished()
        try:
            for queue in runtime.in_flight.queues or {self.settings.queue}:
                keys = Keys(queue)
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
