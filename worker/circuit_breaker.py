"""Hold deliveries while the endpoint is down, instead of burning every email's retries.

After `threshold` consecutive outage failures (network errors, timeouts, 5xx) across all
deliveries of this worker process, the breaker opens: deliveries wait without using an
attempt, and every `probe_seconds` one of them is sent as a probe. A probe that gets an
answer other than an outage closes the breaker and everyone resumes; a failed probe is not
counted against its email. A held email still expires at its TTL.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

from emailq.worker.retry_policy import RetryableStatus

T = TypeVar("T")
log = logging.getLogger("emailq.worker")

_POLL_SECONDS = 0.2


class Expired(Exception):
    """The email's TTL ran out while deliveries were held."""


def is_outage(error: BaseException) -> bool:
    # A 429 or 408 is the endpoint talking; only silence and server errors mean "down".
    if isinstance(error, RetryableStatus):
        return error.status >= 500
    return isinstance(error, httpx.TransportError)


class CircuitBreaker:
    def __init__(self, threshold: int, probe_seconds: float, on_change: Callable[[bool], None] | None = None):
        self.threshold = threshold
        self.probe_seconds = probe_seconds
        self._on_change = on_change or (lambda is_open: None)
        self._lock = threading.Lock()
        self._failures = 0
        self._open = False
        self._probing = False
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self._open

    def call(self, attempt: Callable[[], T], deadline: float) -> T:
        """Run `attempt` now if the endpoint is believed up; otherwise wait, probing in
        turn, until it is (then run it) or until `deadline` (then raise Expired)."""
        while True:
            probe = self._wait_for_turn(deadline)
            try:
                result = attempt()
            except Exception as error:
                if not is_outage(error):
                    self._succeeded()
                    raise
                if probe:
                    self._probe_failed()
                    continue  # held, not counted: wait for the next turn
                self._failed()
                raise
            self._succeeded()
            return result

    def _wait_for_turn(self, deadline: float) -> bool:
        """False when the breaker is closed; True when this caller is to probe."""
        while True:
            now = time.time()
            with self._lock:
                if not self._open:
                    return False
                if not self._probing and now >= self._next_probe:
                    self._probing = True
                    return True
            if now >= deadline:
                raise Expired("expired while the endpoint was down")
            time.sleep(min(_POLL_SECONDS, max(0.0, deadline - now)))

    def _failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self.threshold and not self._open and self._failures >= self.threshold:
                self._open = True
                self._next_probe = time.time() + self.probe_seconds
                opened = True
            else:
                opened = False
        if opened:
            log.warning(
                "endpoint looks down after %d consecutive failures: holding deliveries, probing every %.1fs",
                self.threshold, self.probe_seconds,
            )
            self._on_change(True)

    def _probe_failed(self) -> None:
        with self._lock:
            self._probing = False
            self._next_probe = time.time() + self.probe_seconds

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            was_open = self._open
            self._open = self._probing = False
        if was_open:
            log.warning("endpoint answered again: resuming deliveries")
            self._on_change(False)
