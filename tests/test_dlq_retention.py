"""The DLQ keeps addresses and codes (personal data), so it keeps them only so long and
so many: the oldest beyond the cap and everything past the age are dropped as entries are
added (a bounded number per add) or by `trim()`, each drop logged and counted."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict

import pytest

from helpers import KEYS

from emailq.settings import Settings
from emailq.worker.places import dead_letters as dl
from emailq.worker import metrics
from emailq.worker.places.dead_letters import DeadLetter, DeadLetters

DAY = 24 * 3600


def entry(n: int, failed_at: float) -> DeadLetter:
    envelope = {"id": f"e-{n:05d}", "message": {"to": f"user{n}@example.com", "type": "SignIn", "payload": {"code": "918273"}}}
    return DeadLetter(id=f"e-{n:05d}", reason="rejected", status=422, failed_at=failed_at, envelope=envelope)


def write(client, entries: list[DeadLetter]) -> None:
    """Straight into Redis, in the layout `DeadLetters.add` writes, with no retention."""
    client.hset("emailq:dlq", mapping={e.id: json.dumps(asdict(e)) for e in entries})
    client.zadd("emailq:dlq:index", {e.id: e.failed_at for e in entries})


def dropped(why: str) -> float:
    return metrics.REGISTRY.get_sample_value("emailq_dlq_dropped_total", {"why": why}) or 0.0


@pytest.fixture
def caplog_info(caplog):
    caplog.set_level(logging.INFO, logger="emailq.worker")
    return caplog


def test_the_defaults_are_the_settings_defaults():
    settings = Settings(_env_file=None)
    assert settings.dlq_max_entries == dl.DEFAULT_MAX_ENTRIES == 10_000
    assert settings.dlq_max_age_seconds == dl.DEFAULT_MAX_AGE_SECONDS == 7 * DAY


def test_adding_beyond_the_cap_drops_the_oldest(redis_client, caplog_info):
    store = DeadLetters(redis_client, KEYS, max_entries=5)
    now = time.time()
    before = dropped("count")

    for n in range(8):
        assert store.add(entry(n, now + n)) is True

    assert store.ids() == [f"e-{n:05d}" for n in (7, 6, 5, 4, 3)]
    assert redis_client.hlen("emailq:dlq") == 5
    assert dropped("count") - before == 3
    lines = [r.getMessage() for r in caplog_info.records if "retention" in r.getMessage()]
    assert len(lines) == 3
    assert "dropped 1 entry" in lines[0] and "5-entry cap" in lines[0]
    # One count per line; never who the email was for, nor its code.
    assert not any("@" in line or "918273" in line or "e-0000" in line for line in lines)


def test_entries_older_than_the_age_are_dropped_when_one_is_added(redis_client, caplog_info):
    now = time.time()
    write(redis_client, [entry(n, now - 8 * DAY + n) for n in range(3)] + [entry(3, now - 6 * DAY)])
    store = DeadLetters(redis_client, KEYS)  # the defaults: 7 days, 10,000
    before = dropped("age")

    store.add(entry(4, now))

    assert store.ids() == ["e-00004", "e-00003"]
    assert sorted(redis_client.hkeys("emailq:dlq")) == [b"e-00003", b"e-00004"]
    assert dropped("age") - before == 3
    [line] = [r.getMessage() for r in caplog_info.records if "retention" in r.getMessage()]
    assert "dropped 3 entries" in line and "3 older than 604800s" in line


def test_a_backlog_is_trimmed_a_bounded_amount_per_add_and_wholly_by_trim(redis_client):
    now = time.time()
    write(redis_client, [entry(n, now - 3600 + n * 0.001) for n in range(2000)])
    store = DeadLetters(redis_client, KEYS, max_entries=100)
    before = dropped("count")

    store.add(entry(9999, now))
    assert store.count() == 2001 - dl.TRIM_PER_ADD  # one add does not block Redis for long

    result = store.trim()

    assert (result.by_count, result.by_age) == (2001 - dl.TRIM_PER_ADD - 100, 0)
    assert store.count() == redis_client.hlen("emailq:dlq") == 100
    assert store.ids()[0] == "e-09999" and store.ids()[-1] == "e-01901"  # the newest kept
    assert dropped("count") - before == 1901
    assert store.trim().total == 0


def test_trim_drops_by_age_and_by_count_together(redis_client):
    now = time.time()
    write(redis_client, [entry(n, now - 2 * DAY + n) for n in range(700)] + [entry(1000 + n, now - n) for n in range(30)])
    store = DeadLetters(redis_client, KEYS, max_entries=10, max_age_seconds=DAY)

    result = store.trim()

    assert (result.by_age, result.by_count) == (700, 20)
    assert store.ids() == [f"e-{1000 + n:05d}" for n in range(10)]


def test_zero_turns_either_limit_off(redis_client):
    now = time.time()
    write(redis_client, [entry(n, now - 365 * DAY + n) for n in range(50)])
    store = DeadLetters(redis_client, KEYS, max_entries=0, max_age_seconds=0)

    store.add(entry(50, now))

    assert store.count() == 51
    assert store.trim().total == 0


def test_an_add_that_finds_its_email_gone_moves_and_drops_nothing(redis_client):
    now = time.time()
    write(redis_client, [entry(n, now - 8 * DAY) for n in range(3)])
    redis_client.rpush("emailq:inflight:w1", b"another email")
    store = DeadLetters(redis_client, KEYS)

    assert store.add(entry(3, now), taken_from=("emailq:inflight:w1", b"the email")) is False

    assert store.count() == 3
    assert redis_client.lrange("emailq:inflight:w1", 0, -1) == [b"another email"]


def test_an_add_moves_the_email_out_of_the_in_flight_list_and_trims_in_one_step(redis_client):
    now = time.time()
    write(redis_client, [entry(n, now - n) for n in range(3)])
    redis_client.rpush("emailq:inflight:w1", b"the email")
    store = DeadLetters(redis_client, KEYS, max_entries=2)

    assert store.add(entry(3, now + 1), taken_from=("emailq:inflight:w1", b"the email")) is True

    assert store.ids() == ["e-00003", "e-00000"]
    assert redis_client.llen("emailq:inflight:w1") == 0
