"""Celery's consumer, with undecodable and unknown messages dead-lettered, not dropped.

Celery acks (or rejects) such a message and only logs it; we keep it in the DLQ as
`malformed` first, so that "delivered or in the DLQ" holds for every message.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from emailq.worker.dead_letters import RAW_LIMIT, DeadLetter


class Consumer(CeleryConsumer):
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        _dead_letter(message, f"undecodable message: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        _dead_letter(message, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        _dead_letter(message, f"unknown task {message.headers.get('task')!r}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        _dead_letter(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)


def _dead_letter(message: Any, detail: str) -> None:
    headers = message.headers if isinstance(getattr(message, "headers", None), dict) else {}
    raw = message.body
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    dead_letter_raw(text, detail, message_id=headers.get("id"))


def dead_letter_raw(raw: str, detail: str, message_id: Any = None) -> None:
    """Keep an item that arrived on the queue but cannot be delivered as it is."""
    from emailq.worker.tasks import dead_letters

    dead_letters().add(
        DeadLetter(
            id=str(message_id or uuid.uuid4()),
            reason="malformed",
            detail=detail[:300],
            raw=raw[:RAW_LIMIT],
        )
    )
