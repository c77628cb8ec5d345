"""Every Redis key emailq writes, named in one place.

All of them start with `<p><q>`: the key prefix (`EMAILQ_REDIS_KEY_PREFIX`, default
empty) and the queue's name (`EMAILQ_QUEUE`, default `emailq`), so emailq shares a Redis
database with other apps, and with other emailq deployments (another prefix), without
reading or moving their keys. kombu gets the same prefix (its `global_keyprefix`), so
its own keys (`<p>_kombu.binding.*`, remote-control reply lists) and the events' and
remote control's pub/sub channels carry it too.

    <p><q>                      list    queued, interactive lane: Celery task messages;
                                        producers LPUSH, workers take from the right
    <p><q>:bulk                 list    queued, bulk lane (taken after <q>, 1 in 10 before)
    <p><q>:wake                 list    tokens pushed with each email; idle workers block on it
    <p><q>:rate                 string  the rate limit's next free slot (ms, Redis's clock)
    <p><q>:rate:slowdown        string  a factor on the rate limit's interval after a 429
    <p><q>:rate:sleep           list    never written: workers wait for a slot on it
    <p><q>:inflight:<owner>     list    taken by worker process <owner> and not yet settled
    <p><q>:alive:<owner>        string  <owner>'s heartbeat; expires unless refreshed
    <p><q>:owners               set     owners that may hold an in-flight list
    <p><q>:lease:<sweep>        string  the owner doing <sweep> this interval (SET NX PX,
                                        expiring on Redis's clock): due, reclaim, orphans,
                                        legacy, dlq-trim; one worker per interval does each
    <p><q>:schedule             zset    task messages waiting to be retried, scored by due
                                        time (ms, Redis's clock); due ones rejoin their lane
    <p><q>:dlq                  hash    message id -> dead-letter entry (JSON)
    <p><q>:dlq:index            zset    message id scored by the time it failed
    <p><q>:dlq:reason:<r>       zset    the ids of reason <r>, scored as :dlq:index
    <p><q>:dlq:type:<t>         zset    the ids of template type <t>, scored as :dlq:index
    <p><q>:dlq:no-type          zset    the ids whose message was undecodable (no type)
    <p><q>:dlq:counts           hash    "reason:<r>" / "type:<t>" / "no-type" -> members of
                                        that index (fields at 0 are deleted)
    <p><q>:dlq:indexed          string  set once the reason/type indexes hold every entry
                                        (a DLQ from before them is indexed once, under
                                        :dlq:indexing, a lease)
    <p><q>:dlq:indexing         string  lease of the one process building the indexes
    <p><q>:dlq:action           string  lease of the dead letters page's one bulk action
    <p><q>:dlq:action:progress  hash    that action's progress (kept a day after it ends)
    <p><q>:dlq:action:ids       list    the ids the action touches, snapshotted when the
                                        operator confirmed (read back in chunks)
    <p><q>:trace:<id>           string  that email's moves and attempts, a line each
                                        (`emailq trace`; never a code, link or address)
    <p><q>:trace:index          list    "<id> <address hash>", newest first: the count cap
                                        (EMAILQ_TRACE_MAX_EMAILS) and the address search
    <p><q>:idem:<sha256>        string  "<email digest> <id>": an ingest Idempotency-Key (by
                                        its hash) that enqueued that email; expires after
                                        EMAILQ_MESSAGE_TTL_SECONDS

The reason and type indexes are kept in the same Lua steps that add, retain, replay and
purge entries (emailq.worker.places.dead_letter_index); those scripts name them from the
`:dlq` key they are given, so no script signature changed when they came (a Redis
Cluster would need them declared; emailq runs on one primary).

These are whole key names, for emailq's own clients and scripts. kombu's client in the
worker's channel prefixes some commands itself (and only the first key of a script):
emailq never sends these keys through it except raw (`connection.send_command`). A task
message's routing key is its lane's whole key name.

An email is in exactly one of the lanes, an in-flight list, <q>:schedule and <q>:dlq (or
delivered), and every move between them is one Lua script of `emailq.store.moves`, the
only code that writes those keys (and the trace's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emailq.settings import Settings


@dataclass(frozen=True)
class Keys:
    """The keys of queue `queue` (its name, as Celery and kombu know it) under `prefix`.
    The prefix is required, so that no caller writes outside its deployment's keys."""

    queue: str
    prefix: str = field(kw_only=True)

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        """The keys of `EMAILQ_QUEUE` under `EMAILQ_REDIS_KEY_PREFIX`."""
        return cls(settings.queue, prefix=settings.redis_key_prefix)

    @classmethod
    def queue_of_inflight(cls, inflight_key: str, prefix: str) -> str:
        """The queue whose in-flight list is `inflight_key` (`<p><q>:inflight:<owner>`)."""
        return inflight_key.rpartition(":inflight:")[0].removeprefix(prefix)

    @property
    def interactive(self) -> str:
        return f"{self.prefix}{self.queue}"

    @property
    def bulk(self) -> str:
        return f"{self.interactive}:bulk"

    @property
    def wake(self) -> str:
        return f"{self.interactive}:wake"

    @property
    def rate(self) -> str:
        return f"{self.interactive}:rate"

    @property
    def rate_slowdown(self) -> str:
        return f"{self.interactive}:rate:slowdown"

    @property
    def rate_sleep(self) -> str:
        return f"{self.interactive}:rate:sleep"

    @property
    def owners(self) -> str:
        return f"{self.interactive}:owners"

    @property
    def schedule(self) -> str:
        return f"{self.interactive}:schedule"

    @property
    def dlq(self) -> str:
        return f"{self.interactive}:dlq"

    @property
    def dlq_index(self) -> str:
        return f"{self.interactive}:dlq:index"

    def dlq_by_reason(self, reason: str) -> str:
        return f"{self.dlq}:reason:{reason}"

    def dlq_by_type(self, type_: str | None) -> str:
        """The index of template type `type_`; None: entries without a decodable message."""
        return f"{self.dlq}:no-type" if type_ is None else f"{self.dlq}:type:{type_}"

    @property
    def dlq_counts(self) -> str:
        return f"{self.dlq}:counts"

    @property
    def dlq_indexed(self) -> str:
        return f"{self.dlq}:indexed"

    @property
    def dlq_indexing(self) -> str:
        return f"{self.dlq}:indexing"

    @property
    def dlq_action(self) -> str:
        return f"{self.dlq}:action"

    @property
    def dlq_action_progress(self) -> str:
        return f"{self.dlq}:action:progress"

    @property
    def dlq_action_ids(self) -> str:
        return f"{self.dlq}:action:ids"

    def inflight(self, owner: str) -> str:
        return f"{self.interactive}:inflight:{owner}"

    def alive(self, owner: str) -> str:
        return f"{self.interactive}:alive:{owner}"

    def lease(self, sweep: str) -> str:
        return f"{self.interactive}:lease:{sweep}"

    @property
    def trace(self) -> str:
        """The trace's base key; its keys are written only by the moves' scripts."""
        return f"{self.interactive}:trace"

    def trace_of(self, message_id: str) -> str:
        return f"{self.trace}:{message_id}"

    @property
    def trace_index(self) -> str:
        return f"{self.trace}:index"

    def idempotency(self, key_hash: str) -> str:
        return f"{self.interactive}:idem:{key_hash}"
