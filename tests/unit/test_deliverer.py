"""What one delivery attempt comes to, for every kind of answer, through the HTTP client
seam: `Deliverer` over a scripted client (a fake is fine here, never end to end)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from emailq.errors import ConfigError
from emailq.message import Email, Envelope
from emailq.settings import Settings
from emailq.worker.delivery.curl_client import CurlClient
from emailq.worker.delivery.deliverer import USER_AGENT, Deliverer, build_client
from emailq.worker.delivery.errors import ConnectError, HttpClientError, ReadTimeout
from emailq.worker.delivery.http_client import Answer
from emailq.worker.delivery.httpx_client import HttpxClient

URL = "https://mail.example.com/send"
EMAIL = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}, "ip": "203.0.113.9"}
SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTMyYg=="


@dataclass
class Sent:
    url: str
    headers: dict[str, str]
    body: bytes
    connect: float
    timeout: float


class ScriptedClient:
    """An `HttpClient` that answers from a script, in order, and records each request."""

    def __init__(self, *script: Answer | Exception):
        self.script = list(script)
        self.sent: list[Sent] = []
        self.closed = False

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        self.sent.append(Sent(url, dict(line.split(": ", 1) for line in headers), body, connect, timeout))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def close(self) -> None:
        self.closed = True


def answer(status: int, body: bytes = b"", retry_after: float | None = None) -> Answer:
    return Answer(status, retry_after, body)


def settings(**values: Any) -> Settings:
    tuned = {"endpoint_url": URL, "max_attempts": 3, "retry_base_seconds": 1.0, "retry_max_seconds": 60.0}
    return Settings(_env_file=None, **{**tuned, **values})


def deliver(*script: Answer | Exception, attempts: int = 0, ttl: float = 900, **values: Any):
    """One attempt (number `attempts + 1`) through a client playing `script`."""
    client = ScriptedClient(*script)
    envelope = Envelope.wrap(Email.model_validate(EMAIL), ttl).model_copy(update={"attempts": attempts})
    return Deliverer(settings(**values), client=client).deliver(envelope), client, envelope


def test_a_2xx_is_delivered_and_recorded():
    outcome, _, _ = deliver(answer(202))
    assert (outcome.delivered, outcome.status, outcome.reason, outcome.retry_in) == (True, 202, None, None)
    assert outcome.sent and outcome.attempt["status"] == 202


def test_posts_exactly_the_logto_body_with_its_headers():
    outcome, client, envelope = deliver(answer(200), endpoint_authorization="Bearer abc", connect_timeout=2, request_timeout=7)
    [sent] = client.sent
    assert sent.url == URL
    assert sent.body == b'{"to":"foo@logto.io","type":"SignIn","payload":{"code":"123456"},"ip":"203.0.113.9"}'
    assert sent.headers == {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Authorization": "Bearer abc",
        "Idempotency-Key": envelope.id,
    }
    assert (sent.connect, sent.timeout) == (2, 7)


def test_with_a_secret_the_request_is_signed_over_the_body_sent():
    _, client, envelope = deliver(answer(200), signing_secret=SECRET)
    [sent] = client.sent
    assert sent.headers["webhook-id"] == envelope.id
    assert Webhook(SECRET).verify(sent.body, sent.headers)["to"] == EMAIL["to"]


def test_without_a_secret_or_authorization_neither_header_is_sent():
    _, client, _ = deliver(answer(200))
    assert not {"Authorization", "webhook-signature"} & set(client.sent[0].headers)


def test_a_5xx_is_retried_after_a_backoff_and_counts_as_an_outage():
    outcome, _, _ = deliver(answer(503, b"busy"))
    assert 1.0 <= outcome.retry_in <= 2.0
    assert (outcome.reason, outcome.status, outcome.excerpt, outcome.error) == (None, 503, "busy", "HTTP 503")
    assert outcome.outage and outcome.attempt["status"] == 503


@pytest.mark.parametrize("status", [408, 425, 429])
def test_408_425_429_are_retried_without_counting_as_an_outage(status):
    outcome, _, _ = deliver(answer(status))
    assert outcome.retry_in is not None and not outcome.outage


def test_retry_after_sets_the_wait():
    outcome, _, _ = deliver(answer(429, retry_after=5.0))
    assert outcome.retry_in == 5.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301, 302])
def test_any_other_status_is_rejected_without_retry(status):
    outcome, _, _ = deliver(answer(status, b'{"error":"template not found"}'))
    assert (outcome.reason, outcome.retry_in, outcome.status, outcome.error) == ("rejected", None, status, f"HTTP {status}")
    assert "template not found" in outcome.excerpt
    assert outcome.sent and not outcome.outage


def test_an_excerpt_is_short_printable_and_on_one_line():
    outcome, _, _ = deliver(answer(400, b"bad\x00\r\n  template\t\x1b[31m" + b"x" * 5000))
    assert outcome.excerpt.startswith("bad template [31mxxx")
    assert len(outcome.excerpt) == 300


def test_a_network_error_is_retried_and_counts_as_an_outage():
    outcome, _, _ = deliver(ConnectError("Failed to connect"))
    assert outcome.retry_in is not None and outcome.outage
    assert outcome.error == "ConnectError: Failed to connect"
    assert outcome.status is None and outcome.attempt["error"] == outcome.error


def test_an_error_from_a_client_speaking_httpx_is_retried_too():
    outcome, _, _ = deliver(httpx.ReadError("connection reset"))
    assert outcome.retry_in is not None and outcome.outage


def test_the_last_attempt_is_exhausted_with_its_error():
    outcome, _, _ = deliver(ReadTimeout("Operation timed out"), attempts=2)
    assert (outcome.reason, outcome.retry_in) == ("exhausted", None)
    assert outcome.error.startswith("ReadTimeout") and outcome.sent


def test_a_retry_that_would_land_after_expiry_is_expired_instead():
    outcome, _, _ = deliver(answer(503), ttl=1.0)
    assert (outcome.reason, outcome.retry_in, outcome.status) == ("expired", None, 503)
    assert outcome.sent


def test_an_expired_email_is_not_sent():
    client = ScriptedClient()
    envelope = Envelope.wrap(Email.model_validate(EMAIL), 900).model_copy(update={"expires_at": time.time() - 1})
    outcome = Deliverer(settings(), client=client).deliver(envelope)
    assert outcome.reason == "expired" and not outcome.sent
    assert client.sent == []


def test_a_failure_of_the_client_itself_is_dead_lettered_as_an_error_and_not_an_outage():
    outcome, _, _ = deliver(HttpClientError("libcurl error 77: error adding trust anchors"))
    assert (outcome.reason, outcome.retry_in) == ("error", None)
    assert outcome.error == "HttpClientError: libcurl error 77: error adding trust anchors"
    # No attempt recorded: the circuit breaker neither counts it nor closes on it.
    assert not outcome.sent and not outcome.outage


def test_close_closes_the_client():
    client = ScriptedClient()
    Deliverer(settings(), client=client).close()
    assert client.closed


def test_without_a_client_libcurl_is_the_default():
    deliverer = Deliverer(settings())
    try:
        assert isinstance(deliverer._client, CurlClient)
    finally:
        deliverer.close()


def test_emailq_http_client_httpx_builds_an_httpx_client_sized_to_the_concurrency():
    client = build_client(settings(concurrency=7).model_copy(update={"http_client": "httpx"}))
    try:
        assert isinstance(client, HttpxClient)
    finally:
        client.close()


def test_an_unknown_client_name_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match="EMAILQ_HTTP_CLIENT"):
        build_client(settings().model_copy(update={"http_client": "urllib"}))


def test_delivering_needs_an_endpoint():
    with pytest.raises(ValueError, match="EMAILQ_ENDPOINT_URL"):
        Deliverer(Settings(_env_file=None), client=ScriptedClient())
