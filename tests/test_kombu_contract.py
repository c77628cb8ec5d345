"""What emailq.worker.celery_glue.transport relies on inside kombu's Redis transport. A kombu release
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
    (kombu_redis.Channel, "_receive_one", ["self", "c"]),
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
    assert method is not None, f"kombu {owner.__name__}.{name} is gone: emailq.worker.celery_glue.transport must follow"
    assert list(inspect.signature(method).parameters) == parameters, (
        f"kombu {owner.__name__}.{name} changed its signature: emailq.worker.celery_glue.transport must follow"
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


# --- EMAILQ_REDIS_KEY_PREFIX: kombu's `global_keyprefix` -----------------------------


def test_kombu_still_takes_the_global_keyprefix_transport_option():
    assert "global_keyprefix" in kombu_redis.Channel.from_transport_options
    assert "PrefixedStrictRedis" in inspect.getsource(kombu_redis.Channel._get_client)


def test_kombu_prefixes_the_commands_it_names_queues_by():
    # The channel's _size (LLEN), kombu's bindings (SADD, SMEMBERS) and remote-control
    # replies (LPUSH, BRPOP) take the bare names and must get the prefix once.
    client = kombu_redis.PrefixedStrictRedis(global_keyprefix="p:")
    assert client._prefix_args(["LLEN", "emailq"]) == ["LLEN", "p:emailq"]
    assert client._prefix_args(["BRPOP", "x.reply.emailq.pidbox", 1]) == ["BRPOP", "p:x.reply.emailq.pidbox", 1]
    assert "_prefix_args" in inspect.getsource(kombu_redis.Channel._brpop_start)


def test_kombu_leaves_the_channels_raw_sends_and_their_replies_alone():
    # The take (EVALSHA) and the waits (BLPOP) go out on `client.connection.send_command`
    # with whole keys: prefixing lives in execute_command, which that path never calls,
    # and only a BRPOP's reply has the prefix taken off.
    mixin = inspect.getsource(kombu_redis.GlobalKeyPrefixMixin)
    assert "def execute_command" in mixin and "send_command" not in mixin
    assert "command_name == 'BRPOP'" in inspect.getsource(kombu_redis.GlobalKeyPrefixMixin.parse_response)


def test_flowers_queue_lengths_still_read_the_global_keyprefix():
    broker = pytest.importorskip("flower.utils.broker")
    assert "global_keyprefix" in inspect.getsource(broker.RedisBase.__init__)
