"""The in-flight records (`places/in_flight.py`): an email taken by this worker is known
to it until Redis holds its outcome, at every instant, whatever thread is looking."""

from __future__ import annotations

import sys
import threading
import time

import redis

from emailq.worker.places.in_flight import InFlight, Taken

EMAILS = 20_000


def test_an_acked_email_is_known_at_every_instant_until_its_removal_lands():
    # Redis never answers here, so no removal ever lands: every item must stay known. The
    # Housekeeper's scan gives back an item of its own list that it finds unknown twice.
    in_flight = InFlight(redis.Redis(port=1, socket_connect_timeout=0.05), "")
    for n in range(EMAILS):
        in_flight.take(f"tag-{n}", Taken("emailq", "emailq:inflight:me", f"item-{n}".encode(), f"m{n}", time.monotonic()))
    gaps: list[int] = []
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            if len(known := in_flight.known_items()) < EMAILS:
                gaps.append(EMAILS - len(known))

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: the gap shows
    scanner = threading.Thread(target=scan)
    try:
        scanner.start()
        for n in range(EMAILS):
            in_flight.ack(f"tag-{n}")
    finally:
        done.set()
        scanner.join()
        sys.setswitchinterval(switching)
    assert gaps == [], f"{len(gaps)} scans found acked emails unknown"
