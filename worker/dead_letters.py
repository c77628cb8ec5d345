"""The dead-letter queue: emails that could not be delivered, kept whole for replay.

Redis layout (`emailq.keys`), next to the queue `<queue>`:

- `<queue>:dlq`        hash, message id -> JSON entry (see `DeadLetter`)
- `<queue>:dlq:index`  sorted set, message id scored by the time it failed

Every move in or out is one atomic step (MULTI/EXEC or a Lua script), so a crash in the
middle of a replay or purge leaves each email either in the DLQ or on the queue, never
both and never neither. The CLI, `emailq status`, metrics and tests all use this class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from pydantic import ValidationError

from emailq.errors import NotFound
from emailq.keys import Keys
from emailq.message import Envelope, masked
from emailq.task_message import task_message

REASONS = ("rejected", "exhausted", "expired", "malformed", "error")
RAW_LIMIT = 65536

# KEYS: dlq, index, in-flight list (or a dummy). ARGV: id, entry, failed_at, taken item
# ('' when the entry comes from nowhere). Types are checked first so that a key of the
# wrong type fails the whole move rather than half of it.
_ADD = """
if ARGV[4] ~= '' and not redis.call('LPOS', KEYS[3], ARGV[4]) then return 0 end
local t1, t2 = redis.call('TYPE', KEYS[1]).ok, redis.call('TYPE', KEYS[2]).ok
if (t1 ~= 'none' and t1 ~= 'hash') or (t2 ~= 'none' and t2 ~= 'zset') then
  return redis.error_reply('WRONGTYPE the dead-letter keys hold another type')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('LREM', KEYS[3], 1, ARGV[4]) end
return 1
"""

_REPLAY = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LPUSH', KEYS[3], ARGV[2])
return 1
"""


@dataclass
class DeadLetter:
    """One dead-lettered email; `envelope` is the whole original message, or None when the
    message could not be decoded (then `raw` holds what arrived)."""

    id: str
    reason: str
    detail: str = ""
    status: int | None = None
    response_excerpt: str = ""
    attempts: int = 0
    first_attempt_at: float | None = None
    last_attempt_at: float | None = None
    failed_at: float = field(default_factory=time.time)
    # Every attempt's outcome, oldest first: {"at": time, "status": int} or {"at", "error"}.
    history: list[dict[str, Any]] = field(default_factory=list)
    envelope: dict[str, Any] | None = None
    raw: str | None = None

    @property
    def to(self) -> str | None:
        return (self.envelope or {}).get("message", {}).get("to")

    @property
    def type(self) -> str | None:
        return (self.envelope or {}).get("message", {}).get("type")

    def summary(self) -> str:
        """One line for logs and Flower: reason, status, excerpt; never a secret."""
        parts = [self.reason]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.detail and self.detail != f"HTTP {self.status}":
            parts.append(self.detail)
        if self.response_excerpt:
            parts.append(repr(self.response_excerpt[:120]))
        return ": ".join(parts[:1]) + (" — " + ", ".join(parts[1:]) if len(parts) > 1 else "")

    def public(self, reveal: bool = False) -> dict[str, Any]:
        """The entry as shown to operators; one-time codes and links masked unless `reveal`."""
        data = asdict(self)
        data["to"], data["type"] = self.to, self.type
        if self.envelope and not reveal:
            data["envelope"] = {**self.envelope, "message": masked(self.envelope["message"])}
        return data


class DeadLetters:
    def __init__(self, client: redis.Redis, queue: str):
        self._redis = client
        self.queue = queue
        keys = Keys(queue)
        self.key = keys.dlq
        self.index_key = keys.dlq_index
        self._replay = client.register_script(_REPLAY)
        self._add = client.register_script(_ADD)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def add(self, entry: DeadLetter, taken_from: tuple[str, bytes] | None = None) -> bool:
        """Store `entry`; with `taken_from` (in-flight list, item), move the item out of
        that list in the same step. False when the list no longer holds the item."""
        inflight, item = taken_from or (self.key, b"")
        added = self._add(
            keys=[self.key, self.index_key, inflight],
            args=[entry.id, json.dumps(asdict(entry)), entry.failed_at, item],
        )
        return bool(added)

    def count(self) -> int:
        return self._redis.zcard(self.index_key)

    def ids(self, limit: int | None = None) -> list[str]:
        """Ids, newest failure first."""
        end = -1 if limit is None else limit - 1
        return [i.decode() for i in self._redis.zrevrange(self.index_key, 0, end)]

    def list(self, limit: int | None = None) -> list[DeadLetter]:
        ids = self.ids(limit)
        if not ids:
            return []
        rows = self._redis.hmget(self.key, ids)
        return [_load(row) for row in rows if row is not None]

    def get(self, message_id: str) -> DeadLetter:
        row = self._redis.hget(self.key, message_id)
        if row is None:
            raise NotFound(f"no dead-lettered email with id {message_id}")
        return _load(row)

    def replay(self, message_ids: Iterable[str], ttl_seconds: float) -> tuple[list[str], list[str]]:
        """Put entries back on the queue with a fresh attempt budget and TTL, keeping their
        id (the endpoint's idempotency key). Returns (replayed ids, ids that cannot be
        replayed because the original message was undecodable)."""
        replayed, skipped = [], []
        for message_id in message_ids:
            entry = self.get(message_id)
            try:
                envelope = Envelope.model_validate(entry.envelope)
            except ValidationError:
                skipped.append(message_id)
                continue
            fresh = Envelope.wrap(envelope.message, ttl_seconds, id=envelope.id)
            moved = self._replay(
                keys=[self.key, self.index_key, self.queue],
                args=[message_id, task_message(fresh, self.queue)],
            )
            if moved:
                replayed.append(message_id)
        return replayed, skipped

    def purge(self, message_ids: Iterable[str]) -> int:
        ids = list(message_ids)
        if not ids:
            return 0
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.key, *ids)
            pipe.zrem(self.index_key, *ids)
            removed, _ = pipe.execute()
        return removed

    def purge_all(self) -> int:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.zcard(self.index_key)
            pipe.delete(self.key, self.index_key)
            count, _ = pipe.execute()
        return count


def _load(row: bytes) -> DeadLetter:
    return DeadLetter(**json.loads(row))
