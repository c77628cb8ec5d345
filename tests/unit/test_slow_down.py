"""A 429's cluster-wide slowdown is advice: a Redis that refuses it must not raise into
the task, which still has the email's retry to write."""

from __future__ import annotations

import logging

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from emailq.store.keys import Keys
from emailq.worker.places import taking
from helpers import free_port


def test_a_refused_slowdown_is_logged_not_raised(caplog):
    # A port nothing listens on, tried once.
    nobody = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.WARNING, logger="emailq.worker"):
        taking.slow_down(nobody, Keys("emailq", prefix=""))
    assert "could not slow the cluster down after a 429" in caplog.text
