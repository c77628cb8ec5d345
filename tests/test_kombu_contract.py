"""What emailq.worker.transport relies on inside kombu's Redis transport. A kombu release
that changes any of it fails here, naming the piece, before a worker misbehaves."""

from __future__ import annotations

import inspect

import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

METHODS = [
    (kombu_redis.Channel, "_brpop_start", ["self", "timeout"]),
    (kombu_redis.Channel, "_brpop_read", ["self", "options"]),
    (kombu_redis.Channel, "_flush_brpop_reauth", ["self"]),
    (kombu_redis.Channel, "_get", ["self", "queue"]),
    (kombu_redis.Channel, "_size", ["self", "queue"]),
    (kombu_redis.Channel, "maybe_refresh_binding_expiry", ["self"]),
    (kombu_redis.Channel, "_queue_bind", ["self", "exchange", "routing_key", "pattern", "queue"]),
    (kombu_redis.QoS, "append", ["self", "message", "delivery_tag"]),
    (kombu_redis.QoS, "ack", ["self", "delivery_tag"]),
    (kombu_redis.QoS, "reject", ["self", "delivery_tag", "requeue"]),
    (kombu_redis.QoS, "restore_unacked", ["self", "client"]),
    (kombu_redis.QoS, "restore_visible", ["self", "start", "num", "interval"]),
    (virtual.QoS, "can_consume", ["self"]),
    (virtual.QoS, "append", ["self", "message", "delivery_tag"]),
    (virtual.QoS, "ack", ["self", "delivery_tag"]),
    (kombu_redis.MultiChannelPoller, "on_poll_start", ["self"]),
]


@pytest.mark.parametrize("owner, name, parameters", METHODS, ids=[f"{o.__name__}.{n}" for o, n, _ in METHODS])
def test_kombu_still_has_what_the_transport_overrides(owner, name, parameters):
    method = getattr(owner, name, None)
    assert method is not None, f"kombu {owner.__name__}.{name} is gone: emailq.worker.transport must follow"
    assert list(inspect.signature(method).parameters) == parameters, (
        f"kombu {owner.__name__}.{name} changed its signature: emailq.worker.transport must follow"
    )


def test_kombu_still_gates_the_pop_on_can_consume():
    # While the circuit breaker is open the pop stops because on_poll_start asks can_consume.
    source = inspect.getsource(kombu_redis.MultiChannelPoller.on_poll_start)
    assert "can_consume()" in source and "_register_BRPOP" in source


def test_kombu_channel_state_the_transport_uses():
    source = inspect.getsource(kombu_redis.Channel)
    for attribute in ("_queue_cycle", "_in_poll", "_brpop_sent_at", "brpop_timeout"):
        assert attribute in source, f"kombu's Redis Channel no longer has {attribute}"
    assert "self.qos.append(message, message.delivery_tag)" in inspect.getsource(virtual.Channel.basic_consume)
