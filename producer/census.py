"""How many emails are in each place: what `emailq status` and `/metrics` report."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import redis

from emailq.keys import Keys


@dataclass(frozen=True)
class Census:
    queued: int
    in_flight: int
    scheduled: int
    dead_lettered: int
    owners: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count(client: redis.Redis, queue: str) -> Census:
    """One consistent read (MULTI) of every place an email can be."""
    keys = Keys(queue)
    owners = sorted(o.decode() for o in client.smembers(keys.owners))
    with client.pipeline(transaction=True) as pipe:
        pipe.llen(queue).zcard(keys.schedule).zcard(keys.dlq_index)
        for owner in owners:
            pipe.llen(keys.inflight(owner))
        queued, scheduled, dead, *held = pipe.execute()
    return Census(queued, sum(held), scheduled, dead, len(owners))
