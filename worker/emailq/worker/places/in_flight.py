"""The emails this worker process holds, owned by the process rather than by a connection.

A worker process is one *owner* (`InFlight.owner`). Its takes move emails from the lanes
onto its own in-flight list (`<p><q>:inflight:<owner>`, see `emailq.store.keys`), so an
email that was taken is never only in a socket. It leaves that list by one of the moves of
`emailq.store.moves`: acked when delivered, scheduled for a retry, dead-lettered, or given
back to the head of its own lane.

kombu ties unacked messages to a channel and puts them back on the queue when the
channel closes — on every dropped connection, while their threads are still posting them.
Here a reconnect gives nothing back: the records live in this process, and only a lapsed
heartbeat (`heartbeat.py`) lets another worker take an owner's list back. When that
happened to a live worker (it stalled longer than its heartbeat's lifetime), that owner is
dead for good: `taken_for_dead` marks every record of its lists lost (also those of takes
whose reply is read only now), nothing this process does with them afterwards (post, ack,
retry, dead-letter, give back) touches Redis, and the process carries on under a new owner
name, with new lists, so that nothing it takes from then on can be confused with them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from emailq.store.keys import Keys
from emailq.store.moves import Moves
from emailq.store.trace import TraceLimits

log = logging.getLogger("emailq.worker")


def new_owner() -> str:
    """A name no other process, and no earlier life of this one, has had."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class Taken:
    """One email this process holds: where it sits in Redis, the lane it came from (where
    it goes back to), and since when."""

    lane: str
    inflight_key: str
    item: bytes
    message_id: str | None
    taken_at: float
    settled: bool = False
    # Another worker took the email back after this one's heartbeat lapsed: not ours.
    lost: bool = False


class InFlight:
    """This process's records of taken emails, keyed by kombu delivery tag; thread-safe."""

    def __init__(self, client: redis.Redis, prefix: str, trace: TraceLimits | None = None):
        self.redis = client
        self.prefix = prefix
        self.trace = trace or TraceLimits.default()
        self._lock = threading.Lock()
        self._acks_changed = threading.Condition(self._lock)
        self._by_tag: dict[str, Taken] = {}
        # Settled in memory, but Redis did not take the move yet (a dropped connection, a
        # full Redis): the email stays in the in-flight list, and the Housekeeper repeats
        # each move until it lands.
        self._unfinished: list[tuple[str, Taken, Callable[[Taken], object]]] = []
        # Delivered emails still in the in-flight list: one thread removes them in
        # batches (a round trip per batch, not per email, from whichever pool thread
        # delivered it). The window this adds to a crash is a redelivery, never a loss.
        self._acks: list[Taken] = []
        self._acking: list[Taken] = []
        self._acker: threading.Thread | None = None
        self.queues: set[str] = set()
        # Takes whose reply was lost on the wire (`take_reply_lost`).
        self.lost_take_replies = 0
        self.owner = new_owner()
        self._dead_lists: set[str] = set()  # in-flight lists of this process's earlier lives
        self._moves: dict[str, Moves] = {}

    def keys(self, queue: str) -> Keys:
        """The keys of `queue` (a name, as kombu knows it) under this process's prefix."""
        return Keys(queue, prefix=self.prefix)

    def moves(self, queue: str) -> Moves:
        """The moves of `queue`'s emails (`emailq.store.moves`)."""
        moves = self._moves.get(queue)
        if moves is None:
            moves = self._moves[queue] = Moves(self.redis, self.keys(queue), self.trace)
        return moves

    def moves_of(self, taken: Taken) -> Moves:
        """The moves of the queue whose in-flight list holds `taken`."""
        return self.moves(Keys.queue_of_inflight(taken.inflight_key, self.prefix))

    def register(self, queue: str, heartbeat_ms: int, client: redis.Redis | None = None) -> None:
        """Announce this owner for `queue` with a fresh heartbeat, so that its in-flight
        list is reclaimed if the heartbeat ever lapses (through `client`, the heartbeat's
        own, if given)."""
        self.moves(queue).register(self.owner, heartbeat_ms, client)
        self.queues.add(queue)

    def take(self, tag: str, taken: Taken) -> None:
        with self._lock:
            # A take that Redis ran before this worker was taken for dead, read only now.
            taken.lost = taken.lost or taken.inflight_key in self._dead_lists
            self._by_tag[tag] = taken

    def take_reply_lost(self) -> None:
        """A take's reply never arrived (a reset connection): Redis may have moved emails
        onto this owner's list that no record here knows of; the Housekeeper gives them
        back within seconds (`give_back_lost`), as after a reconnect of its own."""
        with self._lock:
            self.lost_take_replies += 1

    def get(self, tag: str) -> Taken | None:
        """The record of the message delivered under kombu delivery tag `tag`: what the
        consumer hands its task, which settles the email through it."""
        with self._lock:
            return self._by_tag.get(tag)

    def ack(self, tag: str) -> None:
        """Delivered (or already moved by its task): forget it; the acker removes it from
        Redis with the next batch. A `lost` record touches nothing: the email is a peer's."""
        # One hold of the lock from forgetting the record to queuing its ack: in between,
        # the Housekeeper's scan (`known_items`) would find the email in Redis with no
        # record, and after a second scan give back an email that was delivered.
        with self._lock:
            taken = self._by_tag.pop(tag, None)
            if taken is None or taken.settled or taken.lost:
                return
            taken.settled = True
            self._acks.append(taken)
            if self._acker is None:
                self._acker = threading.Thread(target=self._ack_batches, name="emailq-acks", daemon=True)
                self._acker.start()
            self._acks_changed.notify_all()

    def flush_acks(self, timeout: float = 5.0) -> bool:
        """Wait until every ack so far reached Redis (or was left to the Housekeeper)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._acks or self._acking:
                if not self._acks_changed.wait(deadline - time.monotonic()):
                    return False
        return True

    def _ack_batches(self) -> None:
        while True:
            with self._lock:
                while not self._acks:
                    self._acks_changed.wait()
                batch = [t for t in self._acks if not t.lost]
                self._acks, self._acking = [], batch
            by_list: dict[str, list[Taken]] = {}
            for taken in batch:
                by_list.setdefault(taken.inflight_key, []).append(taken)
            for key, takens in by_list.items():
                # Oldest first, as the ack script wants: each LREM then finds its email at
                # the list's tail. In the order the deliveries ended, it scans past the
                # emails still posting, comparing 1.2 KB with each: about a third more of
                # Redis's CPU per email with 160 in flight.
                takens.sort(key=lambda t: t.taken_at)
                try:
                    self.moves_of(takens[0]).ack(key, [t.item for t in takens])
                except Exception as error:  # this thread must outlive any one failure
                    log.warning("Redis did not take %d ack(s) (%s); they stay with this worker and are retried", len(takens), error)
                    with self._lock:
                        self._unfinished.extend(("ack", t, self._remove) for t in takens)
            with self._lock:
                self._acking = []
                self._acks_changed.notify_all()

    def release(self, tag: str) -> None:
        """Back to the head of its lane (Celery asked to requeue it). The record is
        forgotten only once the move ran (or was kept for the Housekeeper), so that the
        email is never in Redis without one."""
        taken = self.get(tag)
        if taken is not None and not taken.settled:
            self.give_back(taken)
        self._forget(tag)

    def give_back(self, taken: Taken) -> None:
        taken.settled = True
        self.move(taken, "release", self._give_back)

    def move(self, taken: Taken, what: str, step: Callable[[Taken], object]) -> bool:
        """Run `step` (one atomic move of `taken` out of the in-flight list); if Redis
        refuses it, keep it for the Housekeeper to repeat. True when it ran now; False
        too, with nothing done, when the email is no longer this worker's (`lost`)."""
        if taken.lost:
            log.info("%s was taken back while this worker was taken for dead: its %s is left to whoever has it", taken.message_id, what)
            return False
        try:
            step(taken)
        except redis.RedisError as error:
            log.warning("Redis did not take the %s of %s (%s); it stays with this worker and is retried", what, taken.message_id, error)
            with self._lock:
                self._unfinished.append((what, taken, step))
            return False
        return True

    def unfinished(self) -> int:
        with self._lock:
            return len(self._unfinished)

    def known_items(self) -> set[bytes]:
        """Every item this process has a record of, settled or still to be moved (lost
        ones aside: their items are in another worker's hands)."""
        with self._lock:
            pending = [*self._acks, *self._acking, *(t for _, t, _ in self._unfinished)]
            return {t.item for t in [*self._by_tag.values(), *pending] if not t.lost}

    def overdue(self, older_than: float) -> list[Taken]:
        """Unsettled records taken more than `older_than` seconds ago."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            return [t for t in self._by_tag.values() if not t.settled and not t.lost and t.taken_at < cutoff]

    def give_back_all(self) -> int:
        """At shutdown: every email not yet settled goes back to its queue."""
        with self._lock:
            left = [t for t in self._by_tag.values() if not t.settled and not t.lost]
        for taken in left:
            self.give_back(taken)
        return len(left)

    def finish_unfinished(self) -> None:
        with self._lock:
            todo, self._unfinished = [u for u in self._unfinished if not u[1].lost], []
        for index, (_what, taken, step) in enumerate(todo):
            try:
                step(taken)
            except redis.RedisError:
                with self._lock:  # still refused: keep these, in order, for the next round
                    self._unfinished[:0] = todo[index:]
                return

    def taken_for_dead(self) -> int:
        """Another worker took this owner's list back after its heartbeat lapsed (its
        heartbeat gave up every queue's list of it, `heartbeat.py`): every record of an
        email taken onto its lists is lost, now or whenever it is recorded, and this
        process takes a new owner name (register it next). Returns how many unsettled
        emails were lost (their deliveries may still be under way)."""
        lost = 0
        with self._lock:
            self._dead_lists |= {self.keys(queue).inflight(self.owner) for queue in self.queues}
            pending = [*self._acks, *self._acking, *(t for _, t, _ in self._unfinished)]
            for taken in [*self._by_tag.values(), *pending]:
                if taken.inflight_key in self._dead_lists and not taken.lost:
                    taken.lost = True
                    lost += not taken.settled
            self.owner = new_owner()
        return lost

    def reclaim(self, queue: str, owner: str) -> int:
        """Move a dead owner's in-flight list back to the head of each email's own lane of
        `queue`, waking workers; -1 if it is alive after all."""
        return self.moves(queue).reclaim(owner)

    def _forget(self, tag: str) -> Taken | None:
        with self._lock:
            return self._by_tag.pop(tag, None)

    def _remove(self, taken: Taken) -> None:
        self.moves_of(taken).ack(taken.inflight_key, [taken.item])

    def _give_back(self, taken: Taken) -> None:
        self.moves_of(taken).give_back(taken.inflight_key, taken.item)
