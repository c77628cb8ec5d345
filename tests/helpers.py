"""Shared by the tests (import from here, not from conftest)."""

from __future__ import annotations

import redis

from emailq import census

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}}


def assert_one_home(client: redis.Redis, queue: str = "emailq") -> census.Audit:
    """What `emailq status --check` checks: no email in two places, no orphaned list."""
    audit = census.audit(client, queue)
    assert audit.ok, f"in two places: {audit.in_two_places}; orphans: {audit.orphans}"
    return audit
