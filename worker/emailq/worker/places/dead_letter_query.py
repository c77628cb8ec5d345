"""Filtered reads of the dead-letter queue for the dead letters page: pages, counts and
the ids a bulk action will touch.

A filter narrows by index first: the reason or type index (`dead_letter_index`; the
smaller of the two when both are set) or the main index, between the time window's
scores. Only what no index answers (an HTTP status, a recipient, the second of reason
and type) is checked on the entries themselves, read `BATCH` at a time. Until the
indexes are built, reason and type are checked that way too.

Pages are keyset pages: a cursor is the last shown entry's (score, id), so an entry
replayed or purged meanwhile moves nothing, and new failures (newer, scored higher)
never push entries onto the next page twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import redis

from emailq.store.keys import Keys
from emailq.worker.places.dead_letter_index import DeadLetterIndex
from emailq.worker.places.dead_letters import DeadLetter, keyset_pages

BATCH = 500


@dataclass(frozen=True)
class Filter:
    """What the operator asked for; None: any (`type` "": entries without a decodable
    message). `recipient` matches a part of the
    address, case-insensitively; `since`/`until` are failed_at bounds (inclusive)."""

    reason: str | None = None
    type: str | None = None
    status: int | None = None
    recipient: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, entry: DeadLetter) -> bool:
        return (
            (self.reason is None or entry.reason == self.reason)
            and (self.type is None or (entry.type or "") == self.type)
            and (self.status is None or entry.status == self.status)
            and (not self.recipient or self.recipient.lower() in (entry.to or "").lower())
            and (self.since is None or entry.failed_at >= self.since)
            and (self.until is None or entry.failed_at <= self.until)
        )


Cursor = tuple[float, str]  # the last entry seen: (failed_at score, id)


class DeadLetterQuery:
    def __init__(self, client: redis.Redis, keys: Keys):
        self._redis = client
        self.keys = keys
        self.index = DeadLetterIndex(client, keys)

    def page(self, flt: Filter, after: Cursor | None = None, limit: int = 50) -> tuple[list[DeadLetter], Cursor | None]:
        """Up to `limit` matching entries newest first, after `after`; and the cursor of
        the next page (None: this is the last)."""
        shown: list[DeadLetter] = []
        for ids in self._walk(flt, after, batch=limit + 1 if not self._scans(flt) else BATCH):
            for entry in self._entries(ids):
                if flt.matches(entry):
                    if len(shown) == limit:
                        last = shown[-1]
                        return shown, (last.failed_at, last.id)
                    shown.append(entry)
        return shown, None

    def count(self, flt: Filter) -> int:
        """How many entries match now (a scan of the narrowed set when it must)."""
        key = self._narrowest(flt)
        if not self._scans(flt):
            return self._redis.zcount(key, _score(flt.since, "-inf"), _score(flt.until, "+inf"))
        return sum(1 for ids in self._walk(flt) for entry in self._entries(ids) if flt.matches(entry))

    def id_chunks(self, flt: Filter) -> Iterator[list[str]]:
        """The ids that match, newest first, at most `BATCH` a chunk, read as iterated."""
        for ids in self._walk(flt):
            if self._scans(flt):
                ids = [e.id for e in self._entries(ids) if flt.matches(e)]
            if ids:
                yield ids

    def _scans(self, flt: Filter) -> bool:
        """Whether entries must be read to know if they match."""
        both = flt.reason is not None and flt.type is not None
        by_facet = flt.reason is not None or flt.type is not None
        return flt.status is not None or bool(flt.recipient) or both or (by_facet and not self.index.ready())

    def _narrowest(self, flt: Filter) -> str:
        if not self.index.ready():
            return self.keys.dlq_index
        candidates = []
        if flt.reason is not None:
            candidates.append(self.keys.dlq_by_reason(flt.reason))
        if flt.type is not None:
            candidates.append(self.keys.dlq_by_type(flt.type or None))
        if not candidates:
            return self.keys.dlq_index
        return min(candidates, key=lambda k: self._redis.zcard(k))

    def _entries(self, ids: list[str]) -> Iterator[DeadLetter]:
        for row in self._redis.hmget(self.keys.dlq, ids):
            if row is not None:  # replayed or purged since the ids were read
                yield DeadLetter(**json.loads(row))

    def _walk(self, flt: Filter, after: Cursor | None = None, batch: int = BATCH) -> Iterator[list[str]]:
        """Ids of the narrowest index within the time window, newest first, `batch` a
        round trip, strictly after `after` in (score, id) descending order."""
        key = self._narrowest(flt)
        top = float("inf") if flt.until is None else flt.until
        seen: set[bytes] = set()  # ids already passed whose score is `top`
        if after is not None and after[0] <= top:
            top = after[0]
            # Ties at the cursor's score are listed by id, descending: those from it up are passed.
            tied = cast(list[bytes], self._redis.zrevrangebyscore(key, repr(top), repr(top)))
            seen = {m for m in tied if m >= after[1].encode()}
        yield from keyset_pages(self._redis, key, top, seen, _score(flt.since, "-inf"), batch)


def _score(value: float | None, unbounded: str) -> str:
    return unbounded if value is None else repr(value)
