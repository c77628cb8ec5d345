"""Secondary indexes of the dead-letter queue: one sorted set per reason and per template
type, and a hash of their sizes, so the dead letters page filters 100,000 entries by
reason or type without reading them.

Redis layout (`emailq.store.keys`), beside `<p><q>:dlq` and `<p><q>:dlq:index`:

- `<p><q>:dlq:reason:<r>`  zset  ids of reason <r>, scored by failed_at like :dlq:index
- `<p><q>:dlq:type:<t>`    zset  ids of template type <t>; `:dlq:no-type` for entries
                                  whose message could not be decoded
- `<p><q>:dlq:counts`      hash  "reason:<r>" / "type:<t>" / "no-type" -> that zset's size
- `<p><q>:dlq:indexed`     string  set once every entry is indexed
- `<p><q>:dlq:indexing`    string  the lease of the one process building them

They are kept by `emailq/store/lua/dlq_index.lua`, two Lua functions that every move in
or out of the DLQ (`emailq.store.moves`) calls in the same step: `index_entry` after an entry is written,
`unindex_entry` before one is deleted. Both derive every key from KEYS[1] (the `:dlq`
hash), so adding them changed no script's KEYS or ARGV. A count moves only when its
ZADD or ZREM did, so the counts are always the zsets' sizes, whatever ran twice.

A DLQ written before the indexes existed (or by an older worker) is indexed once by
`build()`: under a lease, it walks the main index `BATCH` ids a script call, each call
idempotent; entries added or removed meanwhile are indexed by their own scripts. Until
`:dlq:indexed` is set, readers (`dead_letter_query`) scan instead of using the indexes.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import cast

import redis

from emailq.store.keys import Keys
from emailq.store.moves import Moves
from emailq.store.scripts import script

log = logging.getLogger("emailq.worker")

BATCH = 500
LEASE_SECONDS = 60  # a builder that died lets another take over after this long


class Lease:
    """A Redis key held by one process at a time, with a token so that only its holder
    extends or releases it, and an expiry so that a holder that died lets go."""

    def __init__(self, client: redis.Redis, key: str, seconds: float = LEASE_SECONDS):
        self._redis = client
        self.key = key
        self.ms = int(seconds * 1000)
        self.token = secrets.token_hex(8)
        self._extend = client.register_script(script("lease_extend").source)
        self._release = client.register_script(script("lease_release").source)

    def acquire(self, about: str = "") -> bool:
        """True when taken; `about` (who holds it, doing what) is shown to those refused."""
        return bool(self._redis.set(self.key, f"{self.token} {about}", nx=True, px=self.ms))

    def extend(self) -> bool:
        """False when the lease expired and another process took it."""
        return bool(self._extend(keys=[self.key], args=[self.token, self.ms]))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])

    def holder(self) -> str | None:
        """What the current holder said of itself (None: nobody holds the lease)."""
        value = self._redis.get(self.key)
        return None if value is None else cast(bytes, value).decode().partition(" ")[2]


class DeadLetterIndex:
    """The reason and type indexes of the DLQ whose keys are `keys`."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self._redis = client
        self.keys = keys
        self._moves = Moves(client, keys)

    def ready(self) -> bool:
        return bool(self._redis.exists(self.keys.dlq_indexed))

    def counts(self) -> tuple[dict[str, int], dict[str | None, int]]:
        """(entries per reason, entries per type; None: no decodable message)."""
        return self.counts_and_total()[:2]

    def counts_and_total(self) -> tuple[dict[str, int], dict[str | None, int], int]:
        """`counts()` and the DLQ's size, read in one step: the reason counts add up to
        the size unless an emailq older than the indexes moved entries since they were
        built (then `rebuild`)."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.dlq_counts)
            pipe.zcard(self.keys.dlq_index)
            raw, total = pipe.execute()
        reasons: dict[str, int] = {}
        types: dict[str | None, int] = {}
        for field, value in cast(dict[bytes, bytes], raw).items():
            name, n = field.decode(), int(value)
            if name.startswith("reason:"):
                reasons[name.removeprefix("reason:")] = n
            elif name.startswith("type:"):
                types[name.removeprefix("type:")] = n
            elif name == "no-type":
                types[None] = n
        return reasons, types, int(total)

    def rebuild(self) -> bool:
        """Drop the indexes and `build` them again (readers scan meanwhile)."""
        lease = Lease(self._redis, self.keys.dlq_indexing)
        if not lease.acquire():
            return False
        try:
            self._redis.delete(self.keys.dlq_indexed)
            reasons, types = self.counts()
            stale = [self.keys.dlq_by_reason(r) for r in reasons] + [self.keys.dlq_by_type(t) for t in types]
            # One DEL: an entry a script indexed meanwhile leaves zset and count together.
            self._redis.delete(self.keys.dlq_counts, *stale)
        finally:
            lease.release()
        return self.build()

    def build(self) -> bool:
        """Index every entry, once, under the lease; False when another process holds it
        or the indexes are ready already. Safe beside workers adding and replaying."""
        if self.ready():
            return False
        lease = Lease(self._redis, self.keys.dlq_indexing)
        if not lease.acquire():
            return False
        try:
            # ZSCAN returns every member present for the whole walk at least once,
            # however many are added or removed meanwhile; indexing one twice is a no-op.
            started, done, cursor = time.monotonic(), 0, 0
            while True:
                cursor, rows = self._redis.zscan(self.keys.dlq_index, cursor, count=BATCH)
                if rows:
                    done += self._moves.dlq_index_build([cast(bytes, m) for m, _ in rows])
                if not lease.extend():
                    log.warning("DLQ indexing lost its lease; another process goes on")
                    return False
                if cursor == 0:
                    break
            self._redis.set(self.keys.dlq_indexed, "1")
            log.info("DLQ indexes built: %d entries in %.1fs", done, time.monotonic() - started)
            return True
        finally:
            lease.release()
