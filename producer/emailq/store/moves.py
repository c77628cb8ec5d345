"""Every move of an email between its places, and the only code that writes them.

An email is in exactly one place at every instant, or delivered; each arrow is one Lua
script (`lua/<name>.lua`, whose header gives its KEYS and ARGV) or one MULTI, so a
`kill -9` of anything leaves no email in two places or in none (`<q>`: the queue's keys,
`emailq.store.keys`):

```
 send_email / send_many / emailq send / the ingest
        │ enqueue (a script; several emails: one MULTI), enqueue_once
        ▼
 lanes: <q> (interactive), <q>:bulk ◄────────────────────────────────────┐
        │ take (lane, rate-limit slot, onto the in-flight list)           │
        ▼                                                                 │
 <q>:inflight:<owner> ─── give_back, reclaim: head of the email's lane ───┤
        │   │   │                                                         │
        │   │   └── schedule ──► <q>:schedule ── move_due: back of lane ──┤
        │   └────── dead_letter ──► <q>:dlq ──── replay: back of lane ────┘
        │                              └── purge, dlq_trim ──► gone
        └── ack ──► delivered
```

Every move that puts an email back on a lane (give_back, reclaim, move_due, replay, and
the takeover of an older release's lists) goes through one Lua function, `to_lane`: the
lane the task message's routing key names, and one wake-up token. A move out of an
in-flight list first checks that the list still holds the item (another worker may have
reclaimed it) and writes its destination before removing it, so a Redis that refuses
the write (full, wrong type) moves nothing.

The producers (synchronous and asyncio) send the same commands, built here, through
their own round trip (`enqueue_commands`, `enqueue_once_command`); the worker runs
`Moves` on its client. The take runs on the consumer's own connection, so the transport
sends `script("take")` itself, built by `emailq.worker.places.taking`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from emailq.store.keys import Keys
from emailq.store.scripts import WAKE_TOKENS_KEPT, script

# A batch wakes at most this many workers: one token wakes one, which then takes until
# the lanes are empty, so a batch needs only a few.
WAKE_TOKENS_PER_BATCH = 64
# LPUSH takes so many arguments at once: a batch's LPUSHes are chunks, inside one MULTI.
_CHUNK = 1000


def enqueue_commands(keys: Keys, messages: Sequence[tuple[str, str]]) -> list[tuple[Any, ...]]:
    """The commands that put new task messages (`(lane, message)` pairs) on their lanes,
    all or none: one script for one message, one MULTI for several."""
    if len(messages) == 1:
        [(lane, message)] = messages
        return [script("enqueue").command([lane, keys.wake], [message])]
    lanes: dict[str, list[str]] = {}
    for lane, message in messages:
        lanes.setdefault(lane, []).append(message)
    chunks = [("LPUSH", lane, *batch[i : i + _CHUNK]) for lane, batch in lanes.items() for i in range(0, len(batch), _CHUNK)]
    tokens = min(len(messages), WAKE_TOKENS_PER_BATCH)
    return [("MULTI",), *chunks, ("LPUSH", keys.wake, *[1] * tokens), ("LTRIM", keys.wake, 0, WAKE_TOKENS_KEPT - 1), ("EXEC",)]


def enqueue_once_command(keys: Keys, key_hash: str, record: str, lifetime_ms: int, lane: str, message: str) -> tuple[Any, ...]:
    """The script that enqueues `message` unless the idempotency key whose hash is
    `key_hash` already enqueued one; it answers that key's record, or nil."""
    return script("enqueue_once").command([keys.idempotency(key_hash), lane, keys.wake], [record, lifetime_ms, message])


class Moves:
    """The worker's moves for the queue whose keys are `keys`, on `client`."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys
        self._lanes = [keys.interactive, keys.bulk, keys.wake]
        self._scripts: dict[str, Any] = {}

    def _run(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        registered = self._scripts.get(name)
        if registered is None:
            registered = self._scripts[name] = self.redis.register_script(script(name).source)
        return registered(keys=keys, args=args, client=client)

    # --- out of an in-flight list ------------------------------------------------------

    def ack(self, inflight: str, items: Sequence[bytes]) -> int:
        """Delivered: out of the in-flight list."""
        return int(self._run("ack", [inflight], list(items)))

    def give_back(self, inflight: str, item: bytes) -> bool:
        """To the head of its own lane; False when the list no longer holds it."""
        return bool(self._run("give_back", [inflight, *self._lanes], [item]))

    def reclaim(self, owner: str) -> int:
        """A dead owner's list to the head of each email's lane; -1 if it is alive."""
        keys = self.keys
        return int(self._run("reclaim", [keys.owners, keys.alive(owner), keys.inflight(owner), *self._lanes], [owner]))

    def schedule(self, inflight: str, item: bytes, retry: str | bytes, delay_ms: int) -> bool:
        """Into the retry schedule as `retry`, due after `delay_ms` on Redis's clock; False
        when the list no longer holds `item`."""
        return bool(self._run("schedule", [inflight, self.keys.schedule], [item, retry, max(0, delay_ms)]))

    def dead_letter(
        self, message_id: str, row: str, failed_at: float, taken_from: tuple[str, bytes] | None, retention: list[Any]
    ) -> tuple[int, int, int]:
        """Into the DLQ as `row` (and out of `taken_from`, an in-flight list and item, when
        given), then `retention` (max entries, max age, budget) on older entries. Returns
        (added: 0 when the list no longer held the item, dropped by count, by age)."""
        inflight, item = taken_from or (self.keys.dlq, b"")
        added, by_count, by_age = self._run(
            "dead_letter", [self.keys.dlq, self.keys.dlq_index, inflight], [message_id, row, failed_at, item, *retention]
        )
        return int(added), int(by_count), int(by_age)

    # --- out of the schedule and the DLQ ----------------------------------------------

    def move_due(self, most: int) -> int:
        """Up to `most` due retries to the back of their lane; how many moved."""
        return int(self._run("move_due", [self.keys.schedule, *self._lanes], [most]))

    def replay(self, message_id: str, message: str, client: Any = None) -> Any:
        """A dead letter to the back of its lane as `message` (1, or 0 when it is gone);
        `client`: a pipeline to queue it on."""
        return self._run("replay", [self.keys.dlq, self.keys.dlq_index, *self._lanes], [message_id, message], client=client)

    def purge(self, message_ids: Sequence[str]) -> int:
        """Dead letters deleted for good; how many were there."""
        return int(self._run("purge", [self.keys.dlq, self.keys.dlq_index], list(message_ids)))

    def dlq_trim(self, retention: list[Any]) -> tuple[int, int]:
        """Retention (max entries, max age, budget); (dropped by count, by age)."""
        by_count, by_age = self._run("dlq_trim", [self.keys.dlq, self.keys.dlq_index], retention)
        return int(by_count), int(by_age)

    def dlq_index_build(self, message_ids: Sequence[bytes | str]) -> int:
        """Index entries from before the reason and type indexes (idempotent)."""
        return int(self._run("dlq_index_build", [self.keys.dlq, self.keys.dlq_index], list(message_ids)))

    # --- an older release's lists -----------------------------------------------------

    def legacy_inbox_back(self, inbox: str, inboxes: str, alive: str, member: bytes | str) -> int:
        """An older release's dead inbox to the head of its emails' lanes; -1 if alive."""
        return int(self._run("legacy_inbox_back", [inbox, self.keys.interactive, inboxes, alive, self.keys.bulk, self.keys.wake], [member]))

    def legacy_unacked_back(self, unacked: str, unacked_index: str, tag: bytes, message: str) -> int:
        """One message of an older release's unacked hash to the head of its lane."""
        return int(self._run("legacy_unacked_back", [unacked, unacked_index, *self._lanes], [tag, message]))
