"""The circuit breaker: when a worker stops taking fresh emails, how it probes, when it
resumes (the rules in `emailq.worker.delivery.circuit_breaker`'s docstring)."""

from __future__ import annotations

import time

import pytest

from emailq.worker.delivery.circuit_breaker import MIN_FAILED_ATTEMPT, CircuitBreaker

THRESHOLD = 3
PROBE = 0.05


class Breaker(CircuitBreaker):
    """The breaker with a record of its open/close announcements."""

    def __init__(self, threshold: int = THRESHOLD, probe_seconds: float = PROBE):
        self.changes: list[bool] = []
        super().__init__(threshold, probe_seconds, on_change=self.changes.append)


def outage(breaker: CircuitBreaker, emails: int = THRESHOLD, tag: str = "") -> None:
    """`emails` fresh emails fail on their first attempt, and as many others on their third."""
    for n in range(emails):
        breaker.failed(f"fresh-{tag}{n}", 1)
        breaker.failed(f"retried-{tag}{n}", MIN_FAILED_ATTEMPT)


def opened() -> Breaker:
    breaker = Breaker()
    outage(breaker)
    assert breaker.is_open
    return breaker


def probe_due() -> None:
    time.sleep(PROBE * 1.5)


def test_opens_once_distinct_emails_fail_on_their_third_attempt_and_fresh_ones_fail_too():
    breaker = Breaker()
    outage(breaker, THRESHOLD - 1)
    assert not breaker.is_open and breaker.may_take()

    outage(breaker, 1, tag="last")
    assert breaker.is_open
    assert breaker.changes == [True]


def test_one_email_failing_again_and_again_counts_once():
    breaker = Breaker()
    for attempt in range(MIN_FAILED_ATTEMPT, 20):
        breaker.failed("broken-template", attempt)
    for n in range(10):
        breaker.failed(f"fresh-{n}", 1)
    assert not breaker.is_open


def test_emails_failing_their_first_two_attempts_never_open_it():
    breaker = Breaker()
    for n in range(100):
        breaker.failed(f"email-{n}", 1)
        breaker.failed(f"email-{n}", 2)
    assert not breaker.is_open and breaker.changes == []


def test_old_failures_without_fresh_ones_never_open_it():
    breaker = Breaker()
    for n in range(100):
        breaker.failed(f"email-{n}", MIN_FAILED_ATTEMPT + n % 3)
    assert not breaker.is_open


def test_a_minority_of_always_failing_emails_never_opens_it():
    breaker = Breaker()
    for round in range(50):
        # One email in four fails forever; the healthy three get through in between.
        breaker.failed(f"doomed-{round % 5}", MIN_FAILED_ATTEMPT + round // 5)
        breaker.failed(f"fresh-{round}", 1)
        for _ in range(3):
            breaker.succeeded()
    assert not breaker.is_open and breaker.changes == []


def test_a_success_starts_the_count_again():
    breaker = Breaker()
    outage(breaker, THRESHOLD - 1)
    breaker.succeeded()
    outage(breaker, 1, tag="after")
    assert not breaker.is_open


def test_a_threshold_of_zero_never_opens_it():
    breaker = Breaker(threshold=0)
    outage(breaker, 100)
    assert not breaker.is_open


def test_while_open_nothing_is_taken_until_a_probe_is_due():
    breaker = opened()
    assert not breaker.may_take()
    probe_due()
    assert breaker.may_take()


def test_one_probe_at_a_time():
    breaker = opened()
    probe_due()
    breaker.taken()
    probe_due()
    assert not breaker.may_take()


def test_after_a_fresh_probe_fails_the_next_waits_the_interval():
    breaker = opened()
    probe_due()
    breaker.taken()
    breaker.failed("fresh-probe", 1)
    assert not breaker.may_take()
    probe_due()
    assert breaker.may_take()


def test_after_a_retried_probe_fails_the_next_may_go_at_once():
    breaker = opened()
    probe_due()
    breaker.taken()
    breaker.failed("retried-probe", MIN_FAILED_ATTEMPT + 1)
    assert breaker.may_take()  # retries keep their own backoff; a doomed queue drains


def test_a_probe_that_was_not_sent_is_still_owed():
    breaker = opened()
    probe_due()
    breaker.taken()
    breaker.skipped()  # expired or malformed: the endpoint was never asked
    assert breaker.may_take()


def test_a_probe_that_ends_without_an_outcome_is_owed_again():
    # A non-email the consumer dead-letters is acked with no delivery outcome.
    breaker = opened()
    probe_due()
    breaker.taken("tag-junk")
    assert not breaker.may_take()
    breaker.ended("tag-junk")
    assert breaker.may_take()


def test_the_late_end_of_an_earlier_take_does_not_free_the_next_probe():
    breaker = opened()
    probe_due()
    breaker.taken("tag-1")
    breaker.failed("retried-probe", MIN_FAILED_ATTEMPT + 1)  # its outcome comes before its ack
    breaker.taken("tag-2")
    breaker.ended("tag-1")
    assert not breaker.may_take(), "one probe at a time"
    breaker.ended("tag-2")
    assert breaker.may_take()


def test_failures_while_open_neither_reopen_nor_count_towards_the_next_opening():
    breaker = opened()
    outage(breaker, 10, tag="meanwhile")
    assert breaker.changes == [True]
    breaker.succeeded()
    outage(breaker, THRESHOLD - 1, tag="later")
    assert not breaker.is_open


def test_any_answer_that_is_not_an_outage_closes_it():
    breaker = opened()
    breaker.succeeded()
    assert not breaker.is_open and breaker.may_take()
    assert breaker.changes == [True, False]


def test_taking_and_skipping_while_closed_change_nothing():
    breaker = Breaker()
    breaker.taken()
    breaker.skipped()
    assert breaker.may_take() and not breaker.is_open


@pytest.mark.parametrize("threshold", [0, THRESHOLD])
def test_what_it_remembers_of_failing_emails_stays_bounded(threshold):
    # 0: never opens. THRESHOLD: retries failing for long with no fresh email failing.
    breaker = Breaker(threshold=threshold)
    for n in range(10_000):
        breaker.failed(f"retried-{n}", MIN_FAILED_ATTEMPT)
    assert len(breaker._failing) <= threshold
    assert not breaker.is_open
