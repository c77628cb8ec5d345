"""Every move of an email between its places, and the only code that writes them.

An email is in exactly one place at every instant, or delivered; each arrow is one Lua
script (`lua/<name>.lua`, whose header gives its KEYS and ARGV), so a
`kill -9` of anything leaves no email in two places or in none (`<q>`: the queue's keys,
`emailq.store.keys`):

```
 send_email / send_many / emailq send / the ingest
        │ enqueue, enqueue_many, enqueue_once
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

Each script also appends the move to the email's trace (`emailq.store.trace`), in the
same step: the trace never disagrees with the places, and costs no round trip.

Every move that puts an email back on a lane (give_back, reclaim, move_due, replay, and
the takeover of an older release's lists) goes through one Lua function, `to_lane`: the
lane the task message's routing key names, and one wake-up token. A move out of an
in-flight list first checks that the list still holds the item (another worker may have
reclaimed it) and writes its destination before removing it, so a Redis that refuses
the write (full, wrong type) moves nothing.

Besides the places, it writes the registry that reclaims rely on (`register`, `leave`;
the heartbeat renews it, `beat.lua`); leases, the rate limit's state and the dead letters
page's progress are written by the modules they belong to (`emailq.store.keys` lists
every key).

The producers (synchronous and asyncio) send the same commands, built here, through
their own round trip (`enqueue_command`, `enqueue_once_command`); the worker runs
`Moves` on its client. The take runs on the consumer's own connection, so the transport
sends `script("take")` itself, built by `emailq.worker.places.taking`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import redis

from emailq.store.keys import Keys
from emailq.store.scripts import script
from emailq.store.trace import TraceLimits

# A batch wakes at most this many workers: one token wakes one, which then takes until
# the lanes are empty, so a batch needs only a few.
WAKE_TOKENS_PER_BATCH = 64


class NewEmail(NamedTuple):
    """A task message ready for its lane, with what its trace needs. (A tuple: the ingest
    makes one per request, and a frozen dataclass's init costs a µs.)"""

    lane: str
    message: str
    id: str
    address_hash: str


def enqueue_command(keys: Keys, trace: TraceLimits, emails: Sequence[NewEmail]) -> tuple[Any, ...]:
    """The command that puts new emails on their lanes, all or none: one script."""
    if len(emails) == 1:
        [e] = emails
        return script("enqueue").command([e.lane, keys.wake, keys.trace], [e.message, trace.ms, trace.most, e.id, e.address_hash])
    interactive = [e for e in emails if e.lane != keys.bulk]
    bulk = [e for e in emails if e.lane == keys.bulk]
    args: list[Any] = [trace.ms, trace.most, min(len(emails), WAKE_TOKENS_PER_BATCH), len(interactive)]
    for e in interactive + bulk:
        args += (e.message, f"{e.id} {e.address_hash}")
    return script("enqueue_many").command([keys.interactive, keys.bulk, keys.wake, keys.trace], args)


def enqueue_once_command(keys: Keys, trace: TraceLimits, key_hash: str, record: str, lifetime_ms: int, email: NewEmail) -> tuple[Any, ...]:
    """The script that enqueues `email` unless the idempotency key whose hash is
    `key_hash` already enqueued one; it answers that key's record, or nil."""
    return script("enqueue_once").command(
        [keys.idempotency(key_hash), email.lane, keys.wake, keys.trace],
        [record, lifetime_ms, email.message, trace.ms, trace.most, email.id, email.address_hash],
    )


class Moves:
    """The worker's moves for the queue whose keys are `keys`, on `client`."""

    def __init__(self, client: redis.Redis, keys: Keys, trace: TraceLimits | None = None):
        self.redis = client
        self.keys = keys
        self.trace = trace or TraceLimits.default()
        self._lanes = [keys.interactive, keys.bulk, keys.wake]
        self._scripts: dict[str, Any] = {}

    def _run(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        registered = self._scripts.get(name)
        if registered is None:
            registered = self._scripts[name] = self.redis.register_script(script(name).source)
        return registered(keys=keys, args=args, client=client)

    # --- the owners of in-flight lists ------------------------------------------------

    def register(self, owner: str, heartbeat_ms: int, client: redis.Redis | None = None) -> None:
        """`owner` may hold an in-flight list: announced with a fresh heartbeat, so that its
        list is reclaimed if the heartbeat ever lapses (through `client` if given)."""
        with (client or self.redis).pipeline(transaction=True) as pipe:
            pipe.set(self.keys.alive(owner), 1, px=heartbeat_ms)
            pipe.sadd(self.keys.owners, owner)
            pipe.execute()

    def leave(self, owner: str) -> bool:
        """A stopping owner unregisters, if its list is empty; False when it is not."""
        keys = self.keys
        return bool(self._run("leave", [keys.owners, keys.alive(owner), keys.inflight(owner)], [owner]))

    # --- out of an in-flight list ------------------------------------------------------

    def ack(self, inflight: str, items: Sequence[bytes]) -> int:
        """Delivered: out of the in-flight list."""
        return int(self._run("ack", [inflight, self.keys.trace], [self.trace.ms, *items]))

    def give_back(self, inflight: str, item: bytes) -> bool:
        """To the head of its own lane; False when the list no longer holds it."""
        return bool(self._run("give_back", [inflight, *self._lanes, self.keys.trace], [item, self.trace.ms]))

    def reclaim(self, owner: str) -> int:
        """A dead owner's list to the head of each email's lane; -1 if it is alive."""
        keys = self.keys
        return int(self._run("reclaim", [keys.owners, keys.alive(owner), keys.inflight(owner), *self._lanes, keys.trace], [owner, self.trace.ms]))

    def schedule(self, inflight: str, item: bytes, retry: str | bytes, delay_ms: int, why: str = "") -> bool:
        """Into the retry schedule as `retry`, due after `delay_ms` on Redis's clock (`why`:
        what the attempt came to, for the trace); False when the list no longer holds `item`."""
        keys = [inflight, self.keys.schedule, self.keys.trace]
        return bool(self._run("schedule", keys, [item, retry, max(0, delay_ms), self.trace.ms, why]))

    def dead_letter(
        self, message_id: str, row: str, failed_at: float, taken_from: tuple[str, bytes] | None, retention: list[Any], why: str = ""
    ) -> tuple[int, int, int]:
        """Into the DLQ as `row` (and out of `taken_from`, an in-flight list and item, when
        given), then `retention` (max entries, max age, budget) on older entries. Returns
        (added: 0 when the list no longer held the item, dropped by count, by age)."""
        inflight, item = taken_from or (self.keys.dlq, b"")
        keys = [self.keys.dlq, self.keys.dlq_index, inflight, self.keys.trace]
        args = [message_id, row, failed_at, item, *retention, self.trace.ms, why]
        added, by_count, by_age = self._run("dead_letter", keys, args)
        return int(added), int(by_count), int(by_age)

    # --- out of the schedule and the DLQ ----------------------------------------------

    def move_due(self, most: int) -> int:
        """Up to `most` due retries to the back of their lane; how many moved."""
        return int(self._run("move_due", [self.keys.schedule, *self._lanes, self.keys.trace], [most, self.trace.ms]))

    def replay(self, message_id: str, message: str, client: Any = None) -> Any:
        """A dead letter to the back of its lane as `message` (1, or 0 when it is gone);
        `client`: a pipeline to queue it on."""
        keys = [self.keys.dlq, self.keys.dlq_index, *self._lanes, self.keys.trace]
        return self._run("replay", keys, [message_id, message, self.trace.ms, self.trace.most], client=client)

    def purge(self, message_ids: Sequence[str]) -> int:
        """Dead letters deleted for good; how many were there."""
        return int(self._run("purge", [self.keys.dlq, self.keys.dlq_index, self.keys.trace], [self.trace.ms, *message_ids]))

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
