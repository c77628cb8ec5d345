"""Standard Webhooks signatures, checked with the reference verifier (`standardwebhooks`)."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import wait_for
from helpers import SIGN_IN

OLD = "whsec_" + base64.b64encode(b"old-key-old-key-old-key-32-bytes").decode()
NEW = "whsec_" + base64.b64encode(b"new-key-new-key-new-key-32-bytes").decode()


def signed_request(producer, endpoint, start_worker, secret: str):
    start_worker(env={"EMAILQ_SIGNING_SECRET": secret})
    message_id = producer.send(SIGN_IN)
    wait_for(lambda: endpoint.delivered_keys(), 20, "a delivery")
    [request] = endpoint.received
    return message_id, request


def test_requests_carry_a_signature_the_reference_library_verifies(producer, endpoint, start_worker):
    message_id, request = signed_request(producer, endpoint, start_worker, NEW)

    assert request.headers["webhook-id"] == message_id
    assert Webhook(NEW).verify(request.body, request.headers) == SIGN_IN
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD).verify(request.body, request.headers)
    tampered = request.body.replace(b"123456", b"654321")
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(tampered, request.headers)


def test_during_key_rotation_both_secrets_verify(producer, endpoint, start_worker):
    _, request = signed_request(producer, endpoint, start_worker, f"{NEW} {OLD}")

    assert len(request.headers["webhook-signature"].split()) == 2
    assert Webhook(NEW).verify(request.body, request.headers) == SIGN_IN
    assert Webhook(OLD).verify(request.body, request.headers) == SIGN_IN


def test_no_signature_headers_without_a_secret(producer, endpoint, start_worker):
    start_worker()
    producer.send(SIGN_IN)
    wait_for(lambda: endpoint.delivered_keys(), 20, "a delivery")
    assert not {"webhook-id", "webhook-signature"} & set(endpoint.received[0].headers)
