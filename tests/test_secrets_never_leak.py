"""Run the whole pipeline with known secrets and codes, then look everywhere an operator
looks (every log line, the DLQ listing, Flower's API, metrics, error messages) and find
none of them."""

from __future__ import annotations

import base64
import json
import os
import subprocess

import httpx

from conftest import EMAILQ, Endpoint, Reply, free_port, run_emailq, wait_for
from test_ingest import Ingest

ENDPOINT_AUTH = "Bearer endpoint-secret-7c1d9a"
SIGNING = "whsec_" + base64.b64encode(b"signing-secret-bytes-0123456789ab").decode()
INGEST_AUTH = "Bearer ingest-secret-55e0f2"
FLOWER_PASSWORD = "flower-secret-9b8a"
FALLBACK_AUTH = "Key fallback-secret-0d4c2e"
FALLBACK_SIGNING = "whsec_" + base64.b64encode(b"fallback-signing-bytes-98765432").decode()
CODES = ["402913", "588201", "731064"]
LINK = "https://app.example/magic?token=link-secret-3f2e"


def test_no_secret_or_code_appears_anywhere(settings_env, redis_client, endpoint, start_worker, tmp_path):
    # A fallback endpoint too, with its own secrets: the retried email fails over to it.
    fallback = Endpoint()
    fallback.behave = lambda headers, body: Reply(503)
    env = {
        **settings_env,
        "EMAILQ_FALLBACK_ENDPOINT_URL": fallback.url,
        "EMAILQ_FALLBACK_ENDPOINT_AUTHORIZATION": FALLBACK_AUTH,
        "EMAILQ_FALLBACK_SIGNING_SECRET": FALLBACK_SIGNING,
        "EMAILQ_ENDPOINT_AUTHORIZATION": ENDPOINT_AUTH,
        "EMAILQ_SIGNING_SECRET": SIGNING,
        "EMAILQ_INGEST_AUTHORIZATION": INGEST_AUTH,
        "EMAILQ_FLOWER_BASIC_AUTH": f"ops:{FLOWER_PASSWORD}",
        "EMAILQ_METRICS_PORT": str(free_port()),
        "EMAILQ_MAX_ATTEMPTS": "2",
    }

    # One delivered, one rejected (DLQ), one retried then dead-lettered.
    def behave(headers, body):
        code = json.loads(body)["payload"]["code"]
        return {CODES[0]: Reply(200), CODES[1]: Reply(422, body=b"bad template")}.get(code, Reply(503))

    endpoint.behave = behave
    flower_port = free_port()
    flower_log = tmp_path / "flower.log"
    flower = subprocess.Popen(
        [EMAILQ, "flower", "--port", str(flower_port)],
        env={**os.environ, **env},
        cwd=tmp_path,
        stdout=flower_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    ingest = Ingest(env, tmp_path)
    worker = start_worker(env={**env, "EMAILQ_LOG_FORMAT": "json"})
    try:
        for code in CODES:
            response = ingest.post(
                json.dumps({"to": "a@b.io", "type": "SignIn", "payload": {"code": code, "link": LINK}}).encode(),
                {"Authorization": INGEST_AUTH},
            )
            assert response.status_code == 202
        ingest.post(b"{}", {"Authorization": INGEST_AUTH + "x"})  # a refused request, logged
        wait_for(lambda: redis_client.zcard("emailq:dlq:index") == 2, 30, "two dead letters")

        seen: list[str] = []
        for args in (["dlq", "list"], ["dlq", "list", "--json"], ["status"], ["dlq", "show", "nope"]):
            result = run_emailq(args, env, tmp_path)
            seen += [result.stdout, result.stderr]
        for entry in json.loads(run_emailq(["dlq", "list", "--json"], env, tmp_path).stdout):
            result = run_emailq(["dlq", "show", entry["id"]], env, tmp_path)
            seen += [result.stdout, result.stderr]
        bad_setting = run_emailq(["status"], {**env, "EMAILQ_MAX_ATTEMPTS": "x"}, tmp_path)
        seen.append(bad_setting.stderr)
        bad_fallback = run_emailq(["status"], {**env, "EMAILQ_FALLBACK_ENDPOINT_AUTHORIZATION": FALLBACK_AUTH + "\x01"}, tmp_path)
        assert "EMAILQ_FALLBACK_ENDPOINT_AUTHORIZATION" in bad_fallback.stderr
        seen.append(bad_fallback.stderr)

        seen.append(httpx.get(ingest.url + "/metrics").text)
        seen.append(httpx.get(f"http://127.0.0.1:{env['EMAILQ_METRICS_PORT']}/metrics").text)
        flower_url = f"http://127.0.0.1:{flower_port}"
        wait_for(
            lambda: len(httpx.get(flower_url + "/api/tasks", auth=("ops", FLOWER_PASSWORD)).json()) >= 2, 30, "Flower to see the tasks", interval=0.5
        )
        tasks = httpx.get(flower_url + "/api/tasks", auth=("ops", FLOWER_PASSWORD)).json()
        seen.append(json.dumps(tasks))
        for task_id in tasks:
            seen.append(httpx.get(f"{flower_url}/api/task/info/{task_id}", auth=("ops", FLOWER_PASSWORD)).text)
        seen.append(httpx.get(flower_url + "/api/workers", auth=("ops", FLOWER_PASSWORD)).text)
        assert fallback.received, "the retried email failed over to the fallback"
    finally:
        fallback.close()
        ingest.stop()
        flower.terminate()
        flower.wait(10)
        worker.stop()

    seen += [worker.output(), ingest.log.read_text(), flower_log.read_text()]
    everything = "\n".join(seen)
    assert "delivered" in worker.output() and "rejected" in everything  # we looked at real output
    secrets = [ENDPOINT_AUTH, "endpoint-secret", SIGNING, INGEST_AUTH, "ingest-secret", FLOWER_PASSWORD, *CODES, "link-secret"]
    for secret in [*secrets, FALLBACK_AUTH, "fallback-secret", FALLBACK_SIGNING]:
        assert secret not in everything, f"{secret!r} leaked"
