"""Taking over what the release before the in-flight lists left in Redis.

That release kept a taken email in one of two places: a consumer's inbox list
(`<q>:inbox:<consumer>`, registered in the set `_emailq.inboxes` with its heartbeat key
`_emailq.alive:<consumer>`), or kombu's `unacked` hash (shared with any other Celery app
on the database, each entry `[message, exchange, routing_key]`, indexed in the sorted
set `unacked_index`). A new worker gives both back to the queue, moving each email in one
atomic step: inboxes once their consumer's heartbeat is gone, unacked entries of this
queue once no old consumer is alive at all. Other apps' entries are never touched.

That release had no key prefix, so with `EMAILQ_REDIS_KEY_PREFIX` set there is nothing of
it to take over (and the unprefixed keys belong to another deployment): the Housekeeper
then skips this.
"""

from __future__ import annotations

import json
import logging

import redis

from emailq.store.keys import Keys
from emailq.store.moves import Moves

log = logging.getLogger("emailq.worker")

INBOXES = "_emailq.inboxes"
ALIVE_PATTERN = "_emailq.alive:*"
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


class Legacy:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def take_over(self, queue: str) -> int:
        """Give back to `queue` what the old release left for it; returns how many."""
        moves, moved = Moves(self.redis, Keys(queue, prefix="")), 0
        for member in self.redis.smembers(INBOXES):
            try:
                owner_queue, inbox, alive = json.loads(member)
            except (ValueError, TypeError):
                continue
            if owner_queue == queue:
                moved += max(0, moves.legacy_inbox_back(inbox, INBOXES, alive, member))
        # The scan for live old workers walks the whole keyspace (traces included): only
        # when there is an unacked hash to take over.
        if self.redis.exists(UNACKED) and next(iter(self.redis.scan_iter(match=ALIVE_PATTERN, count=1000)), None) is None:
            for tag, value in self.redis.hscan_iter(UNACKED):
                message = _message_for(value, queue)
                if message is not None:
                    moved += moves.legacy_unacked_back(UNACKED, UNACKED_INDEX, tag, message)
        if moved:
            log.warning("took over %d email(s) left in flight by an older emailq release", moved)
        return moved


def _message_for(value: bytes, queue: str) -> str | None:
    """The queue item for an old unacked entry of `queue`; None for anything else."""
    try:
        message, _exchange, routing_key = json.loads(value)
    except (ValueError, TypeError):
        return None
    if routing_key != queue or not isinstance(message, dict):
        return None
    return json.dumps(message, separators=(",", ":"))
