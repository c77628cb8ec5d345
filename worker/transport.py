"""kombu's Redis transport, made to dead-letter what it cannot decode instead of crashing.

kombu pops a message off the list (BRPOP) before decoding it; an item that is not JSON, or
not a kombu message, raises inside the event loop, which stops the worker and loses the
item. Here such an item goes to the DLQ as `malformed` and the worker carries on.
"""

from __future__ import annotations

import json
from typing import Any

from kombu.transport import redis as kombu_redis


def _park(raw: str, detail: str) -> None:
    from worker.consumer import dead_letter_raw

    dead_letter_raw(raw, detail)


class Channel(kombu_redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return super()._brpop_read(**options)
        except json.JSONDecodeError as error:
            _park(error.doc, f"not JSON: {error.msg}")
            return True

    def _get(self, queue: str) -> Any:
        try:
            return super()._get(queue)
        except json.JSONDecodeError as error:
            _park(error.doc, f"not JSON: {error.msg}")
            raise self.Empty() from None


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str | None) -> None:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("properties"), dict)
            and isinstance(message.get("headers", {}), dict)
            and "body" in message
        ):
            _park(json.dumps(message), "not a kombu message")
            return
        super()._deliver(message, queue)
