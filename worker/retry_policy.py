"""When a failed POST is tried again, and how long to wait: tenacity objects built once.

Retried: network errors and timeouts, 5xx, 408, 425 and 429. Waits grow exponentially
from `EMAILQ_RETRY_BASE_SECONDS` with jitter, up to `EMAILQ_RETRY_MAX_SECONDS`; a
`Retry-After` (seconds or an HTTP date) replaces the computed wait, capped the same way.
Attempts stop at `EMAILQ_MAX_ATTEMPTS`, or earlier when the next wait would run past the
message's expiry.
"""

from __future__ import annotations


import httpx
import tenacity

from emailq.settings import Settings

RETRYABLE_STATUSES = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUSES


class RetryableStatus(Exception):
    """The endpoint answered with a status worth trying again."""

    def __init__(self, status: int, excerpt: str, retry_after: float | None):
        self.status = status
        self.excerpt = excerpt
        self.retry_after = retry_after
        super().__init__(f"HTTP {status}")


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


def build_retrying(settings: Settings, seconds_left: float) -> tenacity.Retrying:
    """The retry policy for one delivery that must finish within `seconds_left`."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((httpx.TransportError, RetryableStatus)),
        stop=(
            tenacity.stop_after_attempt(settings.max_attempts)
            | tenacity.stop_before_delay(max(seconds_left, 0.0))
        ),
        wait=wait_retry_after(
            tenacity.wait_exponential_jitter(
                initial=settings.retry_base_seconds,
                max=settings.retry_max_seconds,
                jitter=settings.retry_base_seconds,
            ),
            cap=settings.retry_max_seconds,
        ),
        reraise=True,
    )
