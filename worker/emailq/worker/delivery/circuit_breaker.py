"""Stop taking fresh emails while the endpoint is down, without holding any in a thread.

The breaker opens when, with no successful delivery in between, `threshold` distinct
emails have each failed with an outage (a network error, a timeout, a 5xx) on their
`MIN_FAILED_ATTEMPT`-th attempt or later, *and* `threshold` fresh emails failed on their
first. One failure says little: a broken template or recipient domain fails every time
while the endpoint is fine, and some endpoints fail an email's first tries and accept a
later one. Fresh emails failing too, and emails failing three times in a row over a few
seconds of backoff, while nothing gets through, describe an outage. A minority of
always-failing emails never opens it: the healthy ones succeed in between.

While open, the worker takes nothing from the queue (emails wait in Redis, not in
threads) except one probe at a time: the head of the queue, fresh or a due retry, so
probes rotate. A failed probe spends its email's attempt like any failure, so no email is
held forever. After a fresh email fails as a probe the next waits `probe_seconds`; after
a retried one it may go at once, so retries keep their own backoff and a queue headed by
always-failing emails drains to the DLQ instead of being probed one per interval. The
first success (or any answer that is not an outage, such as a 4xx or a 429) closes it.

Every take ends in an ack or a reject (`ended`): a probe that ends with no outcome of a
delivery (an item the consumer dead-letters, another app's task, a bug) is owed again
at once, as a skipped one is. Otherwise a probe that never reached the task would keep
the worker taking nothing, forever, even after the endpoint came back.
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
        self._fresh_failures = 0
        self._open = False
        self._probe_out = False
        self._probe: object = None  # the take that is the probe out, when it said which
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

    def taken(self, take: object = None) -> None:
        """The consumer took an email (`take`: what names that take, e.g. its delivery
        tag); while open, it is the probe."""
        if self._open:
            with self._lock:
                self._probe_out, self._probe = True, take

    def skipped(self) -> None:
        """The email taken was not sent (expired, malformed): the probe is still owed."""
        if self._open:
            with self._lock:
                self._probe_out, self._probe = False, None

    def ended(self, take: object) -> None:
        """The take `take` is over (acked or rejected). If it is still the probe out, no
        outcome came of it: the probe is owed again, as after `skipped`."""
        with self._lock:
            if self._probe_out and take is not None and self._probe == take:
                self._probe_out, self._probe = False, None

    def succeeded(self) -> None:
        """The endpoint answered with anything but an outage."""
        with self._lock:
            self._failing.clear()
            self._fresh_failures = 0
            was_open, self._open, self._probe_out, self._probe = self._open, False, False, None
        if was_open:
            log.warning("endpoint answered again: resuming deliveries")
            self._on_change(False)

    def failed(self, message_id: str, attempt: int) -> None:
        """An outage failure of `message_id`'s `attempt`-th attempt (1 for the first)."""
        with self._lock:
            if self._open:
                self._probe_out, self._probe = False, None
                if attempt == 1:
                    self._next_probe = time.monotonic() + self.probe_seconds
                return
            if not self.threshold:
                return  # never opens: nothing to count (the set would grow without bound)
            if attempt == 1:
                self._fresh_failures += 1
            # Only `threshold` of them ever matter: a long outage with no fresh emails (or a
            # flood of retries) must not grow the set until the next success.
            if attempt >= MIN_FAILED_ATTEMPT and len(self._failing) < self.threshold:
                self._failing.add(message_id)
            opened = min(len(self._failing), self._fresh_failures) >= self.threshold
            if opened:
                self._open = True
                self._probe_out, self._probe = False, None
                self._next_probe = time.monotonic() + self.probe_seconds
                self._failing.clear()
                self._fresh_failures = 0
        if opened:
            log.warning(
                "endpoint looks down (%d emails failed %d+ times in a row, nothing delivered in between): taking no more emails, probing every %.1fs",
                self.threshold,
                MIN_FAILED_ATTEMPT,
                self.probe_seconds,
            )
            self._on_change(True)
