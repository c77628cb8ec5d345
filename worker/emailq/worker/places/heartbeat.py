"""This worker's heartbeat: a thread and a Redis connection of its own, so that it never
waits for anything else the worker does.

Every `BEAT_SECONDS` it renews `<p><q>:alive:<owner>` to a lifetime of
`EMAILQ_HEARTBEAT_SECONDS` (an expiry on Redis's clock: no two workers' clocks are ever
compared). The sweeps (`housekeeping.py`) run on other threads and connections: a SCAN of
a huge shared database, or a slow Redis, delays them, never this. A worker whose
heartbeat lapses is taken for dead and its in-flight list is reclaimed by another worker.

If this worker stalled for longer than the lifetime (stopped, swapped out, its VM paused)
and comes back, one script tells it what happened meanwhile:

- the key was still there: renewed, nothing happened;
- it had lapsed but the owner is still registered: nobody took its list; registered again;
- it had lapsed and another worker reclaimed the list (the reclaim unregisters the owner):
  this worker was taken for dead. The emails it took before are now queued again or in
  another worker's hands, so their records are marked lost (`InFlight.taken_for_dead`)
  and nothing it does with them later touches Redis; it registers again and carries on
  as a new member. Takes wait for this (`taking.py`: no take without a heartbeat key), so
  every email taken afterwards is its own.

The thread also keeps the worker's view of its connection: how long it has been talking
to Redis without a break (sweeps that declare others dead wait for a whole lifetime of it
after an outage, see `housekeeping.py`), and each reconnect or change of Sentinel primary.
A `PEXPIRE` is what a full Redis under `noeviction` still accepts; so is this script.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from emailq.store.redis_client import redis_client
from emailq.worker.places.in_flight import OWNER
from emailq.worker.runtime import Runtime

log = logging.getLogger("emailq.worker")

# Beats per lifetime: 30 by default, 4 at the shortest lifetime allowed (2 s).
BEAT_SECONDS = 0.5
# A beat that cannot reach Redis gives up this soon, and the next one tries again.
BEAT_TIMEOUT_SECONDS = 2.0

# KEYS: this owner's heartbeat, the owners set. ARGV: owner, lifetime ms.
# Returns 1: renewed; 2: it had lapsed, nobody took the list (registered again);
# 0: not registered (taken for dead and reclaimed, or never registered): registered now.
_BEAT = """
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 1 then return 1 end
local kept = redis.call('SISMEMBER', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], 1, 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if kept == 1 then return 2 end
return 0
"""
RENEWED, LAPSED, UNREGISTERED = 1, 2, 0


class Heartbeat:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        settings = runtime.settings
        self._ttl_ms = int(settings.heartbeat_seconds * 1000)
        self.interval = BEAT_SECONDS
        timeout = min(BEAT_TIMEOUT_SECONDS, settings.heartbeat_seconds / 4)
        # Its own client, its own pool: no sweep or delivery ever holds its connection.
        self.redis = redis_client(settings, socket_timeout=timeout, socket_connect_timeout=timeout, socket_keepalive=True)
        self._beat = self.redis.register_script(_BEAT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emailq-heartbeat", daemon=True)
        self._failing = False
        self._connected_since: float | None = None
        self._ever_connected = False
        self._primary: tuple[str, int] | None = None
        self.reconnects = 0  # how many times it reached Redis again after an outage or a switch
        self.taken_for_dead = 0  # how many times other workers took this one for dead

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.redis.close()

    def connected_for(self) -> float:
        """Seconds this worker has been beating without a break (0 while it cannot)."""
        since = self._connected_since
        return 0.0 if since is None else time.monotonic() - since

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as error:
                self._connected_since = None
                if not self._failing:
                    log.warning("the heartbeat cannot reach Redis (%s); still trying every %gs", error, self.interval)
                self._failing = True
            except Exception:
                log.exception("the heartbeat failed; continuing")
            else:
                if self._failing:
                    log.warning("the heartbeat reaches Redis again")
                self._failing = False
            if self._stop.wait(self.interval):
                return

    def beat(self) -> None:
        in_flight = self.runtime.in_flight
        for queue in tuple(in_flight.queues) or (self.runtime.settings.queue,):
            keys = in_flight.keys(queue)
            sent = time.monotonic()
            state = int(self._beat(keys=[keys.alive(OWNER), keys.owners], args=[OWNER, self._ttl_ms]))
            if state == UNREGISTERED and queue in in_flight.queues:
                self._came_back_from_the_dead(queue, in_flight.taken_for_dead(keys.inflight(OWNER), sent))
            elif state == LAPSED:
                log.warning("this worker's heartbeat on %s had lapsed (a stall?); nobody took its emails: renewed", queue)
            in_flight.queues.add(queue)
        self._follow_primary()

    def _came_back_from_the_dead(self, queue: str, lost: int) -> None:
        self.taken_for_dead += 1
        log.warning(
            "this worker was taken for dead on %s (its heartbeat lapsed: a stall?) and another worker took back "
            "the emails it held; %d still being delivered here are theirs now (a duplicate at most, never acked or "
            "moved from here); carrying on as a new member",
            queue,
            lost,
        )

    def _follow_primary(self) -> None:
        # On Sentinel: the primary this client's connection went to (no round trip).
        primary = getattr(self.redis.connection_pool, "master_address", None)
        if primary is not None and primary != self._primary:
            if self._primary is not None:
                log.warning("Redis primary is now %s:%s (was %s:%s)", *primary, *self._primary)
                self._connected_since = None
            self._primary = primary
        if self._connected_since is None:
            if self._ever_connected:
                self.reconnects += 1
            self._ever_connected = True
            self._connected_since = time.monotonic()
