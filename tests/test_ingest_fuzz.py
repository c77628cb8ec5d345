"""The ingest fuzzed through its own OpenAPI document (schemathesis): no request makes it
fail or crash, and a request it refuses enqueues nothing."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from test_ingest import TOKEN, Ingest


@pytest.fixture(scope="module")
def fuzzed_ingest(redis_server, tmp_path_factory):
    env = {
        "EMAILQ_REDIS_URL": redis_server.url,
        "EMAILQ_INGEST_AUTHORIZATION": TOKEN,
        "EMAILQ_DATA_DIR": str(tmp_path_factory.mktemp("data")),
    }
    server = Ingest(env, tmp_path_factory.mktemp("ingest"))
    yield server
    server.stop()


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_ingest_survives_fuzzing(fuzzed_ingest, redis_server, mode):
    client = redis_server.client()
    schema = schemathesis.openapi.from_url(fuzzed_ingest.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.method.upper() == "POST" and op.path == "/" for op in operations)

    if mode == schemathesis.GenerationMode.NEGATIVE:
        operations = [op for op in operations if op.method.upper() == "POST"]  # GETs take no input
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            before = client.llen("emailq")
            response = case.call(headers={"Authorization": TOKEN})
            assert response.status_code < 500, response.text
            if response.status_code != 202:
                assert client.llen("emailq") == before, "a refused request enqueued something"
            if mode == schemathesis.GenerationMode.NEGATIVE:
                assert response.status_code in (400, 413, 422), response.text

        fuzz()
    assert fuzzed_ingest.process.poll() is None
