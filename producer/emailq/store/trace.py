"""Where an email is and every attempt it had: `emailq trace` and the dead letters page's
search read what the moves' scripts wrote (`lua/trace.lua`), in the same step as each move.

An email's trace is a list of events, oldest first, each `<ms> <event>[ <detail>]` on
Redis's clock: `queued <lane>`, `taken <owner>`, `delivered`, `retry <due ms> <why>`,
`due <lane>`, `given-back <lane>`, `reclaimed <lane> from <owner>`, `dead <why>`,
`replayed <lane>`, `purged`. No code, link or address is ever in it: an address is found
through the hash of it (`address_hash`), and the events say only which step, when, and
what the endpoint answered (a status, or the kind of error).

It is bounded twice, so that it never fills a Redis running with `noeviction`: a trace
lives `EMAILQ_TRACE_SECONDS` from its email's enqueue (or replay), and beyond
`EMAILQ_TRACE_MAX_EMAILS` emails the oldest traces are dropped as new ones come. A move
of an email whose trace is gone writes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, cast

import redis

from emailq.store.keys import Keys

if TYPE_CHECKING:
    from emailq.settings import Settings

# Index entries read per round trip by a search by address.
SCAN_CHUNK = 5000


@dataclass(frozen=True)
class TraceLimits:
    """What the moves' scripts are told: how long a trace lives (ms; 0: off), and how
    many emails are traced at most."""

    ms: int
    most: int

    @classmethod
    def of(cls, settings: Settings) -> TraceLimits:
        return cls(int(settings.trace_seconds * 1000), settings.trace_max_emails)

    @classmethod
    def default(cls) -> TraceLimits:
        from emailq.settings import Settings

        fields = Settings.model_fields
        return cls(int(cast(float, fields["trace_seconds"].default) * 1000), cast(int, fields["trace_max_emails"].default))

    @property
    def kept(self) -> str:
        """How long, and for how many emails, a trace is kept: what a search that found
        nothing says (`emailq trace` and the dead letters page)."""
        kept = f"{self.ms / 1000:g}s" if self.ms else "nothing: EMAILQ_TRACE_SECONDS is 0"
        return f"traces are kept {kept}, for the newest {self.most} emails"


def address_hash(address: str) -> str:
    """What the trace knows of an address: a hash of it, case aside."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()[:32]


def utc(seconds: float) -> str:
    """A trace's time as `emailq trace` and the dead letters page show it: UTC, to the ms."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass(frozen=True)
class Event:
    at: float  # seconds, Redis's clock
    what: str  # queued, taken, delivered, retry, due, given-back, reclaimed, dead, replayed, purged
    detail: str

    @property
    def when(self) -> str:
        return utc(self.at)

    @property
    def due(self) -> float:
        """A retry's due time, in seconds (the trace has `<due ms> <why>`)."""
        return int(self.detail.partition(" ")[0]) / 1000

    @property
    def said(self) -> str:
        """The detail in words: a retry's due time as a time."""
        if self.what == "retry":
            return f"due {utc(self.due)}  {self.detail.partition(' ')[2]}"
        return self.detail

    @classmethod
    def parse(cls, text: str) -> Event:
        ms, _, rest = text.partition(" ")
        what, _, detail = rest.partition(" ")
        return cls(int(ms) / 1000, what, detail)


@dataclass(frozen=True)
class Whereabouts:
    message_id: str
    events: list[Event]

    @property
    def now(self) -> str:
        """Where the email is now, in words, from its last event."""
        if not self.events:
            return "unknown"
        last = self.events[-1]
        if last.what in ("queued", "due", "given-back", "replayed"):
            return f"queued on the {last.detail} lane"
        if last.what == "reclaimed":
            return f"queued on the {last.detail.split(' ')[0]} lane (reclaimed from a dead worker)"
        if last.what == "taken":
            return f"in flight on worker {last.detail}"
        if last.what == "retry":
            return f"scheduled for a retry at {utc(last.due)} UTC"
        if last.what == "dead":
            return "in the dead-letter queue"
        return last.what  # delivered, purged

    @property
    def dead(self) -> bool:
        """Whether the email is a dead letter now."""
        return bool(self.events) and self.events[-1].what == "dead"


class Trace:
    """The trace of the queue whose keys are `keys` (read only: the moves write it)."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    def of(self, message_id: str) -> Whereabouts | None:
        """The email's trace; None when it has none (never traced, or it expired)."""
        return _whereabouts(message_id, cast(bytes | None, self.redis.get(self.keys.trace_of(message_id))))

    def find(self, id_or_address: str, most: int | None = None) -> list[Whereabouts]:
        """The traced emails an operator asks for: the one with this id, or (an address,
        any case) every one sent to it, newest first (the newest `most` if given)."""
        if "@" in id_or_address:
            return self.sent_to(id_or_address, most)
        one = self.of(id_or_address)
        return [one] if one else []

    def sent_to(self, address: str, most: int | None = None) -> list[Whereabouts]:
        """The traced emails sent to `address`, newest first (the newest `most` if given).
        Reads the index a chunk at a time (a search, not a hot path): Redis never blocks
        on it."""
        suffix = f" {address_hash(address)}".encode()
        ids: list[str] = []
        for start in itertools.count(0, SCAN_CHUNK):
            chunk = cast(list[bytes], self.redis.lrange(self.keys.trace_index, start, start + SCAN_CHUNK - 1))
            ids += [entry[: -len(suffix)].decode() for entry in chunk if entry.endswith(suffix)]
            if len(chunk) < SCAN_CHUNK or (most is not None and len(ids) >= most):
                break
        ids = ids[:most]
        rows = cast(list[bytes | None], self.redis.mget([self.keys.trace_of(i) for i in ids])) if ids else []
        # An id whose trace expired or was dropped (the count cap) since is left out.
        found = (_whereabouts(i, row) for i, row in zip(ids, rows))
        return [w for w in found if w is not None]


def _whereabouts(message_id: str, raw: bytes | None) -> Whereabouts | None:
    if not raw:
        return None
    return Whereabouts(message_id, [Event.parse(line) for line in raw.decode().splitlines() if line])
