"""The HTTP ingest (`emailq serve`), as Logto's HTTP email connector calls it."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from busy_redis import busy
from conftest import RedisServer, wait_for
from helpers import Ingest

TOKEN = "Bearer ingest-token-123"
LOGTO_BODY = {
    "to": "foo@logto.io",
    "type": "SignIn",
    "payload": {"code": "123456", "locale": "en", "uiLocales": "en fr"},
}


@pytest.fixture
def ingest(settings_env, redis_client, tmp_path):
    server = Ingest({**settings_env, "EMAILQ_INGEST_AUTHORIZATION": TOKEN}, tmp_path)
    yield server
    server.stop()


def queued_envelopes(redis_client) -> list[dict]:
    envelopes = []
    for raw in redis_client.lrange("emailq", 0, -1):
        args, _, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        envelopes.append(args[0])
    return envelopes


def test_accepts_exactly_what_logtos_connector_sends(ingest, redis_client):
    # Logto's connector: got.post(endpoint, {headers: {Authorization}, json: {to, type, payload}})
    response = httpx.post(
        ingest.url + "/",
        json=LOGTO_BODY,
        headers={"Authorization": TOKEN, "User-Agent": "got (https://github.com/sindresorhus/got)"},
    )
    assert response.status_code == 202
    message_id = response.json()["id"]
    [envelope] = queued_envelopes(redis_client)
    assert envelope["id"] == message_id
    assert envelope["message"] == LOGTO_BODY


def test_the_ingested_email_reaches_the_endpoint(ingest, endpoint, start_worker):
    start_worker()
    message_id = ingest.post(json.dumps(LOGTO_BODY).encode(), {"Authorization": TOKEN}).json()["id"]
    wait_for(lambda: message_id in endpoint.delivered_keys(), 20, "the delivery")
    assert endpoint.requests_for(message_id)[0].json == LOGTO_BODY


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", TOKEN + "4", TOKEN.lower(), ""])
def test_wrong_or_missing_authorization_is_401(ingest, redis_client, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = ingest.post(json.dumps(LOGTO_BODY).encode(), headers)
    assert response.status_code == 401
    assert "error" in response.json()
    assert redis_client.llen("emailq") == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"\xff\xfe\x00garbage", 400),
        (b"[" * 30000 + b"]" * 30000, 400),  # deep nesting, refused not crashed
        (json.dumps({"to": "nobody", "type": "SignIn", "payload": {}}).encode(), 422),
        (json.dumps({"to": "a@b.io", "type": "Nope", "payload": {}}).encode(), 422),
        (json.dumps({"to": "a@b.io\r\nBcc: x@evil.io", "type": "SignIn", "payload": {}}).encode(), 422),
        (json.dumps({"to": "a@b.io", "type": "SignIn", "payload": "x"}).encode(), 422),
        (json.dumps(["to"]).encode(), 422),
    ],
)
def test_bad_input_is_refused_with_a_clear_json_error(ingest, redis_client, body, status):
    response = ingest.post(body, {"Authorization": TOKEN, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert redis_client.llen("emailq") == 0
    assert ingest.post(json.dumps(LOGTO_BODY).encode(), {"Authorization": TOKEN}).status_code == 202


def test_invalid_email_lists_each_problem(ingest):
    response = ingest.post(json.dumps({"to": "nobody", "type": "Nope", "payload": []}).encode(), {"Authorization": TOKEN})
    assert response.status_code == 422
    problems = " ".join(response.json()["problems"])
    assert "to:" in problems and "payload:" in problems


def test_too_large_is_413_with_or_without_content_length(ingest, redis_client):
    huge = json.dumps({**LOGTO_BODY, "payload": {"text": "x" * 200_000}}).encode()
    assert ingest.post(huge, {"Authorization": TOKEN}).status_code == 413

    def chunks():
        for start in range(0, len(huge), 4096):
            yield huge[start : start + 4096]

    streamed = httpx.post(ingest.url + "/", content=chunks(), headers={"Authorization": TOKEN})
    assert streamed.status_code == 413
    assert redis_client.llen("emailq") == 0


def test_redis_down_is_503_and_readiness_fails(settings_env, tmp_path):
    own = RedisServer(tmp_path / "own-redis")
    own.directory.mkdir()
    own.start()
    server = Ingest({**settings_env, "EMAILQ_REDIS_URL": own.url, "EMAILQ_INGEST_AUTHORIZATION": TOKEN}, tmp_path)
    try:
        assert httpx.get(server.url + "/readyz").status_code == 200
        own.kill()
        response = server.post(json.dumps(LOGTO_BODY).encode(), {"Authorization": TOKEN})
        assert response.status_code == 503
        assert "nothing was enqueued" in response.json()["error"]
        assert httpx.get(server.url + "/readyz").status_code == 503
        assert httpx.get(server.url + "/healthz").status_code == 200

        own.start()  # AOF on: the same data comes back, and so does the ingest
        assert server.post(json.dumps(LOGTO_BODY).encode(), {"Authorization": TOKEN}).status_code == 202
    finally:
        server.stop()
        own.stop()


# --- Idempotency-Key: each key enqueued at most once -------------------------------


def test_a_repeat_with_the_same_idempotency_key_answers_the_first_id_and_enqueues_nothing(ingest, redis_client):
    headers = {"Authorization": TOKEN, "Idempotency-Key": "logto-7f3c2a"}
    first = ingest.post(json.dumps(LOGTO_BODY).encode(), headers)
    # The same email again, as a retry would send it (here with other whitespace).
    again = ingest.post(json.dumps(LOGTO_BODY, indent=2).encode(), headers)

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert [e["id"] for e in queued_envelopes(redis_client)] == [first.json()["id"]]
    assert 'emailq_enqueued_total{source="ingest"} 1.0' in httpx.get(ingest.url + "/metrics").text


def test_the_same_idempotency_key_with_another_email_is_409(ingest, redis_client):
    headers = {"Authorization": TOKEN, "Idempotency-Key": "logto-7f3c2a"}
    assert ingest.post(json.dumps(LOGTO_BODY).encode(), headers).status_code == 202
    other = {**LOGTO_BODY, "payload": {"code": "654321"}}

    response = ingest.post(json.dumps(other).encode(), headers)

    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["error"]
    assert redis_client.llen("emailq") == 1


def test_different_idempotency_keys_or_none_enqueue_each_time(ingest, redis_client):
    for key in ("a", "b", None, None):
        headers = {"Authorization": TOKEN} | ({"Idempotency-Key": key} if key else {})
        assert ingest.post(json.dumps(LOGTO_BODY).encode(), headers).status_code == 202
    assert redis_client.llen("emailq") == 4


@pytest.mark.parametrize("key", ["k" * 256, "caf\xe9", "a\x7fb"])
def test_a_malformed_idempotency_key_is_400(ingest, redis_client, key):
    headers = {"Authorization": TOKEN, "Idempotency-Key": key.encode("latin-1")}
    response = ingest.post(json.dumps(LOGTO_BODY).encode(), headers)
    assert response.status_code == 400
    if "\x7f" not in key:  # a control character: uvicorn's HTTP parser (httptools) refuses it first
        assert "Idempotency-Key" in response.json()["error"]
    assert redis_client.llen("emailq") == 0


def test_an_invalid_email_under_a_key_is_422_and_leaves_the_key_free(ingest, redis_client):
    headers = {"Authorization": TOKEN, "Idempotency-Key": "k1"}
    assert ingest.post(json.dumps({**LOGTO_BODY, "to": "nobody"}).encode(), headers).status_code == 422
    assert ingest.post(json.dumps(LOGTO_BODY).encode(), headers).status_code == 202
    assert redis_client.llen("emailq") == 1


def test_a_busy_redis_is_503_may_have_been_enqueued_and_a_retry_with_the_key_sends_once(settings_env, redis_server, redis_client, tmp_path):
    # Issue 9: a Redis busy for 2 s answered 503 "nothing was enqueued" while the email
    # was; Logto retried and the user got two emails under different ids.
    env = {**settings_env, "EMAILQ_INGEST_AUTHORIZATION": TOKEN, "EMAILQ_REDIS_TIMEOUT": "0.3"}
    server = Ingest(env, tmp_path)
    body = json.dumps(LOGTO_BODY).encode()
    keyed = {"Authorization": TOKEN, "Idempotency-Key": "retry-me"}
    try:
        for headers in ({"Authorization": TOKEN}, keyed):
            redis_client.delete("emailq")
            assert httpx.get(server.url + "/readyz").status_code == 200  # connected
            with busy(redis_server.url, 2):
                response = server.post(body, headers, timeout=10)
            assert response.status_code == 503
            error = response.json()["error"]
            assert "may have been enqueued" in error and "nothing was enqueued" not in error
            [landed] = queued_envelopes(redis_client)  # it had: "may" was the truth

        # The retry Logto makes, with the same key: the email that landed, not a second one.
        retried = server.post(body, keyed)
        assert retried.status_code == 202
        assert retried.json()["id"] == landed["id"]
        assert redis_client.llen("emailq") == 1
    finally:
        server.stop()


def test_metrics_and_openapi(ingest):
    assert ingest.post(json.dumps(LOGTO_BODY).encode(), {"Authorization": TOKEN}).status_code == 202
    ingest.post(b"{", {"Authorization": TOKEN})
    text = httpx.get(ingest.url + "/metrics").text
    assert 'emailq_enqueued_total{source="ingest"} 1.0' in text
    assert 'emailq_ingest_rejected_total{status="400"} 1.0' in text
    assert 'emailq_queue_depth{lane="interactive"} 1.0' in text

    spec = httpx.get(ingest.url + "/openapi.json").json()
    schema = spec["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"to", "type", "payload"}
    [parameter] = spec["paths"]["/"]["post"]["parameters"]
    assert parameter["name"] == "Idempotency-Key" and parameter["in"] == "header"
    assert parameter["required"] is False
    assert {"409", "503"} <= set(spec["paths"]["/"]["post"]["responses"])


def test_unset_ingest_authorization_warns_loudly(settings_env, redis_client, tmp_path):
    server = Ingest(settings_env, tmp_path)
    try:
        assert "EMAILQ_INGEST_AUTHORIZATION is not set" in server.log.read_text()
    finally:
        server.stop()
