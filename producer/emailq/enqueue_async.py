"""Putting emails on the queue from asyncio code (FastAPI, Starlette, Django's async views),
without blocking the event loop.

The same contract as `emailq.enqueue`, which builds every command (`ProducerBase`): the
same validation, lanes, idempotency, `WAIT` and honest errors, on redis-py's asyncio
client. One difference is asyncio's own: a call cancelled after its write was sent (a
request timeout, a client that went away) drops its connection, so that no later call
reads its reply, and the email may have been enqueued; the CancelledError carries a note
saying so, and goes on as cancellations must.

    async with AsyncProducer() as producer:      # e.g. in a FastAPI lifespan
        message_id = await producer.send({"to": ..., "type": "SignIn", "payload": {...}})
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from emailq.enqueue import ProducerBase, _once_result, confirm_replicas, fail_fast, failure
from emailq.errors import QueueUnavailable
from emailq.message import Email
from emailq.settings import Settings, get_settings
from emailq.store.moves import NewEmail
from emailq.store.redis_client import async_redis_client
from emailq.store.scripts import with_source

__all__ = ["AsyncProducer", "connect_async", "send_email_async", "send_many_async"]


def connect_async(settings: Settings, *, timeout: float | None = None) -> redis.asyncio.Redis:
    """An asyncio Redis client that fails fast (`EMAILQ_REDIS_TIMEOUT`) rather than retrying;
    on Sentinel, one that follows the current primary."""
    return async_redis_client(settings, **fail_fast(settings, timeout, Retry(NoBackoff(), 0)))


class AsyncProducer(ProducerBase):
    """Enqueues emails from one event loop on one asyncio connection pool. Close it with
    `await producer.aclose()` (or use it as an async context manager)."""

    def __init__(self, settings: Settings | None = None, client: redis.asyncio.Redis | None = None):
        self.settings = settings or get_settings()
        self._redis = client or connect_async(self.settings)

    @property
    def redis(self) -> redis.asyncio.Redis:
        return self._redis

    async def __aenter__(self) -> AsyncProducer:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers within the producer's timeout."""
        try:
            return bool(await self._redis.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    async def send(self, email: Email | Mapping[str, Any]) -> str:
        """Enqueue one email; returns its id. As `Producer.send`."""
        return (await self.send_many([email]))[0]

    async def send_many(self, emails: Iterable[Email | Mapping[str, Any]], *, bulk: bool = False) -> list[str]:
        """Enqueue several emails in one round trip, all or none. As `Producer.send_many`."""
        ids, messages = self._batch(emails, bulk)
        await self.push(messages, ids=ids)
        return ids

    async def send_once(self, email: Email | Mapping[str, Any], key: str) -> tuple[str, bool]:
        """Enqueue `email` unless `key` already enqueued one. As `Producer.send_once`."""
        envelope, digest, command = self._once(email, key)
        return _once_result(await self._write(command, ids=[envelope.id]), envelope, digest)

    async def push(self, messages: list[NewEmail], *, ids: list[str] | None = None) -> None:
        """Put ready-made task messages on their lanes, all or none. As `Producer.push`."""
        if messages:
            await self._write(self._push_command(messages), ids=ids)

    async def _write(self, command: tuple[Any, ...], *, ids: list[str] | None = None) -> Any:
        """`Producer._write` on an asyncio connection: one round trip, honest errors."""
        pool = self._redis.connection_pool
        try:
            connection = await pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise QueueUnavailable(f"Redis is unreachable, nothing was enqueued: {error}", ids=ids) from None
        sent = False
        try:
            # A connection its server closed (a restart, a kill) has EOF waiting; a write on
            # it would seem sent and then fail as "may have been enqueued". redis-py's pool
            # checks this itself only when maintenance notifications are off (8.x: "auto").
            if await _has_data(connection):
                await connection.disconnect()
                await connection.connect()
            await connection.check_health()
            # One timer for the write and the reply: redis-py's own send wraps each write in
            # `asyncio.wait_for`, a task per call (a fifth of an enqueue's time on the event
            # loop), and its timeout for one read answers None when it runs out, which is
            # also a script's nil.
            try:
                async with asyncio.timeout(self._reply_seconds(ids)):
                    await _send(connection, command)
                    sent = True
                    try:
                        # The read of a connection cancelled mid-reply drops it: nothing is left unread.
                        reply = await connection.read_response(timeout=math.inf)
                    except redis.exceptions.NoScriptError:
                        await _send(connection, with_source(command))
                        reply = await connection.read_response(timeout=math.inf)
            except TimeoutError:
                sent = True  # a write the timer cut short is still flushed as its connection closes
                raise redis.TimeoutError("Timeout talking to Redis") from None
            wanted, timeout = self.settings.redis_min_replicas, self.settings.redis_timeout
            if wanted > 0:
                await connection.send_command("WAIT", wanted, max(1, int(timeout * 1000)), check_health=False)
                confirm_replicas(int(await connection.read_response(timeout=2 * timeout)), self.settings, ids)
        except asyncio.CancelledError as cancelled:
            # The reply may still come: this connection must never serve another call.
            await connection.disconnect(nowait=True)
            if sent:
                what = f"email {ids[0]}" if ids and len(ids) == 1 else "the emails"
                cancelled.add_note(f"emailq: cancelled after the write was sent: {what} may have been enqueued")
            raise
        except (redis.RedisError, QueueUnavailable) as error:
            if not isinstance(error, QueueUnavailable):
                await connection.disconnect(nowait=True)  # later replies may be left unread
            raise failure(error, sent, ids) from None
        finally:
            await pool.release(connection)
        return reply

    async def aclose(self) -> None:
        await self._redis.aclose()


async def _send(connection: Any, command: tuple[Any, ...]) -> None:
    """Write `command` on `connection` (the caller bounds the time it may take), past
    redis-py's per-write timer where its write without one (5.3 to 8.1) is there."""
    packed = connection.pack_command(*command)
    write = getattr(connection, "_send_packed_command", None)
    if write is None:
        await connection.send_packed_command(packed, check_health=False)
        return
    try:
        await write(packed)
    except OSError as error:
        await connection.disconnect(nowait=True)
        raise redis.ConnectionError(f"Error while writing to Redis: {error}") from None


async def _has_data(connection: Any) -> bool:
    """Whether an idle connection has something to read (EOF included): redis-py 8 names
    the check `can_read`, 5.3 to 7 `can_read_destructive`."""
    check = getattr(connection, "can_read", None) or connection.can_read_destructive
    return bool(await check())


# One default producer per event loop: asyncio connections belong to the loop that made them.
_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncProducer] = weakref.WeakKeyDictionary()


def default_async_producer() -> AsyncProducer:
    loop = asyncio.get_running_loop()
    producer = _defaults.get(loop)
    if producer is None:
        producer = _defaults[loop] = AsyncProducer()
    return producer


async def send_email_async(to: str, type: str, payload: dict[str, Any], ip: str | None = None) -> str:
    """Enqueue one email with the settings from the environment; returns its id."""
    data: dict[str, Any] = {"to": to, "type": type, "payload": payload}
    if ip is not None:
        data["ip"] = ip
    return await default_async_producer().send(data)


async def send_many_async(emails: Iterable[Email | Mapping[str, Any]], *, bulk: bool = False) -> list[str]:
    """Enqueue several emails in one round trip, all or none; returns their ids."""
    return await default_async_producer().send_many(emails, bulk=bulk)
