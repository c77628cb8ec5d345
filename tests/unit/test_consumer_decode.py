"""The consumer dead-letters a message only when the message itself cannot be decoded.

kombu reports as a decode error any exception raised while it decodes, also one a signal
handler raised into the main thread at that moment (Celery's cold shutdown runs in one).
An email that decodes goes back to its lane instead.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Message

from emailq.worker import runtime
from emailq.worker.celery_glue.consumer import Consumer
from emailq.worker.places.in_flight import Taken


class Places:
    """What the consumer moved, where the worker would move it in Redis (and the channel
    its acks go to)."""

    no_ack_consumers = None

    def __init__(self) -> None:
        self.released: list[str] = []
        self.dead: list[Any] = []
        self.acked: list[str] = []
        self.taken = Taken("emailq", "emailq:inflight:w", b"item", "m1", 0.0)

    def get(self, tag: str) -> Taken:
        return self.taken

    def release(self, tag: str) -> None:
        self.released.append(tag)

    def add(self, entry: Any, taken_from: Any = None) -> None:
        self.dead.append(entry)

    def basic_ack(self, tag: str, multiple: bool = False) -> None:
        self.acked.append(tag)


@pytest.fixture
def places(monkeypatch):
    recorded = Places()
    monkeypatch.setattr(runtime, "_runtime", SimpleNamespace(in_flight=recorded, dead_letters=recorded))
    return recorded


def _message(body: bytes, places: Places) -> Message:
    headers = {"id": "m1", "task": "emailq.deliver"}
    return Message(body=body, headers=headers, content_type="application/json", content_encoding="utf-8", delivery_tag="t1", channel=places)


def _decode_error(message: Message, exc: Exception) -> None:
    # Celery's consumer is not built here: the handler uses neither it nor its state.
    Consumer.on_decode_error(object.__new__(Consumer), message, exc)


def test_an_email_that_decodes_goes_back_to_its_lane_not_to_the_dlq(places):
    body = json.dumps([[{"id": "m1"}], {}, {}]).encode()
    message = _message(body, places)
    _decode_error(message, NotImplementedError("<class ThreadPool> does not implement kill_job"))
    assert places.released == ["t1"] and places.dead == [] and places.acked == ["t1"]


def test_a_message_that_does_not_decode_is_dead_lettered_as_malformed(places):
    message = _message(b"\xff not json", places)
    try:
        message.decode()
    except Exception as error:
        _decode_error(message, error)
    [entry] = places.dead
    assert places.released == [] and entry.reason == "malformed" and entry.detail.startswith("undecodable message:")
    assert places.acked == ["t1"]
