"""When a failed POST is tried again, and how long to wait: tenacity objects built once.

Retried: network errors and timeouts (`emailq.worker.delivery.errors.NetworkError`), 5xx, 408, 425
and 429; nothing else (a rejected status, the HTTP client's own `HttpClientError`). Waits
grow exponentially from `EMAILQ_RETRY_BASE_SECONDS` with jitter, up to
`EMAILQ_RETRY_MAX_SECONDS`; a `Retry-After` (seconds or an HTTP date) replaces the
computed wait, capped the same way. Attempts stop at `EMAILQ_MAX_ATTEMPTS`, or earlier
when the next wait would run past the message's expiry.
"""

from __future__ import annotations

import time

import httpx
import tenacity

from emailq.settings import Settings
from emailq.worker.delivery.errors import RetryableStatus

# RetryableStatus lives in emailq.worker.delivery.errors; it is imported from here too.
__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "RetryableStatus", "is_retryable_status", "wait_retry_after"]

RETRYABLE_STATUSES = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUSES


class wait_retry_after:
    """Waits what the endpoint's `Retry-After` asked (capped), else what `fallback` says."""

    def __init__(self, fallback: tenacity.wait.wait_base, cap: float):
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, RetryableStatus) and error.retry_after is not None:
            return min(error.retry_after, self.cap)
        return self.fallback(retry_state)


class RetryPolicy:
    """tenacity's decision for one failed attempt, without sleeping: the wait before the
    next attempt, or None to stop. The attempt count and the time since the email was
    created come from its envelope, so the decision survives the email going back to
    Redis between attempts."""

    def __init__(self, settings: Settings):
        self.max_attempts = settings.max_attempts
        # emailq's NetworkErrors are httpx.TransportErrors (see emailq.worker.delivery.errors), so a
        # client that raises httpx's own is understood too; HttpClientError is neither.
        self._retry = tenacity.retry_if_exception_type((httpx.TransportError, RetryableStatus))
        self._by_attempts = tenacity.stop_after_attempt(settings.max_attempts)
        self._wait = wait_retry_after(
            tenacity.wait_exponential_jitter(
                multiplier=settings.retry_base_seconds,
                max=settings.retry_max_seconds,
                jitter=settings.retry_base_seconds,
            ),
            cap=settings.retry_max_seconds,
        )
        self._retrying = tenacity.Retrying(retry=self._retry, stop=self._by_attempts, wait=self._wait)

    def next_wait(self, attempt: int, created_at: float, expires_at: float, error: BaseException) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, after attempt `attempt` (1-based)
        failed with `error`; None when it must not be retried."""
        state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        outcome: tenacity.Future = tenacity.Future(attempt)
        outcome.set_exception(error)
        state.outcome = outcome
        # tenacity measures the delay from the first attempt; ours starts at creation.
        state.start_time = 0.0
        state.outcome_timestamp = max(0.0, time.time() - created_at)
        if not self._retry(state):
            return None
        state.upcoming_sleep = self._wait(state)
        stop = self._by_attempts | tenacity.stop_before_delay(max(expires_at - created_at, 0.0))
        if stop(state):
            return None
        return state.upcoming_sleep
