"""The dead letters page's bulk actions without the page: they touch what matched when they
started, one at a time, report progress in Redis, and a process that died shows as
interrupted; against a real Redis."""

from __future__ import annotations

import json

from conftest import settings_from, wait_for
from helpers import KEYS, fill_dead_letters

from emailq.worker.commands.bulk_actions import BulkActions, Busy
from emailq.worker.places.dead_letter_index import Lease
from emailq.worker.places.dead_letter_query import DeadLetterQuery, Filter
from emailq.worker.places.dead_letters import DeadLetters


def actions(redis_client, settings_env) -> BulkActions:
    store = DeadLetters(redis_client, KEYS, max_entries=0)
    return BulkActions(store, DeadLetterQuery(redis_client, KEYS), settings_from(settings_env))


def done(bulk: BulkActions) -> dict:
    wait_for(lambda: bulk.progress().get("state") in ("done", "failed"), 30, "the action")
    return bulk.progress()


def test_a_filtered_replay_touches_exactly_what_matched(redis_client, settings_env):
    ids = fill_dead_letters(redis_client, 1200)
    bulk = actions(redis_client, settings_env)
    bulk.start("replay", "ops", Filter(reason="expired"))
    shown = done(bulk)
    expired = [i for n, i in enumerate(reversed(ids)) if n % 5 == 2]
    assert (shown["state"], shown["operator"], shown["selected"], shown["moved"], shown["gone"]) == ("done", "ops", 240, 240, 0)
    queued = [json.loads(raw)["headers"]["id"] for key in (KEYS.interactive, KEYS.bulk) for raw in redis_client.lrange(key, 0, -1)]
    assert sorted(queued) == sorted(expired)
    # The progress says "done" first, then the action lets go (on a busy machine, a
    # moment later): the snapshot is dropped and the lease released.
    wait_for(lambda: not redis_client.exists(KEYS.dlq_action), 5, "the lease to be released")
    assert not redis_client.exists(KEYS.dlq_action_ids)
    assert 0 < redis_client.ttl(KEYS.dlq_action_progress) <= 24 * 3600


def test_a_selection_passes_over_what_is_gone(redis_client, settings_env):
    ids = fill_dead_letters(redis_client, 10)
    bulk = actions(redis_client, settings_env)
    bulk.start("purge", "alice", ids=[ids[0], ids[1], "not-there"])
    shown = done(bulk)
    assert (shown["selected"], shown["moved"], shown["gone"]) == (3, 2, 1)
    assert set(DeadLetters(redis_client, KEYS).ids()) == set(ids[2:])


def test_one_action_at_a_time(redis_client, settings_env):
    fill_dead_letters(redis_client, 10)
    other = Lease(redis_client, KEYS.dlq_action)
    assert other.acquire("bob's purge")
    bulk = actions(redis_client, settings_env)
    try:
        bulk.start("purge", "ops", Filter())
    except Busy as busy:
        assert "bob's purge" in str(busy)
    else:
        raise AssertionError("a second action started")
    assert redis_client.hlen(KEYS.dlq) == 10


def test_an_action_whose_process_died_shows_as_interrupted(redis_client, settings_env):
    redis_client.hset(KEYS.dlq_action_progress, mapping={"action": "replay", "operator": "ops", "state": "running", "selected": 9, "done": 4})
    assert actions(redis_client, settings_env).progress()["state"] == "interrupted"  # no lease: nobody runs it
