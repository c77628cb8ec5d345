"""How the httpx client reads Retry-After (libcurl reads it itself): seconds from now."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from emailq.worker.delivery.httpx_client import retry_after_seconds

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    "value,seconds",
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW + 30), 30.0),  # "-0000" rather than "GMT"
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # already past
        ("0", None),  # now: the computed backoff applies
        (None, None),
        ("soon", None),
        ("-5", None),
        ("١٢", None),  # digits, but not ASCII ones
    ],
)
def test_retry_after_as_seconds_from_now(value, seconds):
    assert retry_after_seconds(value, now=NOW) == seconds
