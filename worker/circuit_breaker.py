"""Stop taking emails while the endpoint is down, without holding any.

The breaker opens when `threshold` distinct emails have each failed with an outage
(a network error, a timeout, a 5xx) on their `MIN_FAILED_ATTEMPT`-th attempt or later,
with no successful delivery in between. A single failure says little: one broken
template or recipient domain fails every time while the endpoint is fine, and some
endpoints fail an email's first tries and accept a later one. Ten different emails that
each failed three times in a row, over a few seconds of backoff, while nothing else got
through, do describe an outage; a minority of always-failing emails never opens it,
because the healthy ones keep succeeding in between.

While open, the worker takes nothing from the queue (emails wait in Redis, not in
threads) except one email every `probe_seconds`. Probes are whatever is at the head of
the queue, fresh or a due retry, so they rotate; a failed probe spends its email's attempt
like any other failure, so no email is probed forever. The first success (or any answer
that is not an outage, such as a 4xx or a 429) closes the breaker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("emailq.worker")

MIN_FAILED_ATTEMPT = 3


class CircuitBreaker:
    def __init__(self, threshold: int, probe_seconds: float, on_change: Callable[[bool], None] | None = None):
        self.threshold = threshold
        self.probe_seconds = probe_seconds
        self._on_change = on_change or (lambda is_open: None)
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._open = False
        self._probe_out = False
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self._open

    def may_take(self) -> bool:
        """Whether the consumer may take one more email from the queue now."""
        if not self._open:
            return True
        with self._lock:
            return not self._probe_out and time.monotonic() >= self._next_probe

    def taken(self) -> None:
        """The consumer took an email; while open, it is the probe."""
        if self._open:
            with self._lock:
                self._probe_out = True

    def skipped(self) -> None:
        """The email taken was not sent (expired, malformed): the probe is still owed."""
        if self._open:
            with self._lock:
                self._probe_out = False

    def succeeded(self) -> None:
        """The endpoint answered with anything but an outage."""
        with self._lock:
            self._failing.clear()
            was_open, self._open, self._probe_out = self._open, False, False
        if was_open:
            log.warning("endpoint answered again: resuming deliveries")
            self._on_change(False)

    def failed(self, message_id: str, attempt: int) -> None:
        """An outage failure of `message_id`'s `attempt`-th attempt (1 for the first)."""
        with self._lock:
            if self._open:
                self._probe_out = False
                self._next_probe = time.monotonic() + self.probe_seconds
                return
            if attempt >= MIN_FAILED_ATTEMPT:
                self._failing.add(message_id)
            opened = bool(self.threshold) and len(self._failing) >= self.threshold
            if opened:
                self._open = True
                self._probe_out = False
                self._next_probe = time.monotonic() + self.probe_seconds
                self._failing.clear()
        if opened:
            log.warning(
                "endpoint looks down (%d emails failed %d+ times in a row, nothing delivered "
                "in between): taking no more emails, probing every %.1fs",
                self.threshold, MIN_FAILED_ATTEMPT, self.probe_seconds,
            )
            self._on_change(True)
