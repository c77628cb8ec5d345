"""Failing over to the fallback endpoint: which endpoint each email goes to, and when each
endpoint's breaker opens and closes (`emailq.worker.delivery.failover`), through the
Deliverer over a scripted client (end to end: tests/test_fallback_endpoint.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from test_deliverer import EMAIL, SECRET, URL, ScriptedClient, answer

from emailq.message import Email, Envelope
from emailq.settings import Settings
from emailq.worker.delivery.deliverer import Deliverer, Outcome
from emailq.worker.delivery.errors import ConnectError, ReadTimeout
from emailq.worker.delivery.failover import Failover

FALLBACK_URL = "https://other-provider.example.net/v1/send"
THRESHOLD = 3
PROBE = 0.05


def settings(**values: Any) -> Settings:
    tuned = {
        "endpoint_url": URL,
        "fallback_endpoint_url": FALLBACK_URL,
        "breaker_threshold": THRESHOLD,
        "breaker_probe_seconds": PROBE,
    }
    return Settings(_env_file=None, **{**tuned, **values})


class Pair:
    """A Deliverer with a fallback, over a client that answers each URL from its own script."""

    def __init__(self, **values: Any):
        self.changes: list[tuple[str, bool]] = []
        s = settings(**values)
        self.failover = Failover(THRESHOLD, PROBE, s.fallback_only, on_change=lambda name, is_open: self.changes.append((name, is_open)))
        self.client = RoutedClient()
        self.deliverer = Deliverer(s, client=self.client, failover=self.failover)

    def deliver(self, primary: Any = None, fallback: Any = None, attempts: int = 0) -> Outcome:
        self.client.next = {URL: primary, FALLBACK_URL: fallback}
        envelope = Envelope.wrap(Email.model_validate(EMAIL), 900).model_copy(update={"attempts": attempts})
        return self.deliverer.deliver(envelope)

    def went_to(self) -> list[str]:
        return ["fallback" if s.url == FALLBACK_URL else "primary" for s in self.client.sent]


class RoutedClient(ScriptedClient):
    def __init__(self) -> None:
        super().__init__()
        self.next: dict[str, Any] = {}

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float):
        step = self.next[url]
        assert step is not None, f"nothing was to be sent to {url}"
        self.script = [step]
        return super().post(url, headers, body, connect, timeout)


def refused() -> ConnectError:
    return ConnectError("connection refused")


@pytest.mark.parametrize("failure", [refused(), ReadTimeout("timed out"), answer(503), answer(500), answer(429)])
def test_an_outage_or_429_on_the_primary_is_tried_on_the_fallback_at_once(failure):
    pair = Pair()
    outcome = pair.deliver(primary=failure, fallback=answer(202))
    assert outcome.delivered and outcome.endpoint == "fallback"
    assert pair.went_to() == ["primary", "fallback"]
    assert [a["endpoint"] for a in outcome.attempts] == ["primary", "fallback"]
    primary_sent, fallback_sent = pair.client.sent
    assert fallback_sent.body == primary_sent.body
    assert fallback_sent.headers["Idempotency-Key"] == primary_sent.headers["Idempotency-Key"]
    assert fallback_sent.timeout == primary_sent.timeout == 10.0  # each POST its own request timeout


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_4xx_is_about_the_email_and_is_not_failed_over(status):
    pair = Pair()
    outcome = pair.deliver(primary=answer(status))
    assert outcome.reason == "rejected" and pair.went_to() == ["primary"]


def test_the_fallbacks_answer_decides_the_outcome():
    pair = Pair()
    outcome = pair.deliver(primary=answer(503), fallback=answer(422, b"bad template"))
    assert outcome.reason == "rejected" and outcome.status == 422 and outcome.endpoint == "fallback"
    outcome = pair.deliver(primary=refused(), fallback=answer(503))
    assert outcome.retry_in is not None and outcome.status == 503
    # The two POSTs are two attempts: the backoff follows the second.
    assert len(outcome.attempts) == 2 and outcome.attempts[0]["error"].startswith("ConnectError")


def test_each_endpoint_gets_its_own_authorization_and_signature():
    pair = Pair(endpoint_authorization="Bearer primary-token", fallback_endpoint_authorization="Key fallback-token", fallback_signing_secret=SECRET)
    pair.deliver(primary=answer(503), fallback=answer(200))
    primary_sent, fallback_sent = pair.client.sent
    assert primary_sent.headers["Authorization"] == "Bearer primary-token" and "webhook-signature" not in primary_sent.headers
    assert fallback_sent.headers["Authorization"] == "Key fallback-token"
    headers = {k.lower(): v for k, v in fallback_sent.headers.items()}
    Webhook(SECRET).verify(fallback_sent.body, headers)  # raises if it does not verify


def test_the_primarys_breaker_opens_on_its_own_posts_although_the_fallback_delivers():
    pair = Pair()
    for _ in range(THRESHOLD):
        assert pair.deliver(primary=refused(), fallback=answer(200)).delivered
    assert pair.changes == [("primary", True)]
    assert not pair.failover.is_open, "the worker keeps taking emails: the fallback takes them"
    pair.client.sent.clear()
    assert pair.deliver(fallback=answer(200)).endpoint == "fallback"
    assert pair.went_to() == ["fallback"], "while open, emails go straight to the fallback"


def test_probes_keep_testing_the_primary_and_its_answer_brings_emails_back():
    pair = Pair()
    for _ in range(THRESHOLD):
        pair.deliver(primary=refused(), fallback=answer(200))
    time.sleep(PROBE * 1.5)
    pair.client.sent.clear()
    assert pair.deliver(primary=refused(), fallback=answer(200)).delivered  # the probe fails over too
    assert pair.went_to() == ["primary", "fallback"]
    pair.client.sent.clear()
    pair.deliver(fallback=answer(200))
    assert pair.went_to() == ["fallback"], "the next probe waits its interval"
    time.sleep(PROBE * 1.5)
    assert pair.deliver(primary=answer(200)).endpoint == "primary"
    assert pair.changes == [("primary", True), ("primary", False)]
    assert pair.deliver(primary=answer(200)).endpoint == "primary"


def test_a_few_always_failing_emails_never_open_the_primarys_breaker():
    pair = Pair()
    for _ in range(5 * THRESHOLD):
        for _ in range(THRESHOLD - 1):
            pair.deliver(primary=answer(500), fallback=answer(500))
        pair.deliver(primary=answer(200))
    assert ("primary", True) not in pair.changes


def test_a_fallback_opened_by_always_failing_emails_is_back_within_a_probe_interval():
    # The fallback sees only what failed on the primary, so emails failing everywhere can
    # open its breaker while the primary is fine. Should the primary then fail, the
    # fallback's next probe (at most a probe interval later) closes it again.
    pair = Pair()
    for _ in range(THRESHOLD):
        pair.deliver(primary=answer(500), fallback=answer(500))
        pair.deliver(primary=answer(200))
    assert pair.changes == [("fallback", True)]
    for _ in range(THRESHOLD):
        pair.deliver(primary=refused())
    assert pair.failover.is_open
    time.sleep(PROBE * 1.5)
    assert pair.failover.may_take()
    outcome = pair.deliver(primary=refused(), fallback=answer(200))
    assert outcome.delivered and outcome.endpoint == "fallback"
    assert pair.failover.state()["sending_to"] == "fallback"


def test_both_down_the_worker_takes_only_probes_then_resumes():
    pair = Pair()
    for _ in range(THRESHOLD):
        pair.deliver(primary=refused(), fallback=refused())
    assert pair.failover.is_open and not pair.failover.may_take()
    time.sleep(PROBE * 1.5)
    assert pair.failover.may_take()
    pair.failover.taken("tag-1")
    assert not pair.failover.may_take(), "one probe at a time"
    outcome = pair.deliver(primary=refused(), fallback=answer(200))
    pair.failover.succeeded()
    assert outcome.delivered and not pair.failover.is_open and pair.failover.may_take()


def test_a_probe_with_no_outcome_is_owed_again():
    pair = Pair()
    for _ in range(THRESHOLD):
        pair.deliver(primary=refused(), fallback=refused())
    time.sleep(PROBE * 1.5)
    pair.failover.taken("tag-1")
    pair.failover.ended("tag-1")
    assert pair.failover.may_take()


def test_fallback_only_never_touches_the_primary():
    pair = Pair(fallback_only=True)
    outcome = pair.deliver(fallback=answer(503))
    assert pair.went_to() == ["fallback"] and outcome.retry_in is not None
    assert pair.failover.state()["sending_to"] == "fallback"


def test_settings_refuse_a_fallback_equal_to_the_primary_or_set_without_a_url():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="EMAILQ_FALLBACK_ENDPOINT_URL: is EMAILQ_ENDPOINT_URL"):
        settings(fallback_endpoint_url=URL)
    with pytest.raises(ValidationError, match="EMAILQ_FALLBACK_ENDPOINT_AUTHORIZATION: set, but EMAILQ_FALLBACK_ENDPOINT_URL is not"):
        Settings(_env_file=None, endpoint_url=URL, fallback_endpoint_authorization="Bearer x")
    with pytest.raises(ValidationError, match="EMAILQ_FALLBACK_ONLY"):
        Settings(_env_file=None, endpoint_url=URL, fallback_only=True)
    with pytest.raises(ValidationError, match="fallback_endpoint_url"):
        settings(fallback_endpoint_url="ftp://x/y")
    # A worker holds one email for two POSTs at most: the visibility backstop covers both.
    assert settings().longest_delivery_seconds() == 3 * settings().request_timeout


def test_a_stopping_worker_starts_no_failover_post():
    # SIGTERM must end a worker within one request timeout: the primary's POST in flight
    # may run to its end, but no second POST begins; the primary's failure stands.
    s = settings()
    client = RoutedClient()
    client.next = {URL: refused(), FALLBACK_URL: None}
    deliverer = Deliverer(s, client=client, failover=Failover(THRESHOLD, PROBE), stopping=lambda: True)
    outcome = deliverer.deliver(Envelope.wrap(Email.model_validate(EMAIL), 900))
    assert outcome.retry_in is not None and outcome.endpoint == "primary" and len(client.sent) == 1


def test_an_endpoints_repr_shows_no_secret():
    from emailq.worker.delivery import endpoints

    s = settings(fallback_endpoint_authorization="Key fallback-token", fallback_signing_secret=SECRET)
    shown = repr(endpoints.fallback(s))
    assert "fallback-token" not in shown and SECRET.removeprefix("whsec_") not in shown and FALLBACK_URL in shown
