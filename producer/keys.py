"""Every Redis key emailq writes, named in one place.

All of them start with the queue's name (`EMAILQ_QUEUE`, default `emailq`), so emailq
shares a Redis database with other apps without reading or moving their keys.

    <q>                      list    queued, interactive lane: Celery task messages;
                                     producers LPUSH, workers take from the right
    <q>:bulk                 list    queued, bulk lane (taken after <q>, 1 in 10 before)
    <q>:wake                 list    tokens pushed with each email; idle workers block on it
    <q>:rate                 string  the rate limit's next free slot (ms, Redis's clock)
    <q>:rate:slowdown        string  a factor on the rate limit's interval after a 429
    <q>:rate:sleep           list    never written: workers wait for a slot on it
    <q>:inflight:<owner>     list    taken by worker process <owner> and not yet settled
    <q>:alive:<owner>        string  <owner>'s heartbeat; expires unless refreshed
    <q>:owners               set     owners that may hold an in-flight list
    <q>:schedule             zset    task messages waiting to be retried, scored by due
                                     time (ms, Redis's clock); due ones rejoin <q>
    <q>:dlq                  hash    message id -> dead-letter entry (JSON)
    <q>:dlq:index            zset    message id scored by the time it failed
    <q>:idem:<sha256>        string  "<email digest> <id>": an ingest Idempotency-Key (by
                                     its hash) that enqueued that email; expires after
                                     EMAILQ_MESSAGE_TTL_SECONDS

An email is in exactly one of <q>, an in-flight list, <q>:schedule and <q>:dlq (or
delivered), and every move between them is one Lua script or MULTI.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    queue: str

    @property
    def bulk(self) -> str:
        return f"{self.queue}:bulk"

    @property
    def wake(self) -> str:
        return f"{self.queue}:wake"

    @property
    def rate(self) -> str:
        return f"{self.queue}:rate"

    @property
    def rate_slowdown(self) -> str:
        return f"{self.queue}:rate:slowdown"

    @property
    def rate_sleep(self) -> str:
        return f"{self.queue}:rate:sleep"

    @property
    def owners(self) -> str:
        return f"{self.queue}:owners"

    @property
    def schedule(self) -> str:
        return f"{self.queue}:schedule"

    @property
    def dlq(self) -> str:
        return f"{self.queue}:dlq"

    @property
    def dlq_index(self) -> str:
        return f"{self.queue}:dlq:index"

    def inflight(self, owner: str) -> str:
        return f"{self.queue}:inflight:{owner}"

    def alive(self, owner: str) -> str:
        return f"{self.queue}:alive:{owner}"

    def idempotency(self, key_hash: str) -> str:
        return f"{self.queue}:idem:{key_hash}"
