"""The Python API a web app uses: `Producer.send` / `send_many`, against a real Redis."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

import emailq
from busy_redis import busy
from conftest import free_port, settings_from, wait_for
from emailq.store.scripts import script

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456", "locale": "en"}}


@pytest.fixture
def settings_env(redis_server, tmp_path) -> dict[str, str]:
    """The producer needs only Redis (conftest's version also starts an HTTP endpoint,
    whose shutdown costs half a second per test)."""
    return {"EMAILQ_REDIS_URL": redis_server.url, "EMAILQ_DATA_DIR": str(tmp_path / "data")}


def decode(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kombu message, the envelope it carries) from one item of the queue's list."""
    message = json.loads(raw)
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    assert kwargs == {}
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    [envelope] = args
    return message, envelope


def queued(redis_client, queue: str = "emailq") -> list[dict[str, Any]]:
    """The envelopes on the queue, in the order a worker takes them (RPOP)."""
    envelopes = []
    while (raw := redis_client.rpop(queue)) is not None:
        envelopes.append(decode(raw)[1])
    return envelopes


def email(n: int) -> dict[str, Any]:
    return {"to": f"user{n}@example.com", "type": "SignIn", "payload": {"code": f"{n:06d}"}}


# --- sending ------------------------------------------------------------------------


def test_send_returns_an_id_and_puts_one_celery_message_on_the_queue(producer, redis_client):
    before = time.time()
    message_id = producer.send(SIGN_IN)

    assert isinstance(message_id, str) and message_id
    assert redis_client.llen("emailq") == 1
    message, envelope = decode(redis_client.lindex("emailq", 0))
    assert message["headers"]["task"] == "emailq.deliver"
    assert message["headers"]["id"] == message_id
    assert message["properties"]["body_encoding"] == "base64"
    assert message["content-type"] == "application/json"
    assert envelope["message"] == SIGN_IN
    assert envelope["id"] == message_id
    assert before <= envelope["created_at"] <= time.time()
    ttl = producer.settings.message_ttl_seconds
    assert envelope["expires_at"] == pytest.approx(envelope["created_at"] + ttl)


def test_send_keeps_ip_when_given(producer, redis_client):
    producer.send({**SIGN_IN, "ip": "203.0.113.9"})
    [envelope] = queued(redis_client)
    assert envelope["message"] == {**SIGN_IN, "ip": "203.0.113.9"}


def test_each_send_gets_a_distinct_id(producer, redis_client):
    ids = {producer.send(SIGN_IN) for _ in range(20)}
    assert len(ids) == 20


def test_send_many_of_500_is_one_script(producer, redis_client):
    producer.send_many([email(n) for n in range(2)])  # the connection open, the script cached
    redis_client.config_resetstat()

    ids = producer.send_many([email(n) for n in range(500)])

    stats = redis_client.info("commandstats")
    commands = {name.removeprefix("cmdstat_"): s["calls"] for name, s in stats.items()}
    commands.pop("info", None)  # our own questions
    commands.pop("config|resetstat", None)
    # One script (`enqueue_many.lua`), by its SHA: the 500 onto their lane, then the
    # trace's index entries in one push, and the wake-up tokens in one; the commands it
    # ran count as calls.
    assert commands["evalsha"] == 1
    assert "eval" not in commands and "multi" not in commands
    assert commands["lpush"] == 500 + 1 + 1
    assert len(ids) == 500 and len(set(ids)) == 500
    assert redis_client.llen("emailq") == 502


def test_a_redis_that_lost_its_scripts_gets_each_email_once(producer, redis_client):
    """Producers send a script's SHA, not its text; a restarted or failed-over Redis has
    no script cache and answers NOSCRIPT having run nothing: the producer then sends the
    script itself, once."""
    redis_client.config_resetstat()
    sends = [lambda: producer.send(email(0)), lambda: producer.send_many([email(1), email(2)]), lambda: producer.send_once(email(3), "key-3")]
    for send in sends:
        redis_client.script_flush()
        send()

    assert redis_client.info("errorstats")["errorstat_NOSCRIPT"]["count"] == 3
    assert [e["message"]["to"] for e in queued(redis_client)] == [f"user{n}@example.com" for n in range(4)]
    assert redis_client.llen("emailq:trace:index") == 4


def test_a_batch_of_both_lanes_keeps_each_lanes_order_and_traces_each_email(producer, redis_client):
    emails = [{**email(n), "type": "Generic" if n % 3 == 0 else "SignIn"} for n in range(30)]
    ids = producer.send_many(emails)

    interactive, bulk = queued(redis_client), queued(redis_client, "emailq:bulk")
    assert [e["id"] for e in interactive] == [i for i, e in zip(ids, emails) if e["type"] == "SignIn"]
    assert [e["id"] for e in bulk] == [i for i, e in zip(ids, emails) if e["type"] == "Generic"]
    index = {entry.decode().split()[0] for entry in redis_client.lrange("emailq:trace:index", 0, -1)}
    assert index == set(ids)
    for e in interactive + bulk:
        lane = "bulk" if e["message"]["type"] == "Generic" else "interactive"
        assert redis_client.get(f"emailq:trace:{e['id']}").decode().split()[1:] == ["queued", lane]


def test_send_many_is_consumed_in_input_order(producer, redis_client):
    emails = [email(n) for n in range(500)]
    ids = producer.send_many(emails)

    envelopes = queued(redis_client)
    assert [e["id"] for e in envelopes] == ids
    assert [e["message"] for e in envelopes] == emails


def test_a_batch_with_one_bad_item_names_the_index_and_field_and_enqueues_nothing(producer, redis_client):
    emails = [email(n) for n in range(10)]
    emails[7] = {**emails[7], "to": "not-an-address"}

    with pytest.raises(emailq.InvalidMessage) as raised:
        producer.send_many(emails)

    assert "item 7" in str(raised.value)
    assert "to" in str(raised.value)
    assert [p for p in raised.value.problems if "item 7" in p]
    assert not [p for p in raised.value.problems if "item 6" in p or "item 8" in p]
    assert redis_client.llen("emailq") == 0


def test_a_batch_with_several_bad_items_names_each(producer, redis_client):
    emails = [email(n) for n in range(5)]
    emails[1] = {**emails[1], "type": "NoSuchType"}
    emails[3] = {**emails[3], "payload": "not an object"}

    with pytest.raises(emailq.InvalidMessage) as raised:
        producer.send_many(emails)

    text = str(raised.value)
    assert "item 1" in text and "type" in text
    assert "item 3" in text and "payload" in text
    assert redis_client.llen("emailq") == 0


# --- the message contract -----------------------------------------------------------


def test_unknown_type_is_rejected_by_default(producer, redis_client):
    with pytest.raises(emailq.InvalidMessage, match="type"):
        producer.send({**SIGN_IN, "type": "Newsletter"})
    assert redis_client.llen("emailq") == 0


def test_unknown_type_is_accepted_when_any_type_is_allowed(settings_env, redis_client):
    lenient = emailq.Producer(settings_from({**settings_env, "EMAILQ_ALLOW_ANY_TYPE": "true"}))
    try:
        lenient.send({**SIGN_IN, "type": "Newsletter"})
    finally:
        lenient.close()
    [envelope] = queued(redis_client)
    assert envelope["message"]["type"] == "Newsletter"


def test_every_logto_template_type_is_accepted(producer, redis_client):
    producer.send_many([{**SIGN_IN, "type": t} for t in sorted(emailq.TEMPLATE_TYPES)])
    interactive, bulk = queued(redis_client), queued(redis_client, "emailq:bulk")
    assert {e["message"]["type"] for e in interactive + bulk} == set(emailq.TEMPLATE_TYPES)
    # Invitations and generic mail wait behind one-time codes, and live longer.
    assert {e["message"]["type"] for e in bulk} == {"OrganizationInvitation", "Generic"}
    assert all(e["expires_at"] - e["created_at"] == pytest.approx(21600) for e in bulk)
    assert len(emailq.TEMPLATE_TYPES) == 9


@pytest.mark.parametrize("payload", [[], "code=1", 7, None, ["code", "1"]])
def test_payload_must_be_an_object(producer, redis_client, payload):
    with pytest.raises(emailq.InvalidMessage, match="payload"):
        producer.send({**SIGN_IN, "payload": payload})
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize("key", ["code", "link", "locale", "uiLocales"])
@pytest.mark.parametrize("value", [123456, None, ["a"], {"a": 1}, True])
def test_known_payload_keys_must_be_strings(producer, redis_client, key, value):
    with pytest.raises(emailq.InvalidMessage) as raised:
        producer.send({**SIGN_IN, "payload": {key: value}})
    assert key in str(raised.value)
    assert redis_client.llen("emailq") == 0


def test_other_payload_keys_pass_through_untouched(producer, redis_client):
    payload = {
        "code": "123456",
        "link": "https://example.com/verify?t=1",
        "locale": "de",
        "uiLocales": "de en",
        "count": 3,
        "ratio": 0.5,
        "flag": False,
        "nothing": None,
        "nested": {"list": [1, "two", {"three": 3}], "empty": {}},
        "ünïcode": "✉️ ok",
    }
    producer.send({**SIGN_IN, "payload": payload})
    [envelope] = queued(redis_client)
    assert envelope["message"]["payload"] == payload


@pytest.mark.parametrize(
    "to",
    [
        "foo@logto.io\r\nBcc: victim@example.com",
        "foo@logto.io\nBcc: victim@example.com",
        "foo@logto.io\r",
        "foo@logto.io\n",
        "foo@logto.io, bar@logto.io",
        "not-an-address",
        "",
    ],
)
def test_to_must_be_one_clean_address(producer, redis_client, to):
    with pytest.raises(emailq.InvalidMessage, match="to"):
        producer.send({**SIGN_IN, "to": to})
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize(
    "missing_or_extra",
    [
        {"to": "foo@logto.io", "type": "SignIn"},
        {"type": "SignIn", "payload": {}},
        {"to": "foo@logto.io", "payload": {}},
        {**SIGN_IN, "bcc": "victim@example.com"},
    ],
)
def test_missing_or_unknown_top_level_fields_are_rejected(producer, redis_client, missing_or_extra):
    with pytest.raises(emailq.InvalidMessage):
        producer.send(missing_or_extra)
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize("not_an_object", [[SIGN_IN], "SignIn", None, 3])
def test_an_email_must_be_an_object(producer, redis_client, not_an_object):
    with pytest.raises(emailq.InvalidMessage):
        producer.send(not_an_object)
    assert redis_client.llen("emailq") == 0


def test_oversized_message_is_rejected(settings_env, redis_client):
    small = emailq.Producer(settings_from({**settings_env, "EMAILQ_MAX_MESSAGE_BYTES": "1024"}))
    try:
        small.send({**SIGN_IN, "payload": {"note": "x" * 900}})  # fits
        with pytest.raises(emailq.InvalidMessage, match="EMAILQ_MAX_MESSAGE_BYTES"):
            small.send({**SIGN_IN, "payload": {"note": "x" * 1100}})
    finally:
        small.close()
    assert redis_client.llen("emailq") == 1


def test_email_model_instances_are_accepted(producer, redis_client):
    message_id = producer.send(emailq.Email(**SIGN_IN))
    [envelope] = queued(redis_client)
    assert envelope["id"] == message_id and envelope["message"] == SIGN_IN


# --- Redis unreachable --------------------------------------------------------------


def unreachable(settings_env: dict[str, str], url: str) -> emailq.Producer:
    return emailq.Producer(settings_from({**settings_env, "EMAILQ_REDIS_URL": url, "EMAILQ_REDIS_TIMEOUT": "0.3"}))


def assert_fails_fast(p: emailq.Producer) -> None:
    started = time.monotonic()
    with pytest.raises(emailq.QueueUnavailable):
        p.send(SIGN_IN)
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    with pytest.raises(emailq.QueueUnavailable):
        p.send_many([email(n) for n in range(3)])
    assert time.monotonic() - started < 1.0


def test_closed_port_raises_queue_unavailable_fast(settings_env):
    p = unreachable(settings_env, f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert_fails_fast(p)
        assert p.ping() is False
    finally:
        p.close()


def test_silent_server_raises_queue_unavailable_fast(settings_env):
    # A socket that accepts connections (the kernel completes the handshake) but never
    # reads or answers: the producer must give up after its timeout, not hang.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        p = unreachable(settings_env, f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        try:
            assert_fails_fast(p)
        finally:
            p.close()


def test_invalid_email_is_reported_before_redis_is_needed(settings_env):
    p = unreachable(settings_env, f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(emailq.InvalidMessage):
            p.send({**SIGN_IN, "to": "nobody"})
    finally:
        p.close()


def test_queue_unavailable_is_an_emailq_error():
    assert issubclass(emailq.QueueUnavailable, emailq.EmailqError)
    assert issubclass(emailq.InvalidMessage, emailq.EmailqError)


# --- honest answers: did the write land? ---------------------------------------------


def test_a_refused_connection_says_nothing_was_enqueued(settings_env):
    p = unreachable(settings_env, f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(emailq.QueueUnavailable) as raised:
            p.send(SIGN_IN)
    finally:
        p.close()
    assert raised.value.maybe_enqueued is False
    assert "nothing was enqueued" in str(raised.value)


@pytest.mark.parametrize("count", [1, 3, 1500])  # 1500: over one LPUSH, a MULTI
def test_a_timeout_after_sending_says_the_emails_may_have_been_enqueued(settings_env, redis_server, redis_client, count):
    p = unreachable(settings_env, redis_server.url)
    try:
        assert p.ping()  # connected: the next write is sent, and its answer is what is lost
        for name in ("enqueue", "enqueue_many"):  # cached, as on a Redis that took emails before
            redis_client.script_load(script(name).source)
        with busy(redis_server.url, 1.5):
            started = time.monotonic()
            with pytest.raises(emailq.QueueUnavailable) as raised:
                p.send_many([email(n) for n in range(count)])
            assert time.monotonic() - started < 1.0
    finally:
        p.close()
    error = raised.value
    assert error.maybe_enqueued is True
    assert "may have been enqueued" in str(error) and "nothing was enqueued" not in str(error)
    assert len(error.ids) == count
    if count == 1:
        assert error.ids[0] in str(error)
    if count > 1000:
        # Redis reads a large batch in parts and drops the rest when it finds the
        # producer gone: then none of it lands. All or none, still.
        time.sleep(0.5)
        assert redis_client.llen("emailq") in (0, count)
        return
    # It was not a lie to say "may": once Redis is free again, the write it had runs.
    wait_for(lambda: redis_client.llen("emailq") == count, 5, "the write sent before the timeout to land")
    assert [e["id"] for e in queued(redis_client)] == error.ids


def test_a_large_batch_is_given_time_for_its_size(producer, redis_server, redis_client):
    """A batch's write and answer are given EMAILQ_REDIS_TIMEOUT (0.5 s) plus 0.1 ms an
    email: a Redis busy for 1.5 s that then takes 20,000 emails has answered in time. The
    write itself waits: 25 MB is more than the sockets' buffers hold."""
    emails = [email(n) for n in range(20000)]
    assert producer.ping()
    with busy(redis_server.url, 1.5):
        started = time.monotonic()
        ids = producer.send_many(emails)
        assert time.monotonic() - started > 0.5
    assert redis_client.llen("emailq") == len(ids) == 20000


def test_a_full_redis_refuses_and_says_nothing_was_enqueued(producer, redis_client):
    redis_client.set("filler", b"x" * (2 << 20))
    redis_client.config_set("maxmemory", "1mb")
    try:
        for attempt in (lambda: producer.send(SIGN_IN), lambda: producer.send_many([SIGN_IN] * 1500), lambda: producer.send_once(SIGN_IN, "key-1")):
            with pytest.raises(emailq.QueueUnavailable) as raised:
                attempt()
            assert raised.value.maybe_enqueued is False
            assert "Redis is full" in str(raised.value) and "nothing was enqueued" in str(raised.value)
    finally:
        redis_client.config_set("maxmemory", "0")
    assert redis_client.llen("emailq") == 0
    assert redis_client.keys("emailq:idem:*") == []
    assert producer.send(SIGN_IN)  # the same producer carries on once there is room


def test_a_queue_key_of_another_type_is_refused_in_one_line(producer, redis_client):
    redis_client.set("emailq", "not a list")
    for attempt in (lambda: producer.send(SIGN_IN), lambda: producer.send_many([SIGN_IN] * 1500), lambda: producer.send_once(SIGN_IN, "key-1")):
        with pytest.raises(emailq.QueueUnavailable, match="WRONGTYPE") as raised:
            attempt()
        assert raised.value.maybe_enqueued is False
    assert redis_client.keys("emailq:idem:*") == []  # no key left without its email


# --- at most once per idempotency key ------------------------------------------------


def test_send_once_enqueues_a_key_once_and_answers_the_first_id(producer, redis_client):
    first, enqueued = producer.send_once(SIGN_IN, "order-42-signin")
    assert enqueued is True
    # The same email, its keys in another order: a repeat, not a new email.
    again = {"payload": {"locale": "en", "code": "123456"}, "type": "SignIn", "to": "foo@logto.io"}
    assert producer.send_once(again, "order-42-signin") == (first, False)
    assert [e["id"] for e in queued(redis_client)] == [first]

    second, enqueued = producer.send_once(SIGN_IN, "order-43-signin")
    assert enqueued is True and second != first


def test_send_once_with_a_key_used_for_another_email_is_a_conflict(producer, redis_client):
    from emailq.errors import IdempotencyConflict

    producer.send_once(SIGN_IN, "k")
    with pytest.raises(IdempotencyConflict):
        producer.send_once({**SIGN_IN, "payload": {"code": "654321"}}, "k")
    assert redis_client.llen("emailq") == 1
    assert isinstance(IdempotencyConflict("x"), emailq.EmailqError)


def test_an_idempotency_key_lasts_as_long_as_the_message_ttl(settings_env, redis_client):
    import hashlib

    p = emailq.Producer(settings_from({**settings_env, "EMAILQ_MESSAGE_TTL_SECONDS": "0.5"}))
    try:
        first, _ = p.send_once(SIGN_IN, "short-lived")
        name = "emailq:idem:" + hashlib.sha256(b"short-lived").hexdigest()
        assert 0 < redis_client.pttl(name) <= 500
        assert redis_client.get(name).decode().endswith(" " + first)
        time.sleep(0.6)
        second, enqueued = p.send_once(SIGN_IN, "short-lived")
    finally:
        p.close()
    assert enqueued is True and second != first
    assert redis_client.llen("emailq") == 2


def test_send_once_checks_the_email_before_redis(settings_env):
    p = unreachable(settings_env, f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(emailq.InvalidMessage):
            p.send_once({**SIGN_IN, "to": "nobody"}, "k")
    finally:
        p.close()


# --- the web app's import -----------------------------------------------------------


def test_importing_producer_does_not_import_worker_or_celery():
    code = (
        "import sys, producer\n"
        "from emailq import Producer, send_email, send_many, Email\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('worker', 'celery', 'kombu'))\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
