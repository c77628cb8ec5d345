"""How many emails are in each place, and whether each is in exactly one.

`count` is what `emailq status` and `/metrics` report. `audit` is `emailq status --check`:
it reads every place in one MULTI (a snapshot, so an email moving meanwhile is not seen
twice), and reports any message id found in two places and any in-flight list that no
worker will give back (an orphan: its owner is not registered, so no sweep looks at it).
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import cast

import redis

from emailq.store.keys import Keys


@dataclass(frozen=True)
class Census:
    queued: int  # both lanes
    queued_bulk: int
    in_flight: int
    scheduled: int
    dead_lettered: int
    owners: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Audit:
    census: Census
    # message id -> the places it was found in (e.g. ["queue", "schedule"])
    in_two_places: dict[str, list[str]] = field(default_factory=dict)
    # in-flight lists with emails that no worker's sweep will give back
    orphans: dict[str, int] = field(default_factory=dict)
    # in-flight lists of owners whose heartbeat lapsed: the next sweep gives them back
    awaiting_reclaim: dict[str, int] = field(default_factory=dict)
    # items whose message id cannot be read (they go to the DLQ as malformed when taken)
    unreadable: int = 0

    @property
    def ok(self) -> bool:
        return not self.in_two_places and not self.orphans


def count(client: redis.Redis, keys: Keys) -> Census:
    """Every place's depth, in one round trip. Not a MULTI: a full Redis refuses those,
    and this is what an operator reads during exactly that outage."""
    owners = sorted(o.decode() for o in cast(set[bytes], client.smembers(keys.owners)))
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(keys.interactive)
        pipe.llen(keys.bulk)
        pipe.zcard(keys.schedule)
        pipe.zcard(keys.dlq_index)
        for owner in owners:
            pipe.llen(keys.inflight(owner))
        queued, bulk, scheduled, dead, *held = pipe.execute()
    return Census(queued + bulk, bulk, sum(held), scheduled, dead, len(owners))


def oldest_age(client: redis.Redis, lane: str) -> float:
    """Seconds since the oldest email on `lane` (the next taken) was created; 0 if empty."""
    item = client.lindex(lane, -1)
    if item is None:
        return 0.0
    try:
        body = json.loads(base64.b64decode(json.loads(item)["body"]))
        created = float(body[0][0]["created_at"])
    except (ValueError, KeyError, TypeError, IndexError):
        return 0.0
    return max(0.0, time.time() - created)


def audit(client: redis.Redis, keys: Keys) -> Audit:
    """Every email in every place, checked; reads everything, so meant for operators."""
    prefix = keys.inflight("")
    lists = sorted(k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1000))
    with client.pipeline(transaction=True) as pipe:
        pipe.smembers(keys.owners)
        pipe.lrange(keys.interactive, 0, -1)
        pipe.lrange(keys.bulk, 0, -1)
        pipe.zrange(keys.schedule, 0, -1)
        pipe.zrange(keys.dlq_index, 0, -1)
        for key in lists:
            pipe.lrange(key, 0, -1)
        owners_raw, queued, bulk, scheduled, dead, *held = pipe.execute()
        for key in lists:
            pipe.exists(keys.alive(key.removeprefix(prefix)))
        alive = pipe.execute()
    owners = {o.decode() for o in owners_raw}

    found: dict[str, list[str]] = defaultdict(list)
    census = Census(len(queued) + len(bulk), len(bulk), sum(map(len, held)), len(scheduled), len(dead), len(owners))
    result = Audit(census)
    for place, items in [("queue", queued), ("bulk", bulk), ("schedule", scheduled), *zip(lists, held)]:
        for item in items:
            message_id = _message_id(item)
            if message_id is None:
                result.unreadable += 1
            else:
                found[message_id].append(place)
    for message_id in dead:
        found[message_id.decode()].append("dlq")
    result.in_two_places = {i: places for i, places in found.items() if len(places) > 1}
    for key, items, up in zip(lists, held, alive):
        if items and key.removeprefix(prefix) not in owners:
            result.orphans[key] = len(items)
        elif items and not up:
            result.awaiting_reclaim[key] = len(items)
    return result


def _message_id(item: bytes) -> str | None:
    try:
        message_id = json.loads(item)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return message_id if isinstance(message_id, str) else None
