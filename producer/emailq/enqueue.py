"""Putting emails on the queue: what a web app calls.

Every email is validated before anything is written, a batch goes in one Lua script
(all or none: `emailq.store.moves`), and Redis gets a short timeout so that an unreachable
queue fails a web request fast instead of hanging it. When Redis fails, the error says
honestly whether the write may have landed: nothing was sent, or it was sent and the
answer was lost. With `EMAILQ_REDIS_MIN_REPLICAS`, an enqueue is acknowledged only once
that many replicas hold it (`WAIT`), so that a Sentinel failover cannot lose it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from emailq.errors import IdempotencyConflict, InvalidMessage, QueueUnavailable
from emailq.store.keys import Keys
from emailq.store.moves import NewEmail, enqueue_command, enqueue_once_command
from emailq.store.trace import TraceLimits, address_hash
from emailq.message import Email, Envelope, checked_body, fresh_envelope, new_id, parse_email
from emailq.store.redis_client import redis_client, resolve_redis_url
from emailq.store.scripts import with_source
from emailq.settings import Settings, get_settings
from emailq.task_message import encoded_task_message, task_message

__all__ = ["Producer", "ProducerBase", "connect", "resolve_redis_url", "send_email", "send_many"]


def fail_fast(settings: Settings, timeout: float | None, retry: Any) -> dict[str, Any]:
    """A producer's connection options: `EMAILQ_REDIS_TIMEOUT` (or `timeout`) on connect and
    on every reply, `retry` (no retries, of the caller's flavour of redis-py: a producer
    answers at once and says whether the email may have been enqueued), health checks."""
    timeout = settings.redis_timeout if timeout is None else timeout
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry, "health_check_interval": 30}


def connect(settings: Settings, *, timeout: float | None = None) -> redis.Redis:
    """A Redis client that fails fast (`EMAILQ_REDIS_TIMEOUT`) rather than retrying; on
    Sentinel, one that follows the current primary."""
    return redis_client(settings, **fail_fast(settings, timeout, Retry(NoBackoff(), 0)))


# How much longer a batch's write and answer are given, per email: Redis runs the batch's script
# for about 10-30 µs an email (docs/performance.md), so a batch of 10,000 is given a second
# more than one email, not answered "may have been enqueued" (and sent again) for its size.
REPLY_SECONDS_PER_EMAIL = 0.0001
# redis-py 6 and later read one reply within a timeout of its own; 5.x (beside Celery 5.3)
# only within the socket's, so a large batch there has the plain EMAILQ_REDIS_TIMEOUT.
_READ_TAKES_TIMEOUT = "timeout" in inspect.signature(redis.connection.Connection.read_response).parameters


class ProducerBase:
    """What the synchronous and the asyncio producers share: validation, envelopes, lanes,
    and the exact commands each call sends. Only the round trip (`_write`) differs."""

    settings: Settings

    def _reply_seconds(self, ids: list[str] | None) -> float:
        """How long the answer to a write of the emails `ids` may take."""
        return self.settings.redis_timeout + len(ids or ()) * REPLY_SECONDS_PER_EMAIL

    def validate(self, email: Email | Mapping[str, Any]) -> Email:
        """The email, checked against the contract; raises InvalidMessage."""
        if isinstance(email, Email):
            data: Any = email.model_dump(exclude_none=True)
        else:
            data = email
        return parse_email(
            data,
            allow_any_type=self.settings.allow_any_type,
            max_bytes=self.settings.max_message_bytes,
        )

    def _batch(self, emails: Iterable[Email | Mapping[str, Any]], bulk: bool) -> tuple[list[str], list[NewEmail]]:
        """The ids and task messages of `emails`; raises InvalidMessage naming every bad item
        (by index) before anything is written."""
        checked: list[tuple[dict[str, Any], str | None]] = []
        problems: list[str] = []
        settings = self.settings
        for index, email in enumerate(emails):
            data = email.model_dump(exclude_none=True) if isinstance(email, Email) else email
            try:
                checked.append(checked_body(data, allow_any_type=settings.allow_any_type, max_bytes=settings.max_message_bytes))
            except InvalidMessage as error:
                problems.extend(f"item {index}: {problem}" for problem in error.problems)
        if problems:
            raise InvalidMessage(problems)
        news = [self._fresh(body, body_json, bulk) for body, body_json in checked]
        return [e.id for e in news], news

    def _fresh(self, body: dict[str, Any], body_json: str | None, bulk: bool) -> NewEmail:
        """`_new(_wrap(email, bulk))` of the email whose `body()` is `body`, with no model
        when the body's JSON is known (`fresh_envelope`): the same message, for about
        10 µs less."""
        if body_json is None:
            return self._new(self._wrap(Email.model_validate(body), bulk))
        settings = self.settings
        bulk = bulk or settings.is_bulk(body["type"])
        envelope_id = new_id()
        now = time.time()
        expires_at = now + (settings.bulk_ttl_seconds if bulk else settings.message_ttl_seconds)
        lane = self._lanes[bulk]
        envelope = fresh_envelope(body_json, envelope_id, now, expires_at, bulk)
        return NewEmail(lane, encoded_task_message(envelope, envelope_id, body, lane), envelope_id, address_hash(body["to"]))

    def _new(self, envelope: Envelope) -> NewEmail:
        lane = self._lane(envelope)
        return NewEmail(lane, task_message(envelope, lane), envelope.id, address_hash(envelope.message.to))

    def _wrap(self, email: Email, bulk: bool) -> Envelope:
        settings = self.settings
        if bulk or settings.is_bulk(email.type):
            return Envelope.wrap(email, settings.bulk_ttl_seconds, bulk=True)
        return Envelope.wrap(email, settings.message_ttl_seconds)

    def _lane(self, envelope: Envelope) -> str:
        return self._lanes[bool(envelope.bulk)]

    @functools.cached_property
    def _lanes(self) -> tuple[str, str]:
        """The interactive lane's key, then the bulk lane's (indexed by `bulk`)."""
        keys = self._keys
        return keys.interactive, keys.bulk

    @functools.cached_property
    def _keys(self) -> Keys:
        return Keys.of(self.settings)

    def _once(self, email: Email | Mapping[str, Any], key: str) -> tuple[Envelope, str, tuple[Any, ...]]:
        """The envelope, digest and script call of `send_once`."""
        checked = self.validate(email)
        envelope = self._wrap(checked, False)
        digest = _digest(checked)
        lifetime_ms = max(1, math.ceil((envelope.expires_at - envelope.created_at) * 1000))
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        record = f"{digest} {envelope.id}"
        command = enqueue_once_command(self._keys, self._trace, key_hash, record, lifetime_ms, self._new(envelope))
        return envelope, digest, command

    @functools.cached_property
    def _trace(self) -> TraceLimits:
        return TraceLimits.of(self.settings)

    def _push_command(self, emails: list[NewEmail]) -> tuple[Any, ...]:
        """The command that puts new emails on their lanes, all or none."""
        return enqueue_command(self._keys, self._trace, emails)


class Producer(ProducerBase):
    """Enqueues emails on one Redis connection pool; safe to share between threads."""

    def __init__(self, settings: Settings | None = None, client: redis.Redis | None = None):
        self.settings = settings or get_settings()
        self._redis = client or connect(self.settings)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def ping(self) -> bool:
        """Whether Redis answers within the producer's timeout."""
        try:
            return bool(self._redis.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def send(self, email: Email | Mapping[str, Any]) -> str:
        """Enqueue one email; returns its id (the `Idempotency-Key` the endpoint will see)."""
        return self.send_many([email])[0]

    def send_many(self, emails: Iterable[Email | Mapping[str, Any]], *, bulk: bool = False) -> list[str]:
        """Enqueue several emails in one round trip, all or none; returns their ids in order.

        Each goes to the interactive lane, or to the bulk lane when `bulk` or its type is
        one of `EMAILQ_BULK_TYPES` (bulk waits behind one-time codes, and lives for
        `EMAILQ_BULK_TTL_SECONDS`). Raises InvalidMessage naming every bad item (by index)
        before writing anything, and QueueUnavailable (see its `maybe_enqueued`) when
        Redis fails.
        """
        ids, messages = self._batch(emails, bulk)
        self.push(messages, ids=ids)
        return ids

    def send_once(self, email: Email | Mapping[str, Any], key: str) -> tuple[str, bool]:
        """Enqueue `email` unless `key` already enqueued one within EMAILQ_MESSAGE_TTL_SECONDS.

        Returns (id, True) when enqueued now, and (the first id, False) for a repeat of
        the same email, which enqueues nothing. Raises IdempotencyConflict when `key` was
        used for a different email, else as `send`. The check and the enqueue are one
        Redis script: a key never exists without its email, nor an email twice under it.
        """
        envelope, digest, command = self._once(email, key)
        return _once_result(self._write(command, ids=[envelope.id]), envelope, digest)

    def push(self, messages: list[NewEmail], *, ids: list[str] | None = None) -> None:
        """Put ready-made task messages on their lanes, with wake-up tokens for idle
        workers, in one script (all or none); `ids`, when given, name them in a
        QueueUnavailable."""
        if messages:
            self._write(self._push_command(messages), ids=ids)

    def _write(self, command: tuple[Any, ...], *, ids: list[str] | None = None) -> Any:
        """Send `command` (a script's) in one round trip on one connection; returns its reply.

        Takes the connection (connect, health check) before sending anything, so that a
        failure says truthfully whether the write may have landed: before sending,
        nothing was enqueued; after, a lost answer means Redis may have applied it. Then,
        with `EMAILQ_REDIS_MIN_REPLICAS`, waits on the same connection for that many
        replicas to hold the write.
        """
        pool = self._redis.connection_pool
        try:
            connection = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise QueueUnavailable(f"Redis is unreachable, nothing was enqueued: {error}", ids=ids) from None
        sent = False
        try:
            connection.check_health()  # a PING when idle a while; its failure sent nothing
            deadline = time.monotonic() + self._reply_seconds(ids)
            # A failure while sending leaves the command incomplete: Redis runs none of it
            # (a batch is one script).
            _send(connection, command, deadline)
            sent = True
            try:
                reply = connection.read_response(**_within(deadline))
            except redis.exceptions.NoScriptError:
                _send(connection, with_source(command), deadline)
                reply = connection.read_response(**_within(deadline))
            wanted, timeout = self.settings.redis_min_replicas, self.settings.redis_timeout
            if wanted > 0:
                connection.send_command("WAIT", wanted, max(1, int(timeout * 1000)), check_health=False)
                confirm_replicas(int(connection.read_response(timeout=2 * timeout)), self.settings, ids)
        except (redis.RedisError, QueueUnavailable) as error:
            if not isinstance(error, QueueUnavailable):
                connection.disconnect()  # later replies may be left unread
            raise failure(error, sent, ids) from None
        finally:
            pool.release(connection)
        return reply

    def close(self) -> None:
        self._redis.close()


def _send(connection: redis.connection.Connection, command: tuple[Any, ...], deadline: float) -> None:
    """Write `command` by `deadline`. A batch of megabytes fills the socket's buffers while
    Redis is busy: its write is given the batch's time, not the socket's timeout (redis-py
    has no timeout of its own for a write; `_sock` is the connected socket)."""
    sock: Any = getattr(connection, "_sock", None)
    budget = deadline - time.monotonic()
    # One email: the socket's own timeout is its budget (no two syscalls per enqueue).
    widen = sock is not None and budget > (connection.socket_timeout or 0)
    if widen:
        sock.settimeout(budget)
    try:
        connection.send_packed_command(connection.pack_command(*command), check_health=False)
    finally:
        sock = getattr(connection, "_sock", None)  # None once a failed write disconnected
        if widen and sock is not None:
            sock.settimeout(connection.socket_timeout)


def _within(deadline: float) -> dict[str, float]:
    """The read's timeout: what is left of the write's `deadline` (redis-py 6 and later)."""
    return {"timeout": max(deadline - time.monotonic(), 0.001)} if _READ_TAKES_TIMEOUT else {}


def confirm_replicas(confirmed: int, settings: Settings, ids: list[str] | None) -> None:
    """After `WAIT` (`EMAILQ_REDIS_MIN_REPLICAS`): QueueUnavailable(maybe_enqueued=True) if
    fewer replicas hold the write: the primary has the email, but a failover could lose it."""
    wanted = settings.redis_min_replicas
    if confirmed < wanted:
        raise QueueUnavailable(_unconfirmed(confirmed, wanted, settings.redis_timeout, ids or []), maybe_enqueued=True, ids=ids)


def failure(error: Exception, sent: bool, ids: list[str] | None) -> QueueUnavailable:
    """The QueueUnavailable a failed write raises, saying truthfully whether it may have
    landed: refused (full, read-only, loading, wrong type) or unreachable before sending,
    nothing was; a lost answer after sending, it may have been."""
    if isinstance(error, QueueUnavailable):
        return error
    if isinstance(error, (redis.ResponseError, redis.BusyLoadingError, redis.AuthenticationError)):
        return QueueUnavailable(_refused(error), ids=ids)
    if not sent:
        return QueueUnavailable(f"Redis is unreachable, nothing was enqueued: {error}", ids=ids)
    if isinstance(error.__context__, redis.ReadOnlyError):
        # A Sentinel client's server was demoted (a failover): it refused the write.
        return QueueUnavailable(_refused(error.__context__), ids=ids)
    return QueueUnavailable(_maybe_enqueued(error, ids or []), maybe_enqueued=True, ids=ids)


def _once_result(record: Any, envelope: Envelope, digest: str) -> tuple[str, bool]:
    if record is None:
        return envelope.id, True
    first_digest, _, first_id = record.decode().partition(" ")
    if first_digest != digest:
        raise IdempotencyConflict("this idempotency key was already used for a different email")
    return first_id, False


def _digest(email: Email) -> str:
    """What makes two emails the same for an idempotency key: their JSON, key order aside."""
    canonical = json.dumps(email.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _refused(error: Exception) -> str:
    if isinstance(error, redis.OutOfMemoryError):
        return f"Redis is full (maxmemory), nothing was enqueued: {error}"
    return f"Redis refused the write, nothing was enqueued: {error}"


def _maybe_enqueued(error: Exception, ids: list[str]) -> str:
    what = f"email {ids[0]}" if len(ids) == 1 else f"the {len(ids)} emails" if ids else "the emails"
    return f"Redis did not answer after the write was sent ({error}): {what} may have been enqueued; sending again may deliver twice"


def _unconfirmed(confirmed: int, wanted: int, timeout: float, ids: list[str]) -> str:
    what = f"email {ids[0]} is" if len(ids) == 1 else f"the {len(ids)} emails are" if ids else "the emails are"
    return (
        f"only {confirmed} of the {wanted} replica(s) EMAILQ_REDIS_MIN_REPLICAS asks for confirmed the write "
        f"within {timeout}s: {what} on the primary and may have been enqueued, but a failover now could lose it; "
        "sending again may deliver twice"
    )


@functools.cache
def default_producer() -> Producer:
    return Producer()


def send_email(to: str, type: str, payload: dict[str, Any], ip: str | None = None) -> str:
    """Enqueue one email with the settings from the environment; returns its id."""
    data: dict[str, Any] = {"to": to, "type": type, "payload": payload}
    if ip is not None:
        data["ip"] = ip
    return default_producer().send(data)


def send_many(emails: Iterable[Email | Mapping[str, Any]], *, bulk: bool = False) -> list[str]:
    """Enqueue several emails in one round trip, all or none; returns their ids. `bulk`:
    the bulk lane, behind one-time codes (see `Producer.send_many`)."""
    return default_producer().send_many(emails, bulk=bulk)
