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
import uuid
from typing import Any

from emailq.message import Envelope, masked

TASK_NAME = "emailq.deliver"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(envelope: Envelope, queue: str) -> str:
    """The serialized kombu message that runs `emailq.deliver(envelope)`, for the lane
    whose whole key (`emailq.store.keys`, prefix included) is `queue`: its routing key, which
    the retry schedule reads to put a retry back on the same lane."""
    args = [envelope.dump()]
    body = json.dumps([args, {}, _EMBED], separators=(",", ":")).encode()
    message: dict[str, Any] = {
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
            # What Flower and the worker's log show: codes and links masked.
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
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message, separators=(",", ":"))
