"""Property-based tests of the message contract and the JSONL reader: any input gets an
email or a clear InvalidMessage, never another exception."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from emailq.errors import InvalidMessage
from emailq.jsonl import read_emails
from emailq.message import TEMPLATE_TYPES, parse_email

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
addresses = st.emails()
payloads = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("code", "link", "locale", "uiLocales")),
    json_values,
    max_size=5,
).flatmap(
    lambda extra: st.fixed_dictionaries({}, optional={"code": st.text(max_size=12), "link": st.text(max_size=40), "locale": st.text(max_size=5)}).map(
        lambda known: {**extra, **known}
    )
)
valid_messages = st.fixed_dictionaries({"to": addresses, "type": st.sampled_from(sorted(TEMPLATE_TYPES)), "payload": payloads})


@given(json_values)
def test_any_json_is_an_email_or_a_clear_error(value):
    try:
        email = parse_email(value)
    except InvalidMessage as error:
        assert error.problems and all(problem.strip() for problem in error.problems)
    else:
        assert email.to and email.type in TEMPLATE_TYPES


@given(st.dictionaries(st.sampled_from(["to", "type", "payload", "ip", "extra"]), json_values))
def test_any_shaped_object_is_an_email_or_a_clear_error(value):
    try:
        parse_email(value, allow_any_type=True)
    except InvalidMessage as error:
        assert error.problems


@given(valid_messages)
def test_valid_messages_pass_through_untouched(message):
    assert parse_email(message).body() == message


@given(valid_messages, st.sampled_from(["\r\n", "\n", "\r", ","]), addresses)
def test_header_injection_in_to_is_always_refused(message, separator, other):
    injected = {**message, "to": f"{message['to']}{separator}Bcc: {other}"}
    try:
        parse_email(injected)
    except InvalidMessage as error:
        assert any(problem.startswith("to:") for problem in error.problems)
    else:
        raise AssertionError(f"accepted {injected['to']!r}")


@settings(max_examples=200)
@given(st.lists(st.one_of(st.binary(max_size=60), valid_messages.map(lambda m: json.dumps(m).encode())), max_size=12))
def test_jsonl_reader_accounts_for_every_line(lines):
    emails, problems = read_emails(lines, parse_email)
    bad_lines = {int(problem.split(":")[0].removeprefix("line ")) for problem in problems}
    blank = {n for n, line in enumerate(lines, 1) if not line.decode("utf-8", "replace").strip()}
    assert len(emails) + len(bad_lines) + len(blank - bad_lines) == len(lines)
    assert bad_lines <= set(range(1, len(lines) + 1))
