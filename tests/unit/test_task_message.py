"""`task_message` writes, from its template, exactly what `json.dumps` writes of the
message as nested dicts (`_generic`), whatever the envelope holds."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from emailq.message import KNOWN_PAYLOAD_STRINGS, Email, Envelope, _plain_body, checked_body, fresh_envelope, new_id
from emailq.task_message import _generic, task_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)


# A payload's own keys: `code`, `link`, `locale` and `uiLocales` must hold strings, so
# they come with text values, any other key with any JSON value.
def payloads(values: st.SearchStrategy) -> st.SearchStrategy:
    other = st.dictionaries(st.text(max_size=8).filter(lambda key: key not in KNOWN_PAYLOAD_STRINGS), values, max_size=4)
    known = st.dictionaries(st.sampled_from(KNOWN_PAYLOAD_STRINGS), st.text(max_size=10), max_size=2)
    return st.builds(lambda a, b: {**a, **b}, other, known)


envelope_parts = st.tuples(
    st.emails(),
    payloads(json_values),
    st.none() | st.text(max_size=15),
    st.none() | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    st.floats(min_value=0.001, max_value=1e9),
    st.booleans(),
    st.lists(st.fixed_dictionaries({"at": st.floats(0, 2e9), "status": st.integers(100, 599)}), max_size=2),
)


@given(envelope_parts, st.sampled_from(["emailq", "emailq:bulk", 'pre"fix\\:emailq', "é:emailq"]))
def test_the_template_writes_what_json_dumps_writes(parts, queue):
    to, payload, ip, envelope_id, ttl, bulk, history = parts
    envelope = Envelope.wrap(Email(to=to, type="SignIn", payload=payload, ip=ip), ttl, id=envelope_id, bulk=bulk)
    envelope = envelope.model_copy(update={"attempts": len(history), "history": history})
    message = task_message(envelope, queue)
    tag = json.loads(message)["properties"]["delivery_tag"]
    assert message == json.dumps(_generic(envelope, queue, tag), separators=(",", ":"))


def test_ids_are_random_version_4_uuids_as_uuid_writes_them():
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


finite_or_not = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)


@given(
    st.emails(),
    payloads(finite_or_not),
    st.none() | st.text(max_size=15),
    st.floats(min_value=0.001, max_value=1e9),
    st.booleans(),
)
def test_a_fresh_envelope_is_written_as_its_model_dumps_it(to, payload, ip, ttl, bulk):
    data = {"to": to, "type": "SignIn", "payload": payload, **({} if ip is None else {"ip": ip})}
    body, body_json = checked_body(data, allow_any_type=False, max_bytes=10**9)
    email = Email.model_validate(data)
    assert body == email.body()
    envelope = Envelope.wrap(email, ttl, bulk=bulk)
    expected = json.dumps(envelope.dump(), separators=(",", ":"))
    if body_json is None:  # a NaN or an infinity (the dump writes null): the producer builds the Envelope
        with pytest.raises(ValueError):
            json.dumps(body, allow_nan=False)
        return
    assert fresh_envelope(body_json, envelope.id, envelope.created_at, envelope.expires_at, bulk) == expected


anything = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.lists(st.integers(), max_size=2)
fields = st.sampled_from(["to", "type", "payload", "ip", "other"])
email_like = st.dictionaries(
    fields,
    anything
    | st.emails()
    | st.sampled_from(["SignIn", "", "x" * 101, "a\nb"])
    | st.dictionaries(st.sampled_from(["code", "link", "bid"]) | st.integers(), anything, max_size=3),
    max_size=5,
)


@given(email_like | st.fixed_dictionaries({"to": st.emails(), "type": st.just("SignIn"), "payload": st.dictionaries(st.text(max_size=4), anything)}))
def test_the_model_free_check_accepts_only_what_the_model_accepts_and_reads_it_alike(data):
    plain = _plain_body(data)
    try:
        email = Email.model_validate(data)
    except ValidationError:
        assert plain is None
        return
    assert plain is None or plain == email.body()
