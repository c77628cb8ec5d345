"""kombu's Redis transport, with emails owned by the worker process (`in_flight.py`).

What changes from kombu's Redis channel:

- The pop is the take (`emailq.store.moves`' `take.lua`, sent by `Taker`): up to
  `TAKE_BATCH` emails from the lanes onto this process's in-flight list, where each stays until it is
  settled; nothing else is written per email. kombu's shared,
  unprefixed `unacked` hash is never used, so another Celery app on the same database is
  never touched, and a closed channel (a dropped connection) gives nothing back.
- While the circuit breaker is open, or Redis is full (it refuses the take under
  `noeviction`), or answers the take with any other error (a key of the wrong type,
  BUSY with a script, a replica's READONLY), the channel stops popping
  (`QoS.can_consume`), says so once, and tries again every second, instead of dying.
- Anything on the queue that is not a deliverable kombu message goes to the DLQ as
  `malformed`, once, and the worker carries on without reconnecting.

With `EMAILQ_REDIS_KEY_PREFIX`, kombu's clients here (`self.client`, `conn_or_acquire`)
are its `PrefixedStrictRedis`, which prefixes the first key of some commands, and only the
first key of a script. emailq's keys come whole from `emailq.store.keys` (`Taker`), so the take
and the waits go out raw on the connection, never through that client's commands; what
kombu names by the bare queue (`_size`, the remote-control BRPOP, bindings) goes through
it and is prefixed once. Every other emailq client is a plain one (`emailq.store.redis_client`).

On Redis Sentinel (`SentinelTransport`) the channel is the same, on a connection pool
that asks the Sentinels of the settings for the current primary.

kombu's private methods overridden here are pinned by `pyproject.toml` (kombu 5.7.x) and
checked by `tests/test_kombu_contract.py`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str

from emailq.store.redis_client import primary_pool
from emailq.settings import get_settings
from emailq.worker import runtime
from emailq.worker.celery_glue.pool import Stopped
from emailq.worker.places.dead_letters import RAW_LIMIT, DeadLetter
from emailq.worker.places.in_flight import Taken
from emailq.worker.places.taking import EMPTY, TAKE, TAKE_BATCH, WAIT, Taker

log = logging.getLogger("emailq.worker")

_TAKES = itertools.count(1)


class RoomWatch:
    """Whether Redis lately refused a take (for lack of memory: `ROOM`; with any other
    error reply: `REFUSED`). While it does, the consumer tries one take every
    `RETRY_SECONDS` and says so once per episode."""

    RETRY_SECONDS = 1.0

    def __init__(self, refused: str, accepted: str) -> None:
        self._says = refused, accepted
        self._full = False
        self._retry_at = 0.0

    def may_take(self) -> bool:
        return time.monotonic() >= self._retry_at

    def refused(self, error: Exception) -> None:
        if not self._full:
            log.warning(self._says[0], error)
        self._full = True
        self._retry_at = time.monotonic() + self.RETRY_SECONDS

    def accepted(self) -> None:
        if self._full:
            log.warning(self._says[1])
        self._full = False


ROOM = RoomWatch(
    "Redis is full (%s): taking no more emails until it has room; delivering those this worker holds",
    "Redis has room again: taking emails",
)
# Any other error reply: WRONGTYPE (a key of emailq's overwritten), BUSY (a script
# running past busy-reply-threshold), READONLY (a replica) … Celery takes an exception on
# the consumer's loop that is not a connection error for an unrecoverable one and exits.
REFUSED = RoomWatch(
    "Redis answered with an error (%s): taking no more emails until a take goes through, trying every second; delivering those this worker holds",
    "Redis answers takes again: taking emails",
)


class QoS(kombu_redis.QoS):
    restore_at_shutdown = False

    def can_consume(self) -> bool:
        return super().can_consume() and ROOM.may_take() and REFUSED.may_take() and runtime.get().breaker.may_take()

    def append(self, message: Any, delivery_tag: str) -> None:
        lane, inflight_key, item = self.channel._popped
        headers = message.headers if isinstance(message.headers, dict) else {}
        taken = Taken(lane, inflight_key, item, headers.get("id"), time.monotonic())
        runtime.get().in_flight.take(delivery_tag, taken)
        runtime.get().breaker.taken(delivery_tag)
        virtual.QoS.append(self, message, delivery_tag)

    # Every take ends here, in an ack or a reject, whatever its path (a delivery, the
    # consumer's dead-lettering of a non-email, a bug): a probe with no outcome is owed.
    def ack(self, delivery_tag: str) -> None:
        runtime.get().in_flight.ack(delivery_tag)
        runtime.get().breaker.ended(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        # Without requeue kombu would drop it; an email is never dropped, so an unsettled
        # one goes back on the queue either way (emailq's own paths settle first).
        runtime.get().in_flight.release(delivery_tag)
        runtime.get().breaker.ended(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        # The channel is closing (a reconnect, or shutdown): the emails stay owned by this
        # process, and their tasks still settle them.
        self._delivered.clear()

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        pass  # the Housekeeper does this, by heartbeat


class Channel(kombu_redis.Channel):
    QoS = QoS
    # emailq sends no priorities; its lanes are lists of their own (`taking.py`).
    priority_steps = [0]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._popped: tuple[str, str, bytes] | None = None
        self._brpop_queue: str | None = None
        self._takers: dict[str, Taker] = {}
        # What the command in flight on the polling connection is: a take (the script)
        # or, once a take found nothing, a blocking wait for a wake-up token.
        self._command = "take"
        self._sleep_seconds = 0.0
        self._take_sha = ""
        self._load_take()

    def _load_take(self) -> None:
        """SCRIPT LOAD the take; a refusal (BUSY, a full Redis) is a take refused, and the
        next take's NOSCRIPT loads it again."""
        try:
            self._take_sha = self.client.script_load(TAKE.source)
        except redis.exceptions.OutOfMemoryError as error:
            ROOM.refused(error)
        except redis.exceptions.ResponseError as error:
            REFUSED.refused(error)

    def _taker(self, queue: str) -> Taker:
        rt = runtime.get()
        if queue not in rt.in_flight.queues:
            rt.in_flight.register(queue, int(rt.settings.heartbeat_seconds * 1000))
        taker = self._takers.get(queue)
        # A new owner name after this worker was taken for dead (`heartbeat.py`): new lists.
        if taker is None or taker.owner != rt.in_flight.owner:
            taker = self._takers[queue] = Taker(
                rt.in_flight.keys(queue), rt.in_flight.owner, rt.settings.rate_limit, rt.settings.bulk_every, rt.in_flight.trace.ms
            )
        return taker

    def _brpop_start(self, timeout: Any = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        queue = queues[0]
        if queue.endswith(".pidbox"):
            # Celery's remote-control replies (`emailq status`): not emails; kombu's own
            # pop, without lanes or an in-flight list.
            self._command = "BRPOP"
            super()._brpop_start(timeout)
            return
        self._queue_cycle.rotate(queue)  # several queues take turns
        self._brpop_queue = queue
        try:
            taker = self._taker(queue)
        except redis.exceptions.OutOfMemoryError as error:
            ROOM.refused(error)
            return
        except redis.exceptions.ResponseError as error:
            REFUSED.refused(error)
            return
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's class default (None) is its only type
        if self._command == "take":
            if not self._take_sha:
                self._load_take()
                if not self._take_sha:
                    return
            keys, argv = taker.args(self._take_most())
            self.client.connection.send_command("EVALSHA", self._take_sha, len(keys), *keys, *argv)
        elif self._command == "sleep":
            # Waiting for the rate limit's next slot: a blocking pop on a list nobody
            # writes is a sleep in Redis, exact to the millisecond, holding no thread.
            self.client.connection.send_command("BLPOP", taker.sleep_key, f"{self._sleep_seconds:.3f}")
        else:
            self.client.connection.send_command("BLPOP", taker.wake, timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        command, self._command = self._command, "take"
        if command == "BRPOP":
            try:
                return bool(super()._brpop_read(**options))
            except redis.exceptions.ResponseError as error:
                REFUSED.refused(error)  # remote control's pop, answered BUSY or the like
                raise Empty() from None
        try:
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                if command == "take":
                    # Redis may have run it: emails in this worker's list that nobody
                    # here knows of. The housekeeper's own connection saw nothing wrong.
                    runtime.get().in_flight.take_reply_lost()
                raise
            except redis.exceptions.OutOfMemoryError as error:
                ROOM.refused(error)
                raise Empty() from None
            except redis.exceptions.NoScriptError:
                self._load_take()  # a Redis restarted empty
                raise Empty() from None
            except redis.exceptions.ResponseError as error:
                REFUSED.refused(error)
                raise Empty() from None
            ROOM.accepted()
            REFUSED.accepted()
            if command != "take":
                raise Empty()  # woken (or timed out): take next
            if reply[0] == EMPTY:
                self._command = "wait"
                raise Empty()
            if reply[0] == WAIT:
                self._command, self._sleep_seconds = "sleep", max(0.001, float(reply[1]) / 1000)
                raise Empty()
            queue = self._brpop_queue
            assert queue is not None
            taker = self._takers[queue]
            pairs = [(bytes_to_str(reply[i]), reply[i + 1]) for i in range(1, len(reply) - 1, 2)]
            taker.took(len(pairs))
            for index, (lane, item) in enumerate(pairs):
                try:
                    self._deliver_taken(queue, lane, taker.inflight, item)
                except Stopped:
                    # A cold shutdown, from its signal handler, stopped the consumer or
                    # the pool under this batch: this email and the rest go back now, with
                    # one line (a give-back moves only what this worker still holds).
                    self._give_back(pairs[index:], taker.inflight)
                    log.warning("%d email(s) taken as the worker stopped consuming went back to their lanes", len(pairs) - index)
                    break
                except BaseException:
                    # Not handed to Celery: back to their lane now, not after a lost-take scan.
                    self._give_back(pairs[index + 1 :], taker.inflight)
                    raise
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu's own _brpop_read does; its default (False) types it bool
            self._flush_brpop_reauth()

    def _give_back(self, pairs: list[tuple[str, bytes]], inflight_key: str) -> None:
        for lane, item in pairs:
            runtime.get().in_flight.give_back(Taken(lane, inflight_key, item, None, time.monotonic()))

    def _take_most(self) -> int:
        """How many emails the next take may move: the free prefetch slots; one at a time
        while the circuit breaker probes. Under a rate limit too: the take script gives
        each email of a batch its own slot, and stops at the limit's burst tolerance."""
        rt = runtime.get()
        if rt.breaker.is_open:
            return 1
        free = self.qos.can_consume_max_estimate()
        return TAKE_BATCH if free is None else max(1, min(TAKE_BATCH, free))

    def _deliver_taken(self, queue: str, lane: str, inflight_key: str, item: bytes) -> None:
        problem, message = _decode(item)
        if problem:
            _dead_letter(inflight_key, item, problem)
            return
        # A delivery tag per take, not kombu's per publish: an email this worker takes
        # twice (again after giving it back, or after it was taken for dead) has two
        # records, and Celery's ack of one never settles the other (`in_flight.py`).
        message["properties"]["delivery_tag"] += f"/{next(_TAKES)}"
        # kombu's `_deliver`, without its warning and reject for each email when nobody
        # consumes: a cold shutdown cancels the consumer at any moment of a batch.
        try:
            consume = self.connection._callbacks[queue]
        except KeyError:
            raise Stopped() from None
        self._popped = (lane, inflight_key, item)
        try:
            consume(message)
        finally:
            self._popped = None

    def _queue_bind(self, *args: Any) -> None:
        # kombu records each binding at every start; a full Redis must not stop a worker
        # from starting (the binding of an existing queue is already there).
        try:
            super()._queue_bind(*args)
        except redis.exceptions.OutOfMemoryError as error:
            ROOM.refused(error)
        except redis.exceptions.ResponseError as error:
            REFUSED.refused(error)

    def maybe_refresh_binding_expiry(self) -> None:
        # Celery's control queues expire unless refreshed; a full (or busy) Redis refuses
        # the refresh, and kombu would log a traceback for it every few seconds.
        try:
            super().maybe_refresh_binding_expiry()
        except redis.exceptions.OutOfMemoryError as error:
            ROOM.refused(error)
        except redis.exceptions.ResponseError as error:
            REFUSED.refused(error)

    def _receive_one(self, c: Any) -> Any:
        # Events and remote-control broadcasts (pub/sub): an error reply there (BUSY to
        # the connection's health-check PING) is no message, and no reason to exit.
        try:
            return super()._receive_one(c)
        except redis.exceptions.ResponseError as error:
            REFUSED.refused(error)
            raise Empty() from None

    def _size(self, queue: str) -> int:
        # kombu counts in a MULTI, which a full Redis refuses (queuing any command in a
        # transaction needs memory); one list per queue needs only an LLEN. `queue` is the
        # bare name: kombu's client adds the key prefix.
        with self.conn_or_acquire() as client:
            return int(client.llen(queue))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        raise Empty()  # emailq consumes only by its take: an email must land in an in-flight list


def _decode(item: bytes) -> tuple[str, Any]:
    """(problem, message): a problem when `item` is not a kombu message kombu can deliver."""
    try:
        message = json.loads(bytes_to_str(item))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"not JSON: {error}", None
    if not isinstance(message, dict) or not isinstance(message.get("body"), str):
        return "not a kombu message", None
    properties, headers = message.get("properties"), message.get("headers", {})
    if not isinstance(properties, dict) or not isinstance(headers, dict):
        return "not a kombu message: properties or headers are not objects", None
    if not isinstance(properties.get("delivery_tag"), str) or not properties["delivery_tag"]:
        return "kombu message without a delivery tag", None
    if properties.get("body_encoding", "base64") not in ("base64", None):
        return f"unknown body encoding {properties.get('body_encoding')!r}", None
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "kombu message with a delivery_info that is not an object", None
    if not isinstance(message.get("content-type", ""), str):
        return "kombu message with a content-type that is not a string", None
    if "task" in headers and not (isinstance(headers.get("id"), str) and headers["id"]):
        # A task message without its task id, which Celery's request cannot do without
        # (it raised KeyError on the consumer's loop, taken for a lost connection, and the
        # email stayed unsent): the id the producer also writes as the correlation id.
        correlation = properties.get("correlation_id")
        headers["id"] = correlation if isinstance(correlation, str) and correlation else str(uuid.uuid4())
    return "", message


def _dead_letter(inflight_key: str, item: bytes, problem: str) -> None:
    """A queue item kombu cannot deliver: to the DLQ, out of the in-flight list at once."""
    raw = item.decode("utf-8", errors="replace")
    entry = DeadLetter(id=str(uuid.uuid4()), reason="malformed", detail=problem[:300], raw=raw[:RAW_LIMIT])
    runtime.get().dead_letters.add(entry, taken_from=(inflight_key, item))


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """emailq's channel, on the primary that the Sentinels name (kombu's SentinelChannel
    for the rest: the Sentinel-managed connection classes, the fanout prefix)."""

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # kombu reads the Sentinels from the URL's `;` alternates, which would also make
        # its Connection switch to kombu's own transport on a connection error: kombu gets
        # one URL (`app.py`), and the Sentinels, the primary's password and database come
        # from emailq's settings, as for every other client.
        params = self._connparams(asynchronous)
        for name in ("host", "port", "username", "password", "db"):
            params.pop(name, None)
        manager, pool = primary_pool(get_settings(), **params)
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        return pool


class SentinelTransport(Transport):
    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port  # type: ignore[assignment]  # kombu's base declares None
