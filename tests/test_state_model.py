"""A model of the email's state machine: hypothesis drives the owner of every move
(`emailq.store.moves`, through the producer for enqueues) against a real Redis, in random
interleavings of enqueue, take, ack, retry, due, dead-letter, replay, purge, an owner's
death and reclaim, a take whose reply is lost, and writes Redis refuses (a key of the
wrong type, a full Redis). After every step, each email is exactly where the model says
(in which lane, whose in-flight list, the schedule, the DLQ, delivered or purged), and
`emailq status --check` finds nothing wrong.

Bounded for the normal suite; `pytest tests/test_state_model.py --model-examples 2000`
runs a longer search."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from conftest import RedisServer, settings_from
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from helpers import INVITATION, KEYS, SIGN_IN

from emailq.enqueue import Producer
from emailq.errors import QueueUnavailable
from emailq.store import census
from emailq.store.moves import Moves
from emailq.worker.places.taking import TAKE, Taker

OWNERS = ("w1", "w2")
FOREVER_MS = 10**9  # a retry that is not due within the run
RETENTION = [0, "0.0", 100]  # no cap, no age limit: nothing is dropped behind the model's back


def _id(item: bytes) -> str:
    return cast(str, json.loads(item)["headers"]["id"])


class Places(RuleBasedStateMachine):
    client: redis.Redis
    producer: Producer

    def __init__(self) -> None:
        super().__init__()
        self.client.flushall()
        self.moves = Moves(self.client, KEYS)
        self.take = self.client.register_script(TAKE.source)
        self.takes = {owner: Taker(KEYS, owner, None, 3) for owner in OWNERS}
        # id -> where the model says it is; in enqueue order (ids are random: sorting them
        # would make a replayed example pick other emails)
        self.place: dict[str, str] = {}
        self.item: dict[str, bytes] = {}  # id -> its task message as queued
        self.bulk: set[str] = set()
        self.known: dict[str, set[str]] = {owner: set() for owner in OWNERS}  # records a worker has

    @initialize()
    def register(self) -> None:
        for owner in OWNERS:
            self._beat(owner)

    def _beat(self, owner: str) -> None:
        self.client.set(KEYS.alive(owner), 1, px=60_000)
        self.client.sadd(KEYS.owners, owner)

    def _held(self, owner: str, known: bool = True) -> list[str]:
        return [i for i, p in self.place.items() if p == f"inflight:{owner}" and (i in self.known[owner]) == known]

    def _lane(self, message_id: str) -> str:
        return "bulk" if message_id in self.bulk else "interactive"

    # --- the producer's half ----------------------------------------------------------

    @rule(bulk=st.booleans(), n=st.integers(1, 3))
    def enqueue(self, bulk: bool, n: int) -> None:
        email = INVITATION if bulk else SIGN_IN
        for message_id in self.producer.send_many([email] * n, bulk=bulk):
            self.place[message_id] = "bulk" if bulk else "interactive"
            if bulk:
                self.bulk.add(message_id)

    @rule(key=st.sampled_from(["k1", "k2"]))
    def enqueue_once(self, key: str) -> None:
        message_id, new = self.producer.send_once(SIGN_IN, key)
        assert new == (message_id not in self.place)
        self.place.setdefault(message_id, "interactive")

    # --- a worker's half --------------------------------------------------------------

    def _take(self, owner: str, most: int) -> list[str]:
        keys, args = self.takes[owner].args(most)
        reply = self.take(keys=keys, args=args)
        taken = [reply[i + 1] for i in range(1, len(reply) - 1, 2)] if reply[0] == 1 else []
        for item in taken:
            message_id = _id(item)
            assert self.place[message_id] == self._lane(message_id), "taken from its own lane"
            self.place[message_id] = f"inflight:{owner}"
            self.item[message_id] = item
        self.takes[owner].took(len(taken))
        return [_id(item) for item in taken]

    @rule(owner=st.sampled_from(OWNERS), most=st.integers(1, 4))
    def take_some(self, owner: str, most: int) -> None:
        self.known[owner] |= set(self._take(owner, most))

    @rule(owner=st.sampled_from(OWNERS))
    def take_whose_reply_is_lost(self, owner: str) -> None:
        self._take(owner, 2)  # Redis ran it; the worker never learns what it took

    @precondition(lambda self: any(p.startswith("inflight:") for p in self.place.values()))
    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def ack(self, owner: str, data: st.DataObject) -> None:
        held = self._held(owner)
        if held:
            message_id = data.draw(st.sampled_from(held))
            self.moves.ack(KEYS.inflight(owner), [self.item[message_id]])
            self.place[message_id] = "delivered"

    @precondition(lambda self: any(p.startswith("inflight:") for p in self.place.values()))
    @rule(owner=st.sampled_from(OWNERS), due=st.booleans(), data=st.data())
    def retry(self, owner: str, due: bool, data: st.DataObject) -> None:
        held = self._held(owner)
        if held:
            message_id = data.draw(st.sampled_from(held))
            item = self.item[message_id]
            assert self.moves.schedule(KEYS.inflight(owner), item, item, 0 if due else FOREVER_MS)
            self.place[message_id] = "schedule"

    @precondition(lambda self: "schedule" in self.place.values())
    @rule()
    def move_due(self) -> None:
        # Only retries scheduled with no delay are due: the others wait FOREVER_MS.
        due = [i for i, p in self.place.items() if p == "schedule" and self.client.zscore(KEYS.schedule, self.item[i]) is not None]
        moved = self.moves.move_due(1000)
        now_due = [i for i in due if self.client.zscore(KEYS.schedule, self.item[i]) is None]
        assert moved == len(now_due)
        for message_id in now_due:
            self.place[message_id] = self._lane(message_id)

    @precondition(lambda self: any(p.startswith("inflight:") for p in self.place.values()))
    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def dead_letter(self, owner: str, data: st.DataObject) -> None:
        held = self._held(owner)
        if held:
            message_id = data.draw(st.sampled_from(held))
            row = json.dumps({"id": message_id, "reason": "rejected", "envelope": None, "raw": self.item[message_id].decode()})
            added, _, _ = self.moves.dead_letter(message_id, row, 1.0, (KEYS.inflight(owner), self.item[message_id]), RETENTION)
            assert added == 1
            self.place[message_id] = "dlq"

    @precondition(lambda self: any(p.startswith("inflight:") for p in self.place.values()))
    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def give_back(self, owner: str, data: st.DataObject) -> None:
        held = self._held(owner)
        if held:
            message_id = data.draw(st.sampled_from(held))
            assert self.moves.give_back(KEYS.inflight(owner), self.item[message_id])
            self.place[message_id] = self._lane(message_id)

    @rule(owner=st.sampled_from(OWNERS))
    def give_back_what_has_no_record(self, owner: str) -> None:
        # The housekeeper's scan of its own list (`give_back_lost`).
        for message_id in self._held(owner, known=False):
            assert self.moves.give_back(KEYS.inflight(owner), self.item[message_id])
            self.place[message_id] = self._lane(message_id)

    @rule(owner=st.sampled_from(OWNERS))
    def die_and_be_reclaimed(self, owner: str) -> None:
        self.client.delete(KEYS.alive(owner))
        held = [i for i, p in self.place.items() if p == f"inflight:{owner}"]
        assert self.moves.reclaim(owner) == len(held)
        for message_id in held:
            self.place[message_id] = self._lane(message_id)
        # Its records are lost (`InFlight.taken_for_dead`); it comes back as a new member.
        self.known[owner] = set()
        self._beat(owner)

    @rule(owner=st.sampled_from(OWNERS))
    def a_live_owner_is_not_reclaimed(self, owner: str) -> None:
        assert self.moves.reclaim(owner) == -1

    @precondition(lambda self: "dlq" in self.place.values())
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        dead = [i for i, p in self.place.items() if p == "dlq"]
        if dead:
            message_id = data.draw(st.sampled_from(dead))
            assert self.moves.replay(message_id, self.item[message_id]) == 1
            self.place[message_id] = self._lane(message_id)

    @precondition(lambda self: "dlq" in self.place.values())
    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        dead = [i for i, p in self.place.items() if p == "dlq"]
        if dead:
            message_id = data.draw(st.sampled_from(dead))
            assert self.moves.purge([message_id]) == 1
            self.place[message_id] = "purged"

    # --- writes Redis refuses ---------------------------------------------------------

    @rule(which=st.sampled_from(["interactive", "bulk"]), data=st.data())
    def a_lane_of_the_wrong_type_refuses_moves_onto_it(self, which: str, data: st.DataObject) -> None:
        lane = KEYS.bulk if which == "bulk" else KEYS.interactive
        parked = f"{lane}:parked"
        if self.client.exists(lane):
            self.client.rename(lane, parked)
        self.client.set(lane, "not a list")
        try:
            onto = [i for i, p in self.place.items() if p.startswith("inflight:") and self._lane(i) == which]
            if onto:
                message_id = data.draw(st.sampled_from(onto))
                owner = self.place[message_id].removeprefix("inflight:")
                with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                    self.moves.give_back(KEYS.inflight(owner), self.item[message_id])
            with pytest.raises(QueueUnavailable, match="WRONGTYPE"):
                self.producer.send_many([INVITATION if which == "bulk" else SIGN_IN], bulk=which == "bulk")
        finally:
            self.client.delete(lane)
            if self.client.exists(parked):
                self.client.rename(parked, lane)

    @rule(owner=st.sampled_from(OWNERS), data=st.data())
    def a_full_redis_refuses_every_move_and_moves_nothing(self, owner: str, data: st.DataObject) -> None:
        held = self._held(owner)
        self.client.config_set("maxmemory", 1)
        try:
            with pytest.raises(QueueUnavailable, match="full"):
                self.producer.send(SIGN_IN)
            if held:
                message_id = data.draw(st.sampled_from(held))
                item = self.item[message_id]
                move = data.draw(st.sampled_from(["give_back", "schedule", "dead_letter"]))
                with pytest.raises(redis.exceptions.OutOfMemoryError):
                    if move == "give_back":
                        self.moves.give_back(KEYS.inflight(owner), item)
                    elif move == "schedule":
                        self.moves.schedule(KEYS.inflight(owner), item, item, 0)
                    else:
                        self.moves.dead_letter(message_id, "{}", 1.0, (KEYS.inflight(owner), item), RETENTION)
        finally:
            self.client.config_set("maxmemory", 0)

    # --- the invariant ----------------------------------------------------------------

    @invariant()
    def each_email_is_exactly_where_the_model_says(self) -> None:
        found: dict[str, list[str]] = {}
        for place, items in [
            ("interactive", self.client.lrange(KEYS.interactive, 0, -1)),
            ("bulk", self.client.lrange(KEYS.bulk, 0, -1)),
            ("schedule", self.client.zrange(KEYS.schedule, 0, -1)),
            *[(f"inflight:{o}", self.client.lrange(KEYS.inflight(o), 0, -1)) for o in OWNERS],
        ]:
            for item in cast(list[bytes], items):
                found.setdefault(_id(item), []).append(place)
        for raw in cast(list[bytes], self.client.zrange(KEYS.dlq_index, 0, -1)):
            found.setdefault(raw.decode(), []).append("dlq")
        expected = {i: [p] for i, p in self.place.items() if p not in ("delivered", "purged")}
        assert found == expected
        assert census.audit(self.client, KEYS).ok  # `emailq status --check`


@pytest.fixture
def places(redis_server: RedisServer, settings_env: dict[str, str], request: pytest.FixtureRequest) -> Iterator[type[Places]]:
    client = redis_server.client()
    producer = Producer(settings_from(settings_env))
    Places.client, Places.producer = client, producer
    Places.TestCase.settings = settings(
        max_examples=request.config.getoption("--model-examples"),
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    yield Places
    client.config_set("maxmemory", 0)
    client.flushall()
    producer.close()
    client.close()


def test_every_move_keeps_each_email_in_exactly_one_place(places: Any) -> None:
    places.TestCase().runTest()
