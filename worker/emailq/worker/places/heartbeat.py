"""This worker's heartbeat: a thread and a Redis connection of its own, so that it never
waits for anything else the worker does.

Every `BEAT_SECONDS` it renews `<p><q>:alive:<owner>` to a lifetime of
`EMAILQ_HEARTBEAT_SECONDS` (an expiry on Redis's clock: no two workers' clocks are ever
compared). The sweeps (`housekeeping.py`) run on other threads and connections: a SCAN of
a huge shared database, or a slow Redis, delays them, never this. A worker whose
heartbeat lapses is taken for dead and its in-flight list is reclaimed by another worker.

If this worker stalled for longer than the lifetime (stopped, swapped out, its VM paused)
and comes back, one script, over every queue it serves, tells it what happened meanwhile:

- every key was still there: renewed, nothing happened;
- one had lapsed but the owner is still registered there: nobody took that list; renewed;
- one had lapsed and another worker reclaimed the list (a reclaim unregisters the owner):
  this worker was taken for dead. The script gives up that owner on every queue (deletes
  its heartbeat keys, so that what is left in its other lists is reclaimed too, not kept
  by a worker that has let go of it). The emails it took are now queued again or in
  another worker's hands: `InFlight.taken_for_dead` marks their records lost, so nothing
  it does with them later touches Redis, and the process registers again under a new
  owner name, as a new member. No take runs without its owner's heartbeat key
  (`taking.py`), so no email lands in the old lists after the reclaim, and every email
  taken under the new name is its own.

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
from emailq.store.scripts import script
from emailq.worker.runtime import Runtime

log = logging.getLogger("emailq.worker")

# Beats per lifetime: 30 by default, 4 at the shortest lifetime allowed (2 s).
BEAT_SECONDS = 0.5
# A beat that cannot reach Redis gives up this soon, and the next one tries again.
BEAT_TIMEOUT_SECONDS = 2.0

# The answers of `emailq/store/lua/beat.lua`.
RENEWED, LAPSED, GONE = 1, 2, 0


class Heartbeat:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        settings = runtime.settings
        self._ttl_ms = int(settings.heartbeat_seconds * 1000)
        self.interval = BEAT_SECONDS
        timeout = min(BEAT_TIMEOUT_SECONDS, settings.heartbeat_seconds / 4)
        # Its own client, its own pool: no sweep or delivery ever holds its connection.
        self.redis = redis_client(settings, socket_timeout=timeout, socket_connect_timeout=timeout, socket_keepalive=True)
        self._beat = self.redis.register_script(script("beat").source)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emailq-heartbeat", daemon=True)
        self._failing = False
        self._connected_since: float | None = None
        self._ever_connected = False
        self._primary: tuple[str, int] | None = None
        self.reconnects = 0  # how many times it reached Redis again after an outage or a switch
        self.taken_for_dead = 0  # how many times other workers took this one for dead
        self._unregistered: str | None = None  # a new owner name not yet registered

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
            except redis.exceptions.OutOfMemoryError as error:
                # Redis answers, but refused to register a lapsed heartbeat again.
                if not self._failing:
                    log.warning("Redis is full (%s): the heartbeat is renewed, not registered again, until it has room", error)
                self._failing = True
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
        queues = sorted(in_flight.queues)
        if not queues:
            # Before the consumer's channel registered (it does the same): register now.
            in_flight.register(self.runtime.settings.queue, self._ttl_ms, client=self.redis)
        else:
            owner = in_flight.owner
            keys = [key for queue in queues for key in (in_flight.keys(queue).alive(owner), in_flight.keys(queue).owners)]
            state = int(self._beat(keys=keys, args=[owner, self._ttl_ms]))
            if state == GONE and owner == self._unregistered:
                self._register(queues)  # the new name, after Redis refused it last time
            elif state == GONE:
                self._come_back(owner, queues)
            elif state == LAPSED:
                log.warning("this worker's heartbeat had lapsed (a stall?); nobody took its emails meanwhile: renewed")
        self._follow_primary()

    def _come_back(self, owner: str, queues: list[str]) -> None:
        """Taken for dead: let go of what the old owner took, register under a new name."""
        in_flight = self.runtime.in_flight
        lost = in_flight.taken_for_dead()
        self._unregistered = in_flight.owner
        self.taken_for_dead += 1
        log.warning(
            "this worker was taken for dead (its heartbeat lapsed: a stall?) and other workers took back the emails "
            "it held as %s; %d of them still under way here are theirs now (at most a duplicate; never acked or moved "
            "from here); carrying on as %s",
            owner,
            lost,
            in_flight.owner,
        )
        self._register(queues)

    def _register(self, queues: list[str]) -> None:
        for queue in queues:
            self.runtime.in_flight.register(queue, self._ttl_ms, client=self.redis)
        self._unregistered = None

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
