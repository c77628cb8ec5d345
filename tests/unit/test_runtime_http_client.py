"""A program running the worker in its own process (a benchmark, an embedding) picks the
HTTP client through `runtime.use_http_client`, never by patching the runtime."""

from __future__ import annotations

import pytest

from emailq.message import Email, Envelope
from emailq.settings import Settings
from emailq.worker import runtime
from emailq.worker.delivery.curl_client import CurlClient
from emailq.worker.delivery.http_client import Answer


class CountingClient:
    """An `HttpClient` that answers 200 and counts what it was asked to send."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.posted: list[str] = []

    def post(self, url: str, headers: list[str], body: bytes, connect: float, timeout: float) -> Answer:
        self.posted.append(url)
        return Answer(200, None, b"")

    def close(self) -> None:
        pass


@pytest.fixture
def fresh_runtime(monkeypatch):
    """This process's runtime, built anew (and the default client restored) for one test."""
    settings = Settings(_env_file=None, endpoint_url="https://mail.example.com/send", redis_url="redis://127.0.0.1:1")
    monkeypatch.setattr(runtime, "_http_client_factory", runtime._http_client_factory)
    monkeypatch.setattr(runtime, "_runtime", runtime.Runtime(settings))
    yield runtime.get()
    runtime.get().deliverer.close()


def test_the_default_client_is_the_one_the_setting_names(fresh_runtime):
    assert isinstance(fresh_runtime.deliverer._client, CurlClient)


def test_the_deliverer_posts_through_the_client_given_before_the_first_delivery(fresh_runtime):
    runtime.use_http_client(CountingClient)
    email = Email.model_validate({"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "123456"}})
    outcome = fresh_runtime.deliverer.deliver(Envelope.wrap(email, 900))
    assert outcome.delivered
    client = fresh_runtime.deliverer._client
    assert isinstance(client, CountingClient)
    assert client.settings is fresh_runtime.settings and client.posted == ["https://mail.example.com/send"]


def test_a_client_given_after_the_first_delivery_is_refused_not_ignored(fresh_runtime):
    assert fresh_runtime.deliverer is not None
    with pytest.raises(RuntimeError, match="already built"):
        runtime.use_http_client(CountingClient)
