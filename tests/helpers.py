"""Shared by the tests (import from here, not from conftest) and by the benchmarks
(`from tests.helpers import ...`: both live at the repository's root), so that a test and
the benchmark of the same property measure it the same way."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis

from emailq import census

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}
# A bulk type by default (`EMAILQ_BULK_TYPES`): the bulk lane.
INVITATION = {"to": "team@example.com", "type": "OrganizationInvitation", "payload": {"link": "https://x/i"}}


def assert_one_home(client: redis.Redis, queue: str = "emailq") -> census.Audit:
    """What `emailq status --check` checks: no email in two places, no orphaned list."""
    audit = census.audit(client, queue)
    assert audit.ok, f"in two places: {audit.in_two_places}; orphans: {audit.orphans}"
    return audit


def sign_in_waits(
    send: Callable[[], str],
    delivered_at: Callable[[str], float | None],
    count: int = 20,
    gap: float = 0.05,
    timeout: float = 10.0,
) -> list[float]:
    """Send `count` sign-in codes one at a time, each once the one before arrived and `gap`
    seconds passed, as users signing in do; their enqueue-to-delivery times, in seconds.

    `send()` enqueues one and returns its id; `delivered_at(id)` is the time (`time.time()`)
    the endpoint answered it 2xx, or None. Raises TimeoutError when one takes `timeout`.
    """
    waits = []
    for _ in range(count):
        sent = time.time()
        message_id = send()
        while (at := delivered_at(message_id)) is None:
            if time.time() - sent > timeout:
                raise TimeoutError(f"a sign-in code not delivered within {timeout:g}s (after {len(waits)} were)")
            time.sleep(0.01)
        waits.append(at - sent)
        time.sleep(gap)
    return waits


def busiest_window(times: Sequence[float], seconds: float = 1.0) -> int:
    """The most events in any window [t, t + seconds) (the busiest starts at an event)."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while ordered[first] <= at - seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def pace(times: Sequence[float]) -> float:
    """Events per second from the first to the last."""
    if len(times) < 2:
        return float("nan")
    return (len(times) - 1) / (max(times) - min(times))
