"""Standard Webhooks signatures, checked in process by the reference verifier
(`standardwebhooks`), as an endpoint checks them."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from emailq.worker.delivery.signing import decode_secrets, signature_headers

OLD_KEY, NEW_KEY = b"old-key-old-key-old-key-32-bytes", b"new-key-new-key-new-key-32-bytes"
OLD = "whsec_" + base64.b64encode(OLD_KEY).decode()
NEW = "whsec_" + base64.b64encode(NEW_KEY).decode()
EMAIL = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}
BODY = json.dumps(EMAIL, separators=(",", ":")).encode()


def signed(secret: str, message_id: str = "msg-1", timestamp: int | None = None) -> dict[str, str]:
    when = int(time.time()) if timestamp is None else timestamp
    return signature_headers(decode_secrets(secret), message_id, when, BODY)


def test_the_reference_library_verifies_a_whsec_signature():
    headers = signed(NEW)
    assert Webhook(NEW).verify(BODY, headers) == EMAIL


def test_the_headers_carry_the_message_id_and_the_timestamp():
    headers = signed(NEW, message_id="abc-123", timestamp=1_700_000_000)
    assert headers["webhook-id"] == "abc-123"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")


def test_a_secret_without_the_prefix_signs_with_its_own_bytes():
    assert decode_secrets("plain-secret") == [b"plain-secret"]
    assert Webhook(b"plain-secret").verify(BODY, signed("plain-secret")) == EMAIL


def test_during_key_rotation_each_secret_signs_and_either_verifies():
    headers = signed(f"{NEW} {OLD}")
    assert decode_secrets(f"{NEW}  {OLD}") == [NEW_KEY, OLD_KEY]
    assert len(headers["webhook-signature"].split()) == 2
    assert Webhook(NEW).verify(BODY, headers) == EMAIL
    assert Webhook(OLD).verify(BODY, headers) == EMAIL


def test_another_key_does_not_verify():
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(BODY, signed(NEW))


@pytest.mark.parametrize("change", ["body", "webhook-id", "webhook-timestamp"])
def test_a_tampered_request_does_not_verify(change):
    headers = signed(NEW)
    body = BODY
    if change == "body":
        body = BODY.replace(b"123456", b"654321")
    elif change == "webhook-id":
        headers = {**headers, "webhook-id": "msg-2"}
    else:
        headers = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(body, headers)
