"""Worker metrics and logs: counts an operator can alert on, and logs that carry the
message id but never a secret or a one-time code."""

from __future__ import annotations

import json

import httpx

from conftest import Reply, free_port, wait_for

AUTHORIZATION = "Bearer very-secret-endpoint-token"
CODE = "864209"


def test_worker_metrics_count_deliveries_retries_and_dead_letters(producer, endpoint, start_worker):
    port = free_port()
    replies = {}

    def behave(headers, body):
        if json.loads(body)["type"] == "Register":
            return Reply(400)
        seen = replies.setdefault(headers["idempotency-key"], 0)
        replies[headers["idempotency-key"]] = seen + 1
        return Reply(503) if seen == 0 else Reply(200)

    endpoint.behave = behave
    start_worker(env={"EMAILQ_METRICS_PORT": str(port)})
    producer.send_many([{"to": "a@b.io", "type": "SignIn", "payload": {}}] * 2)
    producer.send({"to": "a@b.io", "type": "Register", "payload": {}})

    def scraped():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        return text if 'emailq_delivered_total{endpoint="primary"} 2.0' in text and "emailq_dead_lettered_total" in text else None

    text = wait_for(scraped, 20, "the metrics to count 2 delivered", interval=0.2)
    assert 'emailq_retried_total{endpoint="primary"} 2.0' in text
    assert 'emailq_breaker_open{endpoint="primary"} 0.0' in text
    assert 'emailq_dead_lettered_total{reason="rejected"} 1.0' in text
    assert "emailq_delivery_seconds_count 2.0" in text
    assert "emailq_dlq_depth 1.0" in text
    assert 'emailq_queue_depth{lane="interactive"} 0.0' in text and 'emailq_queue_oldest_seconds{lane="bulk"} 0.0' in text


def test_json_logs_carry_the_message_id_and_no_secret(producer, endpoint, start_worker):
    endpoint.behave = lambda headers, body: Reply(422, body=b"bad template")
    worker = start_worker(env={"EMAILQ_LOG_FORMAT": "json", "EMAILQ_ENDPOINT_AUTHORIZATION": AUTHORIZATION})
    message_id = producer.send({"to": "a@b.io", "type": "SignIn", "payload": {"code": CODE, "link": "https://x/y?t=z"}})

    wait_for(lambda: "rejected" in worker.output(), 20, "the dead-letter log line")
    worker.stop()
    lines = [line for line in worker.output().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert any(message_id in record["message"] for record in records)
    log = worker.output()
    assert AUTHORIZATION not in log and "very-secret" not in log
    assert CODE not in log and "t=z" not in log
