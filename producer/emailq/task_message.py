"""Celery task messages for `emailq.deliver`, built without importing Celery.

A web app that only enqueues should not pay for Celery's import or its per-call
overhead, so the producer writes the message Celery's worker reads (task protocol 2, as
kombu's Redis transport stores it: a JSON document LPUSHed onto the queue's list) itself.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

from emailq.message import Envelope, masked, new_id

TASK_NAME = "emailq.deliver"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(envelope: Envelope, queue: str) -> str:
    """The serialized kombu message that runs `emailq.deliver(envelope)`, for the lane
    whose whole key (`emailq.store.keys`, prefix included) is `queue`: its routing key, which
    the retry schedule reads to put a retry back on the same lane.

    Exactly `json.dumps(_generic(envelope, queue, tag), separators=(",", ":"))`, written
    from a template: only the envelope, its id, the masked arguments, the queue and the
    delivery tag vary, and the ingest builds one of these per request."""
    return encoded_task_message(_ENCODE(envelope.dump()), envelope.id, envelope.message.body(), queue)


def encoded_task_message(envelope_json: str, envelope_id: str, body: dict[str, Any], queue: str) -> str:
    """`task_message` of the envelope whose dump's compact JSON is `envelope_json`, whose
    id is `envelope_id` and whose email's `body()` is `body` (`emailq.message.fresh_envelope`
    writes a new email's with no `Envelope`)."""
    body_json = ("[[" + envelope_json + _BODY_TAIL).encode()
    message_id = _ENCODE(envelope_id)
    # What Flower and the worker's log show: codes and links masked.
    argsrepr = _ENCODE(repr([{"id": envelope_id, "message": masked(body)}]))
    return "".join(
        (
            '{"body":"',
            base64.b64encode(body_json).decode("ascii"),
            '","content-encoding":"utf-8","content-type":"application/json","headers":{"lang":"py","task":',
            _TASK,
            ',"id":',
            message_id,
            ',"shadow":null,"eta":null,"expires":null,"group":null,"group_index":null,"retries":0,"timelimit":[null,null],"root_id":',
            message_id,
            ',"parent_id":null,"argsrepr":',
            argsrepr,
            ',"kwargsrepr":"{}","origin":',
            _ORIGIN_JSON,
            ',"ignore_result":true},"properties":{"correlation_id":',
            message_id,
            ',"reply_to":"","delivery_mode":2,"delivery_info":{"exchange":"","routing_key":',
            _ENCODE(queue),
            '},"priority":0,"body_encoding":"base64","delivery_tag":"',
            new_id(),
            '"}}',
        )
    )


# One encoder for every message: `json.dumps` with `separators` builds a new one per call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_TASK = _ENCODE(TASK_NAME)
# The task's arguments are `[[envelope], {}, embed]`: all but the envelope is constant.
_BODY_TAIL = "],{}," + _ENCODE(_EMBED) + "]"
_ORIGIN_JSON = _ENCODE(_ORIGIN)


def _generic(envelope: Envelope, queue: str, delivery_tag: str) -> dict[str, Any]:
    """The message `task_message` writes, as the nested dicts kombu would serialize (the
    reference its tests compare it with)."""
    args = [envelope.dump()]
    body = json.dumps([args, {}, _EMBED], separators=(",", ":")).encode()
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": TASK_NAME,
            "id": envelope.id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": envelope.id,
            "parent_id": None,
            "argsrepr": repr([{"id": envelope.id, "message": masked(envelope.message.body())}]),
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": True,
        },
        "properties": {
            "correlation_id": envelope.id,
            "reply_to": "",
            "delivery_mode": 2,
            # The default exchange, as kombu writes it. kombu would restore an unacked
            # message to this routing key, but emailq's transport never lets it (the
            # in-flight lists do), so it can be the lane's whole key, prefix included.
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    }
