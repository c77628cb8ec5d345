"""The DLQ's reason and type indexes stay exactly the entries there are, through every
move (add, overwrite, retention, replay, purge) and after a one-time build of a DLQ that
was written before them; against a real Redis."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

from helpers import DLQ_REASONS, DLQ_TYPES, KEYS, fill_dead_letters

from emailq.message import Email, Envelope
from emailq.worker.places.dead_letter_index import DeadLetterIndex, Lease
from emailq.worker.places.dead_letters import DeadLetter, DeadLetters


def truth(client) -> tuple[dict[str, set[str]], dict[str | None, set[str]]]:
    """Ids per reason and per type, read from the entries themselves."""
    reasons: dict[str, set[str]] = {}
    types: dict[str | None, set[str]] = {}
    for raw in client.hvals(KEYS.dlq):
        entry = DeadLetter(**json.loads(raw))
        reasons.setdefault(entry.reason, set()).add(entry.id)
        types.setdefault(entry.type, set()).add(entry.id)
    return reasons, types


def assert_indexes_match(client) -> None:
    reasons, types = truth(client)
    index = DeadLetterIndex(client, KEYS)
    assert index.counts() == ({r: len(i) for r, i in reasons.items()}, {t: len(i) for t, i in types.items()})
    for reason in DLQ_REASONS:
        assert {m.decode() for m in client.zrange(KEYS.dlq_by_reason(reason), 0, -1)} == reasons.get(reason, set())
    for type_ in (*DLQ_TYPES, None):
        assert {m.decode() for m in client.zrange(KEYS.dlq_by_type(type_), 0, -1)} == types.get(type_, set())


def entry(i: int, reason: str, type_: str | None) -> DeadLetter:
    if type_ is None:
        return DeadLetter(id=f"m{i}", reason="malformed", raw="not json", failed_at=1000.0 + i)
    envelope = Envelope.wrap(Email(to=f"u{i}@example.com", type=type_, payload={"code": "1"}), 900, id=f"m{i}").dump()
    return DeadLetter(id=f"m{i}", reason=reason, status=422, envelope=envelope, failed_at=1000.0 + i)


def test_every_move_keeps_the_indexes_exact(redis_client):
    store = DeadLetters(redis_client, KEYS, max_entries=8, max_age_seconds=0)
    for i in range(12):  # retention drops the 4 oldest
        store.add(entry(i, DLQ_REASONS[i % 3], DLQ_TYPES[i % 2] if i % 5 else None))
    assert store.count() == 8
    assert_indexes_match(redis_client)
    store.add(entry(11, "expired", "Generic"))  # the same id again, another reason and type
    assert_indexes_match(redis_client)
    replayed, skipped = store.replay(["m6", "m7", "m10"], 900)
    assert (replayed, skipped) == (2, ["m10"])  # m10 has no decodable message
    assert_indexes_match(redis_client)
    assert store.purge(["m8", "m10", "gone"]) == 2
    assert_indexes_match(redis_client)
    store.purge_all()
    assert_indexes_match(redis_client)
    assert redis_client.hlen(KEYS.dlq_counts) == 0


def test_a_dlq_from_before_the_indexes_is_indexed_once(redis_client):
    fill_dead_letters(redis_client, 2000)
    index = DeadLetterIndex(redis_client, KEYS)
    assert not index.ready() and index.counts() == ({}, {})
    store = DeadLetters(redis_client, KEYS, max_entries=0)
    store.purge(["dl-0000001"])  # moves before the build keep counts right
    assert index.build()
    assert index.ready() and not index.build()
    assert_indexes_match(redis_client)
    assert index.counts()[0] == dict(Counter(DLQ_REASONS[i % 5] for i in range(2000) if i != 1))


def test_a_build_waits_for_the_lease_another_process_holds(redis_client):
    fill_dead_letters(redis_client, 10)
    other = Lease(redis_client, KEYS.dlq_indexing)
    assert other.acquire("another Flower")
    index = DeadLetterIndex(redis_client, KEYS)
    assert not index.build() and not index.ready()
    assert other.holder() == "another Flower"
    other.release()
    assert index.build() and index.ready()
    assert_indexes_match(redis_client)


def test_an_entry_json_of_the_worker_is_what_the_index_reads(redis_client):
    store = DeadLetters(redis_client, KEYS, max_age_seconds=0)
    e = entry(1, "rejected", "SignIn")
    store.add(e)
    assert json.loads(redis_client.hget(KEYS.dlq, "m1")) == asdict(e)
    assert redis_client.zscore(KEYS.dlq_by_type("SignIn"), "m1") == e.failed_at


def test_the_query_pages_and_filters_as_reading_every_entry_would(redis_client):
    from emailq.worker.places.dead_letter_query import DeadLetterQuery, Filter

    start = 1_000_000.0
    ids = fill_dead_letters(redis_client, 1200, start=start)  # newest first, 1 ms apart
    query = DeadLetterQuery(redis_client, KEYS)
    everything = [DeadLetter(**json.loads(redis_client.hget(KEYS.dlq, i))) for i in ids]
    filters = [
        Filter(),
        Filter(reason="exhausted"),
        Filter(type="SignIn"),
        Filter(reason="rejected", type="Generic"),
        Filter(status=423),
        Filter(recipient="USER11"),
        Filter(since=start + 0.2, until=start + 0.7),
        Filter(reason="error", since=start + 0.5),
    ]
    for indexed in (False, True):
        if indexed:
            assert query.index.build()
        for flt in filters:
            expected = [e.id for e in everything if flt.matches(e)]
            assert query.count(flt) == len(expected), flt
            assert [i for chunk in query.id_chunks(flt) for i in chunk] == expected, flt
            shown, after = [], None
            while True:
                page, after = query.page(flt, after, limit=37)
                shown += [e.id for e in page]
                if after is None:
                    break
            assert shown == expected, flt


def test_indexes_out_of_step_after_an_older_writer_are_rebuilt(redis_client):
    store = DeadLetters(redis_client, KEYS, max_age_seconds=0)
    index = DeadLetterIndex(redis_client, KEYS)
    assert index.build()  # empty
    store.add(entry(1, "rejected", "SignIn"))
    fill_dead_letters(redis_client, 50)  # an emailq older than the indexes adds ...
    redis_client.hdel(KEYS.dlq, "m1")  # ... and purges, leaving the indexes behind
    redis_client.zrem(KEYS.dlq_index, "m1")
    reasons, _, total = index.counts_and_total()
    assert sum(reasons.values()) != total
    assert index.rebuild()
    reasons, _, total = index.counts_and_total()
    assert sum(reasons.values()) == total == 50
    assert_indexes_match(redis_client)
