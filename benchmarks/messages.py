"""The benchmark's emails, the same for every contender, and raw Celery task messages.

Every email carries a benchmark id, `payload.bid` (payload keys pass through emailq
untouched), by which the endpoint and the floor task report what they received.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

# The Celery task names of the benchmark's own apps (benchmarks.naive, benchmarks.floor).
NAIVE_TASK = "bench.naive_send"
FLOOR_TASK = "bench.floor"


def email_body(bid: str, i: int) -> dict[str, Any]:
    """One Logto `SendMessageData`, about the size of a real sign-in email."""
    return {
        "to": f"user{i}@example.com",
        "type": "SignIn",
        "payload": {"code": f"{i % 1000000:06d}", "locale": "en", "bid": bid},
    }


def celery_message(task: str, args: list[Any], queue: str) -> bytes:
    """A Celery task message (protocol 2, as kombu's Redis transport keeps it) for LPUSH.

    Built here so that the Celery contenders' queues are filled in one round trip, like
    emailq's `send_many`, and their enqueue cost stays out of their delivery rate.
    """
    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message = {
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": "benchmark",
            "ignore_result": True,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message, separators=(",", ":")).encode()
