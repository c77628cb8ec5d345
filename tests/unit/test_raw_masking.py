"""What `emailq dlq show` prints of a malformed entry's raw text without --reveal."""

from __future__ import annotations

import base64
import json

import pytest

from emailq.worker.places.raw_masking import masked_raw


def test_json_values_under_code_and_link_are_masked_at_any_depth():
    raw = json.dumps({"a": [{"payload": {"code": "123456", "Link": "https://x/y", "locale": "en"}}]})
    assert json.loads(masked_raw(raw)) == {"a": [{"payload": {"code": "***", "Link": "***", "locale": "en"}}]}


def test_a_kombu_body_is_shown_decoded_and_masked():
    body = json.dumps([[{"id": "m1", "message": {"payload": {"code": "123456"}}}], {}, {}])
    raw = json.dumps({"body": base64.b64encode(body.encode()).decode(), "properties": {"body_encoding": "base64"}})
    shown = json.loads(masked_raw(raw))
    assert shown["body"] == [[{"id": "m1", "message": {"payload": {"code": "***"}}}], {}, {}]
    assert "decoded" in shown["properties"]["body_encoding"]


@pytest.mark.parametrize(
    "raw",
    [
        "{'message': {'payload': {'code': '123456'}}}",  # a Python repr, cut short or not
        '{"payload": {"code": "123456", "to": "a@b"',  # JSON cut short
        "code=123456&to=a",
        'otp "123456" sent',
        "see https://x/magic?t=123456",
    ],
)
def test_codes_in_text_that_is_no_json_are_masked(raw):
    assert "123456" not in masked_raw(raw)
    assert "***" in masked_raw(raw)


def test_what_is_no_secret_stays_readable():
    raw = '{"to": "a@b.co", "type": "SignIn", "created_at": 1700000000.5}'
    assert json.loads(masked_raw(raw)) == json.loads(raw)
