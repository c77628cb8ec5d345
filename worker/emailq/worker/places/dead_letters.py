"""The dead-letter queue: emails that could not be delivered, kept whole for replay.

Redis layout (`emailq.store.keys`), next to the queue `<p><q>` (key prefix, queue name):

- `<p><q>:dlq`        hash, message id -> JSON entry (see `DeadLetter`)
- `<p><q>:dlq:index`  sorted set, message id scored by the time it failed
- `<p><q>:dlq:reason:<r>`, `<p><q>:dlq:type:<t>`, `<p><q>:dlq:counts`: the reason and
  type indexes of the dead letters page, kept by the same scripts (`dlq_index.lua`'s
  `index_entry` / `unindex_entry`); see `dead_letter_index`

Every move in or out is one Lua script of `emailq.store.moves`, so a crash in the
middle of a replay or purge leaves each email either in the DLQ or on the queue, never
both and never neither. The CLI, `emailq status`, metrics and tests all use this class.

Scale: every verb that touches many entries (`entries`, `replay_all`, `purge_all`) walks
the index newest first, `BATCH` ids per round trip, so its memory does not grow with the
DLQ; entries dead-lettered after a walk started are not visited by it.

Retention: entries hold addresses and codes (personal data), so the oldest entries
beyond `max_entries` and every entry that failed more than `max_age_seconds` ago are
dropped — inside the same script that adds an entry (at most `TRIM_PER_ADD` per add, so
a huge backlog is trimmed gradually and no add blocks Redis for long), and by `trim()`.
Each drop is logged (a count, never an address) and counted in `emailq_dlq_dropped`.
"""

from __future__ import annotations

import builtins
import itertools
import json
import logging
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis
from pydantic import ValidationError

from emailq.errors import NotFound
from emailq.store.keys import Keys
from emailq.store.moves import Moves
from emailq.store.trace import TraceLimits
from emailq.message import Envelope, masked
from emailq.task_message import task_message
from emailq.worker import metrics
from emailq.worker.places.raw_masking import masked_raw

log = logging.getLogger("emailq.worker")

REASONS = ("rejected", "exhausted", "expired", "malformed", "error")
# Characters of a malformed queue item kept (`DeadLetter.raw`): a whole item at the
# default EMAILQ_MAX_MESSAGE_BYTES, base64 and envelope included. One cut short cannot be
# replayed.
RAW_LIMIT = 262144

DEFAULT_MAX_ENTRIES = 10_000  # as many as Sidekiq keeps
DEFAULT_MAX_AGE_SECONDS = 7 * 24 * 3600  # as long as Dramatiq keeps: personal data, lean short
TRIM_PER_ADD = 100  # entries an add may drop at most
BATCH = 500  # ids per round trip (and per script call) when walking the DLQ


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
    # When it entered the DLQ, on Redis's clock (`DeadLetters.add` sets it).
    failed_at: float = field(default_factory=time.time)
    # Every attempt's outcome, oldest first: {"at": time, "status": int} or {"at", "error"}.
    history: list[dict[str, Any]] = field(default_factory=list)
    envelope: dict[str, Any] | None = None
    # The queue item as it was (a kombu message, or whatever else was there), when
    # `envelope` could not be read: `replay` puts it back as it is.
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
        """The entry as shown to operators; one-time codes and links masked unless `reveal`.
        A new dict, but its nested values are the entry's own: read it, do not change it."""
        data = dict(vars(self))
        data["to"], data["type"] = self.to, self.type
        if self.envelope and not reveal:
            data["envelope"] = {**self.envelope, "message": masked(self.envelope["message"])}
        if self.raw is not None and not reveal:
            data["raw"] = masked_raw(self.raw)
        return data


@dataclass(frozen=True)
class Dropped:
    """What one retention pass dropped."""

    by_count: int = 0
    by_age: int = 0

    @property
    def total(self) -> int:
        return self.by_count + self.by_age

    def __add__(self, other: Dropped) -> Dropped:
        return Dropped(self.by_count + other.by_count, self.by_age + other.by_age)


class DeadLetters:
    """The DLQ of the queue whose keys are `keys`, with its retention policy.

    - `max_entries`: the oldest entries beyond this many are dropped (0: no cap);
    - `max_age_seconds`: entries that failed longer ago than this are dropped (0: kept
      whatever their age).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        trace: TraceLimits | None = None,
    ):
        self._redis = client
        self.keys = keys
        self.max_entries = max_entries
        self.max_age_seconds = max_age_seconds
        self.key = keys.dlq
        self.index_key = keys.dlq_index
        self._moves = Moves(client, keys, trace)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    # --- in -------------------------------------------------------------------------

    def add(self, entry: DeadLetter, taken_from: tuple[str, bytes] | None = None) -> bool:
        """Store `entry`, its `failed_at` set to now on Redis's clock; with `taken_from`
        (in-flight list, item), move the item out of that list in the same step. False
        when the list no longer holds the item. The same step applies the retention policy
        to at most `TRIM_PER_ADD` older entries."""
        seconds, micros = self._redis.time()
        entry.failed_at = seconds + micros / 1_000_000
        row = json.dumps(asdict(entry))
        why = entry.reason if entry.status is None else f"{entry.reason} HTTP {entry.status}"
        added, by_count, by_age = self._moves.dead_letter(entry.id, row, entry.failed_at, taken_from, self._retention(TRIM_PER_ADD), why)
        self._dropped(Dropped(by_count, by_age))
        return bool(added)

    def trim(self) -> Dropped:
        """Apply the retention policy to the whole DLQ, `BATCH` entries per script call
        (each call is short, so Redis keeps serving others in between)."""
        total = Dropped()
        while True:
            dropped = Dropped(*self._moves.dlq_trim(self._retention(BATCH)))
            total += dropped
            if dropped.total < BATCH:
                break
        self._dropped(total)
        return total

    def _retention(self, budget: int) -> list[Any]:
        # The age is measured in the scripts, on Redis's clock, as every other time in
        # Redis is (`failed_at`, the retry schedule, the rate limit): not on this host's.
        return [self.max_entries, repr(float(max(self.max_age_seconds, 0))), budget]

    def _dropped(self, dropped: Dropped) -> None:
        if not dropped.total:
            return
        metrics.DLQ_DROPPED.labels("count").inc(dropped.by_count)
        metrics.DLQ_DROPPED.labels("age").inc(dropped.by_age)
        log.info(
            "DLQ retention dropped %d entr%s of %s: %d over the %d-entry cap, %d older than %gs",
            dropped.total,
            "y" if dropped.total == 1 else "ies",
            self.key,
            dropped.by_count,
            self.max_entries,
            dropped.by_age,
            self.max_age_seconds,
        )

    # --- looking --------------------------------------------------------------------

    def count(self) -> int:
        return self._redis.zcard(self.index_key)

    def ids(self, limit: int | None = None) -> list[str]:
        """Ids, newest failure first."""
        end = -1 if limit is None else limit - 1
        return [i.decode() for i in cast(list[bytes], self._redis.zrevrange(self.index_key, 0, end))]

    def entries(
        self,
        after: str | None = None,
        reasons: Collection[str] = (),
        types: Collection[str] = (),
    ) -> Iterator[DeadLetter]:
        """Entries newest failure first, read `BATCH` at a time as the caller iterates:
        those listed after the entry `after` (older ones) when given, and of one of
        `reasons` and `types` when given. NotFound when `after` is not in the DLQ."""
        for ids in self._pages(after):
            for row in self._redis.hmget(self.key, ids):
                if row is None:
                    continue  # purged or replayed since the page was read
                entry = _load(row)
                if (not reasons or entry.reason in reasons) and (not types or entry.type in types):
                    yield entry

    def list(self, limit: int | None = None, **filters: Any) -> list[DeadLetter]:
        """The newest `limit` entries (all when None) as a list; `filters` as `entries`."""
        return list(itertools.islice(self.entries(**filters), limit))

    def get(self, message_id: str) -> DeadLetter:
        row = self._redis.hget(self.key, message_id)
        if row is None:
            raise NotFound(f"no dead-lettered email with id {message_id}")
        return _load(row)

    def _pages(self, after: str | None = None) -> Iterator[builtins.list[str]]:
        """Ids newest failure first, up to `BATCH` a page, each page read when asked for.

        A keyset walk, not offsets: the next page starts at the last score seen, minus the
        ids already seen with that very score. So removing what was seen (a replay or a
        purge going through the pages) moves nothing, and entries that fail after the walk
        began (scored higher) never join it."""
        top: float = float("inf")
        seen: set[bytes] = set()  # ids already passed whose score is `top`
        if after is not None:
            score = self._redis.zscore(self.index_key, after)
            if score is None:
                raise NotFound(f"no dead-lettered email with id {after}")
            top = score
            # Ties are listed by id, descending: those from `after` up are passed.
            tied = cast(list[bytes], self._redis.zrevrangebyscore(self.index_key, score, score))
            seen = {m for m in tied if m >= after.encode()}
        yield from keyset_pages(self._redis, self.index_key, top, seen, "-inf", BATCH)

    # --- out ------------------------------------------------------------------------

    def replay(self, message_ids: Iterable[str], ttl_seconds: float, bulk_ttl_seconds: float | None = None) -> tuple[int, builtins.list[str]]:
        """Put entries back on their lane with a fresh attempt budget and TTL (the bulk
        lane's own for bulk emails), keeping their id (the endpoint's idempotency key):
        `BATCH` per round trip, each email moved by one script call of its own. An entry
        whose message could not be read (`malformed`: its `raw` is the queue item) goes
        back as it was, to the lane its routing key names, for a worker that can read it
        (an upgraded one, or after a fix). Returns (how many were replayed, ids that
        cannot be replayed: the raw text is no whole message, or the envelope does not
        validate). Ids no longer in the DLQ are passed over."""
        replayed, skipped = 0, []
        for chunk in _chunks(message_ids):
            with self._redis.pipeline(transaction=False) as pipe:
                for message_id, row in zip(chunk, self._redis.hmget(self.key, chunk)):
                    if row is None:
                        continue
                    entry = _load(row)
                    message = self._as_it_was(entry) if entry.envelope is None else self._fresh(entry, ttl_seconds, bulk_ttl_seconds)
                    if message is None:
                        skipped.append(message_id)
                        continue
                    self._moves.replay(message_id, message, client=pipe)
                replayed += sum(pipe.execute())
        return replayed, skipped

    def _fresh(self, entry: DeadLetter, ttl_seconds: float, bulk_ttl_seconds: float | None) -> str | None:
        try:
            # Checked as the worker checks what it takes (the producer ran the full
            # address check before it was ever queued).
            envelope = Envelope.model_validate(entry.envelope, context={"from_queue": True})
        except ValidationError:
            return None
        bulk = bool(envelope.bulk)
        ttl = bulk_ttl_seconds if bulk and bulk_ttl_seconds else ttl_seconds
        fresh = Envelope.wrap(envelope.message, ttl, id=envelope.id, bulk=bulk)
        return task_message(fresh, self.keys.bulk if bulk else self.keys.interactive)

    def _as_it_was(self, entry: DeadLetter) -> str | None:
        """The item of a malformed entry whose raw text is a whole kombu message (not one
        cut short, nor text no worker could ever read as a message); its routing key
        names the lane it goes back to."""
        if entry.raw is None or len(entry.raw) >= RAW_LIMIT:
            return None
        try:
            message = json.loads(entry.raw)
        except ValueError:
            return None
        if not isinstance(message, dict) or not isinstance(message.get("body"), str) or not isinstance(message.get("properties"), dict):
            return None
        return entry.raw

    def replay_all(self, ttl_seconds: float, bulk_ttl_seconds: float | None = None) -> tuple[int, builtins.list[str]]:
        """`replay` every entry there was when it began."""
        return self.replay(itertools.chain.from_iterable(self._pages()), ttl_seconds, bulk_ttl_seconds)

    def purge(self, message_ids: Iterable[str]) -> int:
        """Delete entries for good, `BATCH` per script call; returns how many were there."""
        removed = 0
        for chunk in _chunks(message_ids):
            removed += self._moves.purge(chunk)
        return removed

    def purge_all(self) -> int:
        """`purge` every entry there was when it began."""
        return self.purge(itertools.chain.from_iterable(self._pages()))


_FIELDS = frozenset(DeadLetter.__dataclass_fields__)


def _load(row: bytes | str) -> DeadLetter:
    # Fields this release does not know (written by a newer one) are left out, not fatal.
    return DeadLetter(**{k: v for k, v in json.loads(row).items() if k in _FIELDS})


def keyset_pages(client: redis.Redis, key: str, top: float, seen: set[bytes], bottom: str, batch: int) -> Iterator[list[str]]:
    """Members of the sorted set `key` scored from `top` down to `bottom`, highest first,
    `batch` a round trip, leaving out `seen` (members already passed with score `top`)."""
    while True:
        wanted = batch + len(seen)
        rows = cast(list[tuple[bytes, float]], client.zrevrangebyscore(key, _bound(top), bottom, start=0, num=wanted, withscores=True))
        fresh = [(m, s) for m, s in rows if not (s == top and m in seen)]
        if fresh:
            yield [m.decode() for m, _ in fresh]
            last = fresh[-1][1]
            if last != top:
                top, seen = last, set()
            seen.update(m for m, s in fresh if s == last)
        if len(rows) < wanted:
            return


def _bound(score: float) -> str:
    return "+inf" if score == float("inf") else repr(score)


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    it = iter(ids)
    while chunk := list(itertools.islice(it, BATCH)):
        yield chunk
