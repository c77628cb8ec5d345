"""Two endpoints, each with a circuit breaker judged on its own POSTs, and the route an
email takes between them (used only when `EMAILQ_FALLBACK_ENDPOINT_URL` is set; with one
endpoint, `circuit_breaker.CircuitBreaker` decides as it always did).

Why a rule of its own: the one-endpoint breaker counts failed attempts per email (an
email failing its third attempt), but with a fallback an email fails on the primary once
and is delivered by the fallback, so no email ever fails there twice and the primary's
breaker would never open however dead it is. Here each endpoint's breaker opens when
`threshold` distinct emails failed on it with an outage (connection error, timeout, 5xx)
with no answer from it in between; any answer that is not an outage (a 2xx, a 4xx, a
429) closes it. A few emails that always fail never open it, since the healthy ones are
answered in between; what the other endpoint does never counts.

The route of one email (`Failover.route`): the primary, then the fallback; an endpoint
whose breaker is open is skipped, except for one email at a time every `probe_seconds`,
its probe. So while the primary's breaker is open every email goes to the fallback at
once, and a probe keeps testing the primary; its first answer closes the breaker and new
emails go back to it. `EMAILQ_FALLBACK_ONLY` routes everything to the fallback and never
touches the primary.

While every endpoint on the route is open, the worker takes nothing but one email at a
time, when a probe is due (`may_take` and friends, as `CircuitBreaker`'s): emails wait in
Redis, spending no attempts, as they do with one endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from emailq.worker.delivery.endpoints import FALLBACK, PRIMARY

log = logging.getLogger("emailq.worker")


class EndpointBreaker:
    """One endpoint's breaker. `admit` before each POST; then `answered` or `failed`
    with what the endpoint did, or `released` when the POST never reached it."""

    def __init__(self, name: str, threshold: int, probe_seconds: float, on_change: Callable[[str, bool], None]):
        self.name = name
        self.threshold = threshold
        self.probe_seconds = probe_seconds
        self._on_change = on_change
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self._open = False
        self._probe: str | None = None  # the email out as this endpoint's probe
        self._next_probe = 0.0

    @property
    def is_open(self) -> bool:
        return self._open

    def probe_due(self) -> bool:
        return self._open and self._probe is None and time.monotonic() >= self._next_probe

    def admit(self, message_id: str) -> bool:
        """Whether `message_id` may be POSTed here now: closed, or open with a probe due
        (this POST is then the probe, and no other goes until it is answered)."""
        if not self._open:
            return True
        with self._lock:
            if not self.probe_due():
                return False
            self._probe = message_id
            return True

    def answered(self, message_id: str) -> None:
        """The endpoint answered `message_id` with anything but an outage."""
        with self._lock:
            self._failing.clear()
            was_open, self._open, self._probe = self._open, False, None
        if was_open:
            self._on_change(self.name, False)

    def failed(self, message_id: str) -> None:
        """The POST of `message_id` failed with an outage."""
        with self._lock:
            if self._open:
                # Only the probe's failure sets the next one: POSTs that were already in
                # flight when it opened must not keep pushing it back.
                if self._probe == message_id:
                    self._probe, self._next_probe = None, time.monotonic() + self.probe_seconds
                return
            if not self.threshold:
                return
            if len(self._failing) < self.threshold:
                self._failing.add(message_id)
            opened = len(self._failing) >= self.threshold
            if opened:
                self._open, self._probe = True, None
                self._next_probe = time.monotonic() + self.probe_seconds
                self._failing.clear()
        if opened:
            self._on_change(self.name, True)

    def released(self, message_id: str) -> None:
        """`message_id` was admitted but not POSTed (or the client itself failed): if it
        was the probe, the probe is owed again."""
        with self._lock:
            if self._probe == message_id:
                self._probe = None


class Failover:
    """The primary's and the fallback's breakers, the route between them, and the
    consumer's gate while every endpoint on the route is open. `on_change(name, open)`
    hears each breaker open and close (the gauge); the log lines are said here."""

    def __init__(
        self,
        threshold: int,
        probe_seconds: float,
        fallback_only: bool = False,
        on_change: Callable[[str, bool], None] | None = None,
    ):
        self.probe_seconds = probe_seconds
        self.fallback_only = fallback_only
        self._on_change = on_change or (lambda name, is_open: None)
        self.breakers = {name: EndpointBreaker(name, threshold, probe_seconds, self._changed) for name in (PRIMARY, FALLBACK)}
        self._order = (FALLBACK,) if fallback_only else (PRIMARY, FALLBACK)
        self._lock = threading.Lock()
        self._take_out = False
        self._take: object = None

    # --- the route ------------------------------------------------------------------

    def route(self) -> tuple[str, ...]:
        """The endpoints an email may go to, in order; each is `admit`ted just before its POST."""
        return self._order

    def breaker(self, name: str) -> EndpointBreaker:
        return self.breakers[name]

    def state(self) -> dict[str, str]:
        """Each endpoint's breaker, `closed` or `open`, and where new emails go."""
        states = {name: ("open" if b.is_open else "closed") for name, b in self.breakers.items()}
        if self.fallback_only:
            states[PRIMARY] = "unused (EMAILQ_FALLBACK_ONLY)"
        sending = next((name for name in self._order if not self.breakers[name].is_open), None)
        return {**states, "sending_to": sending or "nowhere (probing)"}

    # --- the consumer's gate (the interface of CircuitBreaker) ----------------------

    @property
    def is_open(self) -> bool:
        """Whether every endpoint on the route is open: then the worker only probes."""
        return all(self.breakers[name].is_open for name in self._order)

    def may_take(self) -> bool:
        if not self.is_open:
            return True
        with self._lock:
            return not self._take_out and any(self.breakers[name].probe_due() for name in self._order)

    def taken(self, take: object = None) -> None:
        if self.is_open:
            with self._lock:
                self._take_out, self._take = True, take

    def skipped(self) -> None:
        self._release()

    def ended(self, take: object) -> None:
        with self._lock:
            if self._take_out and take is not None and self._take == take:
                self._take_out, self._take = False, None

    def failed(self, message_id: str, attempt: int) -> None:
        """The email's delivery failed on every endpoint it went to (each breaker has
        already heard its own POST)."""
        self._release()

    def succeeded(self) -> None:
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._take_out, self._take = False, None

    # --- what operators are told ----------------------------------------------------

    def _changed(self, name: str, is_open: bool) -> None:
        self._on_change(name, is_open)
        if self.fallback_only and name == PRIMARY:
            return
        threshold = self.breakers[name].threshold
        primary_open = self.breakers[PRIMARY].is_open and not self.fallback_only
        if is_open and self.is_open:
            log.warning(
                "%s endpoint looks down too (%d emails failed on it in a row): no endpoint answers, taking no more emails, probing every %.1fs",
                name,
                threshold,
                self.probe_seconds,
            )
        elif is_open and name == PRIMARY:
            log.warning(
                "primary endpoint looks down (%d emails failed on it in a row): sending every email to the fallback, probing the primary every %.1fs",
                threshold,
                self.probe_seconds,
            )
        elif is_open:
            log.warning("fallback endpoint looks down (%d emails failed on it in a row): probing it every %.1fs", threshold, self.probe_seconds)
        elif name == PRIMARY:
            log.warning("primary endpoint answered again: sending emails to it again, resuming deliveries")
        elif primary_open or self.fallback_only:
            log.warning("fallback endpoint answered again: sending every email to it, resuming deliveries")
        else:
            log.warning("fallback endpoint answered again")
