"""How a worker takes its next email: one atomic step that picks the lane, honours the
cluster's rate limit and moves the email onto the worker's in-flight list.

Two lanes per queue (`emailq.lanes`): interactive (`<q>`: one-time codes, verification)
and bulk (`<q>:bulk`). A take moves from the interactive lane first, except every
`EMAILQ_BULK_EVERY`-th take, which tries bulk first, so bulk still moves while both are
full. BLMOVE blocks on one list only, so the take is a Lua script (non-blocking) and an
idle worker blocks instead on `<q>:wake`, a list of tokens that every move onto a lane
pushes (`emailq.store.moves`); a take that finds both lanes empty clears the tokens.

The rate limit (`EMAILQ_RATE_LIMIT`, deliveries per second across every worker on the
Redis) is a GCRA on Redis's clock, in the same script: a take either gets its slot and
its email together or gets neither and learns how long to wait. Waiting for a slot holds
no thread and spends no attempt: the consumer's connection sleeps in Redis (a blocking
pop on `<q>:rate:sleep`, which nothing writes) until the slot. A 429 from
the endpoint while a limit is set slows the whole cluster (`SLOWDOWN_FACTOR` for
`SLOWDOWN_SECONDS`).

A worker takes nothing while its heartbeat key is gone (it stalled, and another worker may
have taken its list back): it waits `emailq.store.scripts.NO_HEARTBEAT_WAIT_MS` at a time until its heartbeat
thread has found out and renewed the key, or registered the worker under a new owner name
(`heartbeat.py`). So nothing lands in a list after another worker reclaimed it.
"""

from __future__ import annotations

import logging

import redis

from emailq.store.keys import Keys
from emailq.store.scripts import script

log = logging.getLogger("emailq.worker")

SLOWDOWN_FACTOR = 2
SLOWDOWN_SECONDS = 30
# Burst allowance, as a share of one second's worth of the rate: under a tenth, so that
# no one-second window sees more than 110% of the rate even with the network's jitter.
BURST_SHARE = 0.08

TAKEN, WAIT, EMPTY = 1, 0, 2
# Emails one take may move at most (fewer when the worker has fewer free slots). Each
# take is one round trip and one turn of Celery's event loop; taking a few at once when
# the queue is deep is most of what a worker saves per email at high rates, and of what
# Redis spends per email: a round trip costs it as much as a few emails' moves (16 → 64:
# delivery's Redis CPU 37–42 → 27–33 µs per email, docs/performance.md). The interactive
# lane comes first within a take as between takes, so a code never waits behind one.
TAKE_BATCH = 64
# The take script (`emailq/store/lua/take.lua`: its KEYS, ARGV and answers): the consumer
# sends it raw on its own connection, past kombu's prefixing client, so its keys are whole
# names.
TAKE = script("take")


class Taker:
    """The take script's arguments for one queue, and the bookkeeping around it."""

    def __init__(self, keys: Keys, owner: str, rate_limit: float | None, bulk_every: int, trace_ms: int = 0):
        self.owner = owner
        self.inflight = keys.inflight(owner)
        self.wake = keys.wake
        self.sleep_key = keys.rate_sleep
        self._keys = [keys.interactive, keys.bulk, self.inflight, keys.rate, keys.rate_slowdown, keys.wake, keys.alive(owner), keys.trace]
        self._trace_ms = str(trace_ms)
        self._rate = [f"{1000.0 / rate_limit:.3f}", f"{BURST_SHARE * 1000.0:.3f}"] if rate_limit else ["0", "0"]
        self.bulk_every = bulk_every
        self._takes = 0

    def args(self, most: int = 1) -> tuple[list[str], list[str]]:
        """KEYS and ARGV for a take of at most `most` emails."""
        return self._keys, [*self._rate, str(max(1, most)), str(self.bulk_every), str(self._takes), self._trace_ms]

    def took(self, count: int) -> None:
        """`count` emails came with the last take: the lane order moves on by as many."""
        self._takes += count


def slow_down(client: redis.Redis, keys: Keys) -> None:
    """The endpoint answered 429 while a rate limit is set: slow every worker down. Advice
    only: a Redis that refuses it must not stop the email's own retry from being written."""
    try:
        client.set(keys.rate_slowdown, SLOWDOWN_FACTOR, ex=SLOWDOWN_SECONDS)
    except redis.RedisError as error:
        log.warning("could not slow the cluster down after a 429 (%s)", error)
