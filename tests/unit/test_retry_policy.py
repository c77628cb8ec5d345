"""The retry policy's decision for one failed attempt: how long to wait, or stop."""

from __future__ import annotations

import time

import httpx
import pytest

from emailq.settings import Settings
from emailq.worker.delivery.errors import (
    ConnectError,
    ConnectTimeout,
    HttpClientError,
    ReadTimeout,
    RejectedStatus,
    RemoteProtocolError,
    RetryableStatus,
)
from emailq.worker.delivery.retry_policy import RetryPolicy, is_retryable_status

BASE, CAP, ATTEMPTS, TTL = 1.0, 60.0, 8, 900.0


def policy(**settings: float) -> RetryPolicy:
    values = {"retry_base_seconds": BASE, "retry_max_seconds": CAP, "max_attempts": ATTEMPTS, **settings}
    return RetryPolicy(Settings(_env_file=None, **values))


def wait(policy: RetryPolicy, attempt: int, error: BaseException, age: float = 0.0, ttl: float = TTL) -> float | None:
    """The wait after attempt `attempt` of an email created `age` seconds ago."""
    created = time.time() - age
    return policy.next_wait(attempt, created, created + ttl, error)


@pytest.mark.parametrize("attempt", range(1, ATTEMPTS))
def test_waits_grow_exponentially_with_up_to_one_base_of_jitter_under_the_cap(attempt):
    retry = policy()
    waits = [wait(retry, attempt, ConnectError("refused")) for _ in range(200)]

    exponential = BASE * 2 ** (attempt - 1)
    assert all(min(exponential, CAP) <= w <= min(exponential + BASE, CAP) for w in waits)
    if exponential + BASE <= CAP:
        assert max(waits) - min(waits) > BASE / 4  # jittered, so retries spread out


def test_retry_after_replaces_the_computed_wait():
    assert wait(policy(), 1, RetryableStatus(429, "", retry_after=7.0)) == 7.0
    assert wait(policy(), 5, RetryableStatus(503, "", retry_after=0.5)) == 0.5


def test_retry_after_is_capped_at_the_longest_wait():
    assert wait(policy(), 1, RetryableStatus(429, "", retry_after=3600.0)) == CAP


def test_without_retry_after_a_status_waits_the_computed_backoff():
    assert BASE <= wait(policy(), 1, RetryableStatus(503, "")) <= 2 * BASE


@pytest.mark.parametrize(
    "error",
    [
        ConnectError("refused"),
        ConnectTimeout("slow"),
        ReadTimeout("slow"),
        RemoteProtocolError("closed"),
        RetryableStatus(500),
        RetryableStatus(408),
        RetryableStatus(425),
        RetryableStatus(429),
        httpx.ConnectError("from a client speaking httpx's vocabulary"),
    ],
    ids=repr,
)
def test_network_errors_and_retryable_statuses_are_retried(error):
    assert wait(policy(), 1, error) is not None


@pytest.mark.parametrize(
    "error",
    [
        RejectedStatus(400),
        RejectedStatus(404),
        RejectedStatus(301),
        HttpClientError("libcurl error 77: bad CA file"),
        ValueError("a bug"),
    ],
    ids=repr,
)
def test_anything_else_is_never_retried(error):
    assert wait(policy(), 1, error) is None


def test_stops_after_the_last_attempt():
    retry = policy(max_attempts=3)
    assert wait(retry, 2, ConnectError("refused")) is not None
    assert wait(retry, 3, ConnectError("refused")) is None


def test_stops_when_the_next_wait_would_outlive_the_email():
    retry = policy()
    assert wait(retry, 1, ConnectError("refused"), age=TTL - 60) is not None
    assert wait(retry, 1, ConnectError("refused"), age=TTL - 0.5) is None
    # An endpoint asking for longer than the email has left gets no retry either.
    assert wait(retry, 1, RetryableStatus(429, "", retry_after=45.0), ttl=30.0) is None


def test_the_decision_depends_only_on_what_the_envelope_carries():
    retry = policy(max_attempts=4)
    for _ in range(3):
        assert 4 <= wait(retry, 3, ConnectError("refused")) <= 5
        assert wait(retry, 4, ConnectError("refused")) is None


@pytest.mark.parametrize(
    "status,retryable",
    [
        (500, True),
        (503, True),
        (599, True),
        (408, True),
        (425, True),
        (429, True),
        (400, False),
        (401, False),
        (404, False),
        (410, False),
        (422, False),
        (301, False),
    ],
)
def test_which_statuses_are_retryable(status, retryable):
    assert is_retryable_status(status) is retryable
