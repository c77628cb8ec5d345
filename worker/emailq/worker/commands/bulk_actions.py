"""Replay or purge many dead letters from the dead letters page: on a thread of the
Flower process, one action at a time, with its progress in Redis.

- One at a time: `<p><q>:dlq:action` is a lease (`Lease`), taken by `start` and
  extended after every chunk; a second `start` is refused with `Busy`, naming who runs
  what. A Flower process that dies lets go when the lease expires (`LEASE_SECONDS`).
- What it touches: the ids that match when the operator confirms, snapshotted into the
  list `<p><q>:dlq:action:ids` `BATCH` at a time, then read back `BATCH` at a time and
  moved with `DeadLetters.replay` / `purge` (one atomic step per entry). Nothing holds
  more than one chunk, so memory stays flat however many entries match; entries that
  fail after the confirmation are not touched; those replayed or purged meanwhile by
  someone else are passed over ("gone").
- Progress: the hash `<p><q>:dlq:action:progress` (state selecting → running → done or
  failed, counts), read by the page's progress endpoint; kept a day after the end, so
  closing the tab changes nothing and any Flower on the same Redis shows it.
- Replay gives a fresh attempt budget and TTL, as `emailq dlq replay` does.

Each start and end is logged with the operator's user name and counts, never an
address or a code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import redis

from emailq.errors import EmailqError
from emailq.settings import Settings
from emailq.worker.places.dead_letter_index import Lease
from emailq.worker.places.dead_letter_query import DeadLetterQuery, Filter
from emailq.worker.places.dead_letters import BATCH, DeadLetters

log = logging.getLogger("emailq.flower")

ACTIONS = ("replay", "purge")
LEASE_SECONDS = 60
KEEP_PROGRESS_SECONDS = 24 * 3600
RUNNING = ("selecting", "running")


class Busy(EmailqError):
    """Another bulk action holds the lease."""


class BulkActions:
    def __init__(self, store: DeadLetters, query: DeadLetterQuery, settings: Settings):
        self.store = store
        self.query = query
        self.settings = settings
        self.keys = store.keys
        self._redis: redis.Redis = store.redis

    def start(self, action: str, operator: str, flt: Filter | None = None, ids: list[str] | None = None) -> None:
        """Begin `action` on `ids`, or on every entry matching `flt`, on a thread; returns
        at once. Busy when another action runs."""
        assert action in ACTIONS and (flt is None) != (ids is None)
        lease = Lease(self._redis, self.keys.dlq_action, LEASE_SECONDS)
        if not lease.acquire(f"{operator}'s {action}"):
            raise Busy(f"another bulk action is running ({lease.holder() or 'just ending'}): wait for it to finish, then try again")
        scope = "selected" if ids is not None else "filter"
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.dlq_action_progress, self.keys.dlq_action_ids)
            pipe.hset(
                self.keys.dlq_action_progress,
                mapping={
                    "action": action,
                    "operator": operator,
                    "scope": scope,
                    "state": "selecting",
                    "started_at": time.time(),
                    "selected": 0,
                    "done": 0,
                },
            )
            pipe.execute()
        log.info("operator %s started a %s of dead letters (%s)", operator, action, scope)
        threading.Thread(target=self._run, args=(lease, action, operator, flt, ids), name=f"emailq-{action}", daemon=True).start()

    def progress(self) -> dict[str, Any]:
        """The last action's progress; {} when none ran in the last day. `state` is
        "interrupted" when it was running in a process that stopped."""
        raw = cast(dict[bytes, bytes], self._redis.hgetall(self.keys.dlq_action_progress))
        shown: dict[str, Any] = {}
        for field, value in raw.items():
            text = value.decode()
            shown[field.decode()] = float(text) if field.endswith(b"_at") else int(text) if text.isdigit() else text
        if shown.get("state") in RUNNING and not self._redis.exists(self.keys.dlq_action):
            shown["state"] = "interrupted"
        return shown

    def _run(self, lease: Lease, action: str, operator: str, flt: Filter | None, ids: list[str] | None) -> None:
        progress = self.keys.dlq_action_progress
        try:
            chunks = self.query.id_chunks(flt) if flt is not None else _chunks(ids or [])
            total = 0
            for chunk in chunks:
                with self._redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(self.keys.dlq_action_ids, *chunk)
                    pipe.hincrby(progress, "selected", len(chunk))
                    pipe.execute()
                total += len(chunk)
                self._still_ours(lease)
            self._redis.hset(progress, "state", "running")
            moved = skipped = 0
            for offset in range(0, total, BATCH):
                chunk = [i.decode() for i in cast(list[bytes], self._redis.lrange(self.keys.dlq_action_ids, offset, offset + BATCH - 1))]
                if action == "replay":
                    n, unreplayable = self.store.replay(chunk, self.settings.message_ttl_seconds, self.settings.bulk_ttl_seconds)
                    skipped += len(unreplayable)
                else:
                    n = self.store.purge(chunk)
                moved += n
                self._redis.hset(progress, mapping={"done": offset + len(chunk), "moved": moved, "skipped": skipped})
                self._still_ours(lease)
            gone = total - moved - skipped
            self._redis.hset(progress, mapping={"state": "done", "finished_at": time.time(), "gone": gone})
            log.info(
                "operator %s %s %d dead letter(s) of %d selected (%d not replayable, %d gone meanwhile)",
                operator,
                "replayed" if action == "replay" else "purged",
                moved,
                total,
                skipped,
                gone,
            )
        except Exception as error:  # shown on the page; what was moved stays moved
            # Redis's own errors name a host, never an entry; others only by their type.
            why = f"{type(error).__name__}: {error}" if isinstance(error, redis.RedisError) else type(error).__name__
            log.error("operator %s's %s of dead letters failed: %s", operator, action, why)
            try:
                self._redis.hset(progress, mapping={"state": "failed", "finished_at": time.time(), "error": why})
            except redis.RedisError:
                pass  # Redis is gone: the lease expires, and the page says "interrupted"
        finally:
            try:
                self._redis.delete(self.keys.dlq_action_ids)
                self._redis.expire(progress, KEEP_PROGRESS_SECONDS)
                lease.release()
            except redis.RedisError:
                log.warning("could not release the bulk action's lease; it expires in %ds", LEASE_SECONDS)

    @staticmethod
    def _still_ours(lease: Lease) -> None:
        if not lease.extend():
            raise RuntimeError("the bulk action's lease expired")


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]
